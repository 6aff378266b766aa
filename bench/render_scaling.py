"""Render array scaling on SLURM: the same frame chunks with 1 and with 2 tasks at once.

What is measured: a shot's render stage split into ``--chunks`` chunks (one SLURM job array,
exactly what ``portrait submit`` sends), run with ``--array=0-N%P`` for P = 1 and P = 2, on a
private one-node SLURM cluster started here (tests/slurm_cluster.py; needs the Debian SLURM
packages and root) unless ``SLURM_CONF`` already points at one. Figures per P:

* ``makespan_s``: first task start -> last task end (sacct Start/End): the render itself;
* ``wall_s``: sbatch -> every task accounted finished, as a user waits for it (adds the
  scheduler's dispatch latency);
* ``task_elapsed_s``: per task (job start-up, plate decode, EXR writes);
* ``speedup`` = makespan(P=1) / makespan(P=2), and the same on wall.

The render is the stage the shot graph plans without an actor model (plate decode -> scene-
linear EXR per frame); with a model the per-frame cost grows and job start-up matters less,
so the ratio here is a lower bound for that case. Outputs go to a temp folder each run.

    .venv/bin/python -m bench.render_scaling [--frames 96 --size 1024 --chunks 4]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _plate(folder: Path, frames: int, size: int) -> Path:
    from engine.demo import DEMO_FPS, demo_frames
    from engine.io.movie import ReviewMovieWriter

    plate = folder / "plate.mp4"
    with ReviewMovieWriter(plate, DEMO_FPS, (size, size), crf=12) as mov:
        for img in demo_frames(frames, size):
            mov.write(img)
    return plate


def _shot_yaml(folder: Path, plate: Path, frames: int, chunk: int, parallelism: int, partition: str) -> Path:
    text = f"""schema: portrait.shot/1
show: bench
sequence: sq010
shot: scale{parallelism}
fps: 25
frames: {{first: 1001, last: {1000 + frames}}}
plate: {{path: {plate}, colourspace: Rec.709}}
actor: {{id: bench, consent: "synthetic bench plate (public-domain photo shipped by scikit-image)"}}
render: {{compression: zip, review_movie: {{enabled: false}}}}
output: {{root: {folder / 'out'}}}
executor:
  kind: slurm
  slurm: {{partition: {partition}, time_min: 30, gpus_per_node: 0, cpus_per_task: 1, mem_gb: 1,
          array_parallelism: {parallelism}, chunk_frames: {chunk}}}
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scale{parallelism}.yaml"
    path.write_text(text)
    return path


def _parse_time(text: str) -> float | None:
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _run_once(folder: Path, plate: Path, frames: int, chunk: int, parallelism: int, partition: str) -> dict[str, Any]:
    from engine.pipeline.submit import ACTIVE_STATES, read_record, sacct_states
    from engine.shot import load_shot
    from engine.shotgraph import submit_shot

    shot = load_shot(_shot_yaml(folder, plate, frames, chunk, parallelism, partition))
    t0 = time.time()
    res = submit_shot(shot, train=False)
    ids = list(res.submission.submitted.values())
    while True:
        states = sacct_states(ids)
        if len(states) >= len(ids) and not any(states.get(j, {}).get("State") in ACTIVE_STATES for j in ids):
            break
        time.sleep(0.5)
    wall = time.time() - t0
    # sacct Start/End are whole seconds: fine for tasks of several seconds.
    starts = [_parse_time(states[j]["Start"]) for j in ids]
    ends = [_parse_time(states[j]["End"]) for j in ids]
    bad = [j for j in ids if states[j]["State"] != "COMPLETED"]
    if bad or None in starts or None in ends:
        raise RuntimeError(f"render tasks did not complete: {[(j, states[j]['State']) for j in ids]}")
    rendered = len(list(res.plan.layout.render_dir.glob("*.exr")))
    record = read_record(res.jobs_dir)
    return {"array_parallelism": parallelism, "tasks": len(ids), "frames_rendered": rendered,
            "makespan_s": round(max(ends) - min(starts), 1), "wall_s": round(wall, 1),
            "task_elapsed_s": [round(e - s, 1) for s, e in zip(starts, ends)],
            "job_ids": ids, "jobs_dir": str(record.get("jobs_dir"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", type=int, default=1024, help="plate width = height, pixels")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--results", type=Path, default=None, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    from engine.benchmark import BenchResult

    result = BenchResult("render_scaling")
    cluster = None
    partition = os.environ.get("PORTRAIT_SLURM_PARTITION", "debug")
    with tempfile.TemporaryDirectory(prefix="pe-render-scaling-") as tmp:
        tmp_path = Path(tmp)
        if not os.environ.get("SLURM_CONF"):
            sys.path.insert(0, str(REPO / "tests"))
            from slurm_cluster import LocalSlurmCluster

            cluster = LocalSlurmCluster(tmp_path / "slurm").start()
            partition = cluster.partition
        try:
            plate = _plate(tmp_path, args.frames, args.size)
            chunk = -(-args.frames // args.chunks)
            runs = [_run_once(tmp_path / f"p{p}", plate, args.frames, chunk, p, partition) for p in (1, 2)]
        finally:
            if cluster is not None:
                cluster.stop()
    one, two = runs
    result.figures = {
        "frames": args.frames, "plate_size": [args.size, args.size], "chunks": args.chunks, "chunk_frames": chunk,
        "render": "plate pass-through (decode + scene-linear + EXR zip RGBA half), one SLURM array",
        "node_cpus": os.cpu_count(), "cpus_per_task": 1,
        "p1": one, "p2": two,
        "speedup_makespan": round(one["makespan_s"] / two["makespan_s"], 2),
        "speedup_wall": round(one["wall_s"] / two["wall_s"], 2),
        "frames_per_s_p1": round(args.frames / one["makespan_s"], 2),
        "frames_per_s_p2": round(args.frames / two["makespan_s"], 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    result.notes.append("2 concurrent tasks on a 2-core node; other processes on the machine share the cores "
                        "(see load_avg_1min), so the ratio is a floor for a quiet node")
    out = result.write(args.results)
    print(f"P=1 makespan {one['makespan_s']} s, P=2 {two['makespan_s']} s: speedup "
          f"{result.figures['speedup_makespan']} (wall {result.figures['speedup_wall']}) -> {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
