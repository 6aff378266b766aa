"""`portrait submit/status/retry/cancel` on a REAL SLURM cluster (tests/slurm_cluster.py).

A shot's graph goes out in one go with ``afterok`` dependencies and the submitting command
returns; the render is one job array over frame chunks. Fault tests: a stage that raises
(status shows its remote traceback, retry reruns only it and its dependents); a render array
task cancelled with scancel (its frames are missing, retry renders only those); a training
job preempted mid-run (it checkpoints, is requeued, resumes and ends with the same weights
as an uninterrupted run); a finished shot resubmitted (nothing runs); a changed config (a
new version; the content-keyed tracking is not redone).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from engine.pipeline import ExecutorConfig, Stage, StageContext, read_manifest
from engine.pipeline.submit import (ACTIVE_STATES, GraphPlan, graph_status, load_plan, read_record,
                                    sacct_states, submit_graph)
from engine.util.atomic import atomic_write_text

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# >= 2 min: submitit asks for USR2 90 s before the limit; shorter limits requeue every job.
_TIME_MIN = 10
DOCS_SACCT = Path(os.environ.get("PORTRAIT_SACCT_CAPTURE", "")) if os.environ.get("PORTRAIT_SACCT_CAPTURE") else None


def _slurm_params(cluster, **kw: Any) -> dict[str, Any]:
    return {"partition": cluster.partition, "time_min": _TIME_MIN, "gpus_per_node": 0, "cpus_per_task": 1,
            "mem_gb": 1, **kw}


# Training settings small enough for a test node: the real TrainStage (frame cache from the
# tracking, Trainer, exported model) at 32 px for a few steps.
TINY_TRAIN = ("train: {preset: draft, overrides: {steps: 4, checkpoint_every: 2, log_every: 1, "
              "generator.image_size: 32, loss.perceptual: 0.0, threads: 1}}")


def _demo_shot(cluster, work: Path, *, frames: int = 6, chunk: int = 2, parallelism: int = 2) -> Path:
    from engine.demo import build_demo

    yaml_path = build_demo(work, frames=frames, executor="slurm")
    text = re.sub(r"(?m)^train: .*$", TINY_TRAIN, yaml_path.read_text())
    assert TINY_TRAIN in text
    yaml_path.write_text(text.replace(
        "executor: {kind: slurm}",
        "executor:\n  kind: slurm\n  slurm: {partition: %s, time_min: %d, gpus_per_node: 0, cpus_per_task: 1,"
        " mem_gb: 1, array_parallelism: %d, chunk_frames: %d}" % (cluster.partition, _TIME_MIN, parallelism, chunk)))
    return yaml_path


def _active(jobs_dir: Path) -> list[str]:
    recs = read_record(jobs_dir).get("stages", {})
    states = sacct_states(r.get("job_id") for r in recs.values())
    return [n for n, r in recs.items() if states.get(str(r.get("job_id")), {}).get("State") in ACTIVE_STATES]


def _wait_idle(jobs_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    time.sleep(1.0)
    while time.monotonic() < deadline:
        if not _active(jobs_dir):
            return
        time.sleep(1.0)
    raise AssertionError(f"jobs of {jobs_dir} still active after {timeout_s:.0f} s: {_active(jobs_dir)}")


def _jobs_dir(work: Path, version: str = "v001") -> Path:
    return work / "out" / "demo" / "sq010" / "sh010" / "render" / version / ".portrait" / "jobs"


def _explain(jobs_dir: Path) -> str:
    from engine.pipeline.submit import format_rows
    rows = graph_status(load_plan(jobs_dir))
    logs = "".join(f"\n--- {r.stage} stderr\n{Path(r.logs['stderr']).read_text()[-3000:]}" for r in rows
                   if r.logs.get("stderr") and Path(r.logs["stderr"]).exists())
    return format_rows(rows) + logs


def _rows(jobs_dir: Path) -> dict[str, Any]:
    return {r.stage: r for r in graph_status(load_plan(jobs_dir))}


# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_submit_shot_end_to_end_then_resubmit_and_config_change(slurm_cluster, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """`portrait submit` returns at once; the graph track -> train -> render array (neural
    render with the trained model) -> review -> qc runs as SLURM jobs to EXRs and the QC
    report; sacct lists the array tasks; a resubmit runs nothing; a changed QC threshold makes
    v002 reusing the content-keyed tracking and actor model."""
    from tools.cli import main

    work = tmp_path / "demo"
    yaml_path = _demo_shot(slurm_cluster, work, frames=4)
    n_before = len(slurm_cluster.sacct())
    t0 = time.perf_counter()
    assert main(["submit", str(yaml_path)]) == 0
    submit_s = time.perf_counter() - t0
    out = capsys.readouterr().out
    jobs_dir = _jobs_dir(work)
    stages = read_record(jobs_dir)["stages"]
    assert set(stages) == {"track-plate", "train", "render-1001-1002", "render-1003-1004", "review", "qc"}
    array_id = stages["render-1001-1002"]["job_id"].split("_")[0]
    assert [stages[f"render-{a}-{a + 1}"]["job_id"] for a in (1001, 1003)] == [f"{array_id}_0", f"{array_id}_1"]
    assert stages["train"]["depends_on"] == [stages["track-plate"]["job_id"]]
    assert set(stages["render-1001-1002"]["depends_on"]) == {stages["train"]["job_id"], stages["track-plate"]["job_id"]}
    assert stages["review"]["depends_on"] == [array_id]  # the whole array: afterok on every task
    assert stages["qc"]["depends_on"] == [stages["review"]["job_id"]]
    assert "submitted 6 stage(s)" in out
    assert _active(jobs_dir), "submit must return while the jobs are still queued or running"

    _wait_idle(jobs_dir, 300)
    wall = time.perf_counter() - t0
    assert main(["status", str(yaml_path)]) == 0, capsys.readouterr().out + _explain(jobs_dir)
    status_out = capsys.readouterr().out
    assert "rendered: 4/4 frames" in status_out and "failed" not in status_out
    base = work / "out" / "demo" / "sq010" / "sh010"
    exrs = sorted((base / "render" / "v001").glob("*.exr"))
    assert len(exrs) == 4
    assert (base / "qc" / "v001" / "report.html").is_file() and list((base / "review" / "v001").glob("*.mp4"))
    assert json.loads((base / "render" / "v001" / ".portrait" / "version.json").read_text())["status"] == "complete"
    plan = load_plan(jobs_dir)
    model = plan.by_name["train"].model_path()
    assert model.is_file() and plan.by_name["render-1001-1002"].inner.checkpoint == model
    # Every stage ran on the node, in the job the record names; logs sit in the shot's folder.
    for name, rec in stages.items():
        man = read_manifest(plan.by_name[name].manifest_path())
        assert man is not None and man["job_id"] == rec["job_id"] and man["host"], (name, man)
        assert Path(rec["logs"]["stderr"]).is_file() and Path(rec["logs"]["stderr"]).is_relative_to(jobs_dir)

    fields = "JobID,JobName%22,State,ExitCode,Elapsed,NodeList"
    text = slurm_cluster.run(["sacct", "--allocations", f"--format={fields}", "--starttime=now-1day",
                              f"--jobs={','.join(sorted({r['job_id'].split('_')[0] for r in stages.values()}))}"])
    rows = {r["JobID"]: r for r in slurm_cluster.sacct([array_id], fields="JobID,JobName,State")}
    assert {f"{array_id}_0", f"{array_id}_1"} <= set(rows)
    assert all(rows[f"{array_id}_{i}"]["State"] == "COMPLETED" for i in range(2))
    assert rows[f"{array_id}_0"]["JobName"] == "sh010.v001.render"
    with capsys.disabled():
        print(f"\nsubmit returned in {submit_s:.1f} s; shot done in {wall:.1f} s\n{text}")
    if DOCS_SACCT:
        DOCS_SACCT.write_text(f"$ portrait submit demo_shot.yaml\n{out}\n$ portrait status demo_shot.yaml\n"
                              f"{status_out}\n$ sacct --allocations --format={fields} --jobs=...\n{text}")

    # Resubmitting the finished shot submits nothing.
    n_jobs = len(slurm_cluster.sacct())
    assert main(["submit", str(yaml_path)]) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(slurm_cluster.sacct()) == n_jobs and n_jobs - n_before == 6

    # A changed QC threshold: a new version; tracking and the actor model (keyed by content)
    # are not redone, the version's render/review/qc are.
    model_mtime = model.stat().st_mtime_ns
    yaml_path.write_text(yaml_path.read_text().rstrip("\n") + "\nqc: {thresholds: {psnr_min: 20.0}}\n")
    assert main(["submit", str(yaml_path)]) == 0
    capsys.readouterr()
    jobs2 = _jobs_dir(work, "v002")
    assert set(read_record(jobs2)["stages"]) == {"render-1001-1002", "render-1003-1004", "review", "qc"}
    _wait_idle(jobs2, 240)
    assert all(r.state == "done" for r in _rows(jobs2).values()), _explain(jobs2)
    assert model.stat().st_mtime_ns == model_mtime
    assert json.loads((base / "render" / "v001" / ".portrait" / "version.json").read_text())["status"] == "complete"


# ------------------------------------------------------------------------------------------
class Concat(Stage):
    def __init__(self, name: str, srcs: dict[str, Path], dst: Path) -> None:
        self.name, self.srcs, self.dst = name, srcs, Path(dst)

    def inputs(self) -> dict[str, Path]:
        return dict(self.srcs)

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        text = "".join(Path(p).read_text() for _k, p in sorted(self.srcs.items()))
        atomic_write_text(self.dst, text + f"[{self.name}]\n")


class Digest(Concat):
    """A downstream consumer of a binary file (the trained model)."""

    def run(self, ctx: StageContext) -> None:
        import hashlib
        atomic_write_text(self.dst, hashlib.sha256(Path(self.srcs["model"]).read_bytes()).hexdigest() + "\n")


def _decode_frame(frame: int) -> None:
    raise ValueError(f"bad frame {frame}: no face found")


class FlakyStage(Concat):
    """Raises while ``flag`` exists (a bad frame the TD then fixes)."""

    def __init__(self, name: str, srcs: dict[str, Path], dst: Path, flag: Path) -> None:
        super().__init__(name, srcs, dst)
        self.flag = Path(flag)

    def run(self, ctx: StageContext) -> None:
        if self.flag.exists():
            _decode_frame(1012)
        super().run(ctx)


def test_failed_task_shows_remote_traceback_and_retry_reruns_only_it(slurm_cluster, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from tools.cli import main

    src = tmp_path / "plate.txt"
    src.write_text("plate\n")
    flag = tmp_path / "bad_frame"
    flag.write_text("1")
    out = tmp_path / "v001"
    a = Concat("a", {"src": src}, out / "a.txt")
    b = FlakyStage("b", {"a": out / "a.txt"}, out / "b.txt", flag)
    c = Concat("c", {"b": out / "b.txt"}, out / "c.txt")
    plan = GraphPlan([a, b, c], {"a": [], "b": ["a"], "c": ["b"]}, out / ".portrait" / "jobs", label="t")
    cfg = ExecutorConfig(kind="slurm", params=_slurm_params(slurm_cluster))
    sub = submit_graph(plan, cfg)
    assert set(sub.submitted) == {"a", "b", "c"}
    _wait_idle(plan.jobs_dir, 120)

    # status by the failed job's id (sacct's WorkDir leads back to the jobs folder)
    assert main(["status", sub.submitted["b"]]) == 3
    text = capsys.readouterr().out
    assert "ValueError: bad frame 1012: no face found" in text
    assert "Traceback (most recent call last)" in text and "in _decode_frame" in text
    rows = _rows(plan.jobs_dir)
    assert (rows["a"].state, rows["b"].state, rows["c"].state) == ("done", "failed", "pending")
    assert rows["b"].error == "ValueError: bad frame 1012: no face found"
    assert "blocked" in rows["c"].detail
    assert Path(rows["b"].logs["stderr"]).is_file() and "bad frame 1012" in Path(rows["b"].logs["stderr"]).read_text()
    states = sacct_states(sub.submitted.values())
    assert states[sub.submitted["b"]]["State"] == "FAILED" and states[sub.submitted["c"]]["State"] == "CANCELLED"

    flag.unlink()  # the TD fixes the bad frame
    a_mtime = (out / "a.txt").stat().st_mtime_ns
    assert main(["retry", str(plan.jobs_dir)]) == 0
    assert "resubmitted 2 stage(s)" in capsys.readouterr().out
    rec = read_record(plan.jobs_dir)["stages"]
    assert rec["a"]["job_id"] == sub.submitted["a"]                    # not resubmitted
    assert rec["b"]["history"] == [sub.submitted["b"]] and rec["b"]["job_id"] != sub.submitted["b"]
    _wait_idle(plan.jobs_dir, 120)
    assert all(r.state == "done" for r in _rows(plan.jobs_dir).values())
    assert (out / "c.txt").read_text() == "plate\n[a]\n[b]\n[c]\n"
    assert (out / "a.txt").stat().st_mtime_ns == a_mtime
    assert not b.failure_path().exists()
    assert main(["retry", str(plan.jobs_dir)]) == 0
    assert "nothing to retry" in capsys.readouterr().out


def test_scancelled_render_task_leaves_missing_frames_and_retry_renders_only_those(
        slurm_cluster, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tools.cli import main

    work = tmp_path / "demo"
    yaml_path = _demo_shot(slurm_cluster, work, parallelism=1)  # tasks run one after another
    # Render only (no movie, no QC): the review/qc dependents' blocking is covered above.
    yaml_path.write_text(yaml_path.read_text().replace("review_movie: {enabled: true", "review_movie: {enabled: false"))
    assert main(["submit", str(yaml_path), "--no-train"]) == 0
    capsys.readouterr()
    jobs_dir = _jobs_dir(work)
    stages = read_record(jobs_dir)["stages"]
    victim = stages["render-1005-1006"]["job_id"]
    assert victim.endswith("_2")
    slurm_cluster.run(["scancel", victim])
    _wait_idle(jobs_dir, 120)

    assert main(["status", str(yaml_path), "--brief"]) == 3
    text = capsys.readouterr().out
    assert "rendered: 4/6 frames" in text
    rows = _rows(jobs_dir)
    assert rows["render-1005-1006"].state == "failed" and "cancelled" in rows["render-1005-1006"].detail
    assert rows["render-1005-1006"].items_done == 0 and rows["render-1001-1002"].state == "done"
    render_dir = work / "out" / "demo" / "sq010" / "sh010" / "render" / "v001"
    before = {p.name: p.stat().st_mtime_ns for p in render_dir.glob("*.exr")}
    assert len(before) == 4

    assert main(["retry", str(yaml_path)]) == 0
    capsys.readouterr()
    rec = read_record(jobs_dir)["stages"]
    resubmitted = {n for n, r in rec.items() if r["job_id"] != stages[n]["job_id"]}
    assert resubmitted == {"render-1005-1006"}
    _wait_idle(jobs_dir, 120)
    assert main(["status", str(yaml_path)]) == 0
    assert "rendered: 6/6 frames" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in render_dir.glob("*.exr")}
    assert len(after) == 6 and all(after[n] == t for n, t in before.items())  # only the missing frames


# ------------------------------------------------------------------------------------------
META = dict(actor_id="synth", face_model_id="sphere-v1", consent="synthetic test data, no person")
TRAIN = {"steps": 60, "checkpoint_every": 10, "log_every": 5, "generator.expr_dim": 2, "threads": 1}


class SynthTrainStage(Stage):
    """Training on a synthetic frame cache with the real Trainer (tiny preset): a stand-in
    for the actor-model TrainStage with the same contract (frame cache in, model.pt out,
    resume from checkpoint.pt)."""

    name = "train"

    def __init__(self, cache: Path, out_dir: Path) -> None:
        self.cache, self.out_dir = Path(cache), Path(out_dir)

    def inputs(self) -> dict[str, Path]:
        return {"cache": self.cache}

    def params(self) -> dict[str, Any]:
        return {"preset": "tiny", "overrides": TRAIN}

    def outputs(self) -> dict[str, Path]:
        return {"model": self.out_dir / "model.pt"}

    def run(self, ctx: StageContext) -> None:
        from engine.neural.checkpoint import ModelMeta
        from engine.neural.train import TrainSpec, run_training

        result = run_training(TrainSpec(self.cache, self.out_dir, ModelMeta(**META), preset="tiny",
                                        overrides=dict(TRAIN)), handle_signals=False)
        with open(self.out_dir / "runs.log", "a") as fh:
            fh.write(f"{os.environ.get('SLURM_JOB_ID')} {os.environ.get('SLURM_RESTART_COUNT', '0')} "
                     f"{result.status} {result.step} {result.steps_run}\n")


def _weights(path: Path) -> dict[str, Any]:
    from engine.neural.checkpoint import Checkpoint
    return Checkpoint.load(path).model


@pytest.mark.slow
def test_preempted_training_resumes_from_checkpoint_with_the_same_result(slurm_cluster, tmp_path: Path) -> None:
    import torch

    from engine.neural.synthetic import synthetic_cache

    cache = tmp_path / "cache"
    synthetic_cache(24, 32, cache)
    train = SynthTrainStage(cache, tmp_path / "model")
    after = Digest("export", {"model": tmp_path / "model" / "model.pt"}, tmp_path / "model" / "model.sha256")
    plan = GraphPlan([train, after], {"train": [], "export": ["train"]}, tmp_path / "jobs", label="train")
    sub = submit_graph(plan, ExecutorConfig(kind="slurm", params=_slurm_params(slurm_cluster, max_num_timeout=3)))
    jid = sub.submitted["train"]

    log = tmp_path / "model" / "train_log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        steps = [json.loads(ln)["step"] for ln in log.read_text().splitlines()] if log.exists() else []
        if steps and steps[-1] >= 15:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("training did not reach step 15")
    assert _rows(plan.jobs_dir)["train"].state == "running"
    # Preemption as SLURM delivers it to a submitit job: USR2 -> checkpoint() saves the
    # trainer's exact state and requeues the job itself.
    slurm_cluster.run(["scancel", jid, "--signal", "USR2"])
    _wait_idle(plan.jobs_dir, 150)

    assert all(r.state == "done" for r in _rows(plan.jobs_dir).values()), _explain(plan.jobs_dir)
    runs = (tmp_path / "model" / "runs.log").read_text().split()
    assert runs[0] == jid and int(runs[1]) >= 1 and runs[2] == "completed" and int(runs[3]) == 60
    assert 0 < int(runs[4]) < 60, runs  # the requeued run trained only the remaining steps
    rows = slurm_cluster.sacct([jid], duplicates=True)
    states = [r["State"] for r in rows if r["JobID"] == jid]
    assert "REQUEUED" in states and states[-1] == "COMPLETED", rows
    stderr = Path(read_record(plan.jobs_dir)["stages"]["train"]["logs"]["stderr"]).read_text()
    # "saved <checkpoint>", or "finished work on disk is kept" when the signal landed inside an
    # optimiser update (the trainer then keeps its last periodic checkpoint): exact either way.
    assert "checkpoint train: requeued (" in stderr, stderr

    # The same training uninterrupted, in this process: bit-identical weights.
    from engine.neural.checkpoint import ModelMeta
    from engine.neural.train import TrainSpec, run_training
    torch.set_num_threads(1)
    ref = run_training(TrainSpec(cache, tmp_path / "ref", ModelMeta(**META), preset="tiny", overrides=dict(TRAIN)),
                       handle_signals=False)
    a, b = _weights(tmp_path / "model" / "model.pt"), _weights(ref.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
