"""Benchmark: the full QC report on the demo shot and on a shot of the primary actor plate.

``demo``: ``portrait demo`` (the astronaut, 50 frames, pass-through render), then the full QC
of its latest version (every metric on: ST-LPIPS, dlib identity, lip sync).
``edtalk``: a shot on ../shared/media/actor/EDTalk__pose_source2.mp4 (frames 1001-1250 by
default, production audio), rendered **pass-through** by the pipeline (the neural renderer is
not in the shot graph yet), then the full QC.

For each: wall and CPU time of the QC, seconds per frame, the verdict and every summary figure,
and a headless-Chromium check of the report (screenshot written to
``bench/results/qc_<name>_report.png``, JS errors, blank check).

Run: ``python -m bench.qc_report [--work DIR] [--edtalk-frames 250] [--only demo|edtalk]``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from engine.benchmark import BenchResult, peak_rss_mib

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
RESULTS = REPO / "bench" / "results"

EDTALK_SHOT = """\
schema: portrait.shot/1
show: bench
sequence: qc
shot: edtalk
fps: 25
frames: {{first: 1001, last: {last}}}
plate: {{path: {plate}, colourspace: Rec.709{audio}}}
actor: {{id: edtalk, consent: "shared test media (EDTalk), internal benchmark only"}}
drive: {{mode: none}}
render: {{review_movie: {{enabled: true, burn_in: true, side_by_side: true}}}}
output: {{root: out}}
executor: {{kind: debug}}
"""


def _qc_shot(shot_path: Path, name: str) -> dict:
    from engine.qc.browser import check_page, find_chromium
    from engine.qc.stage import latest_version, run_qc, shot_qc_config, shot_qc_inputs
    from engine.shot import load_shot
    from engine.shotgraph import run_shot

    shot = load_shot(shot_path)
    t0 = time.perf_counter()
    run_shot(shot, train=False)  # QC of the plate passed through: no actor model needed
    render_s = time.perf_counter() - t0
    layout = latest_version(shot)
    inputs = shot_qc_inputs(shot, layout)
    out = layout.qc_dir / "bench-full"
    w0, c0 = time.perf_counter(), time.process_time()
    res = run_qc(inputs, out, shot_qc_config(shot), command=f"python -m bench.qc_report ({name})")
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = inputs.last - inputs.first + 1
    fig = {"frames": n, "pipeline_s": round(render_s, 2), "qc_wall_s": round(wall, 2), "qc_cpu_s": round(cpu, 2),
           "qc_s_per_frame": round(wall / n, 4), "verdict": res.verdict,
           "failing": [g.name for g in res.gates if g.status == "fail"],
           "gates": {g.name: {"value": g.value, "status": g.status, "reason": g.reason} for g in res.gates},
           "summary": {k: v for k, v in res.summary.items() if not isinstance(v, list)},
           "no_face_frames": res.summary.get("no_face_frames"),
           "report": str(res.report), "report_bytes": res.report.stat().st_size}
    if find_chromium():
        shot_png = RESULTS / f"qc_{name}_report.png"
        chk = check_page(res.report, shot_png, window_size=(1280, 3000))
        fig["browser"] = {"ok": chk.ok, "errors": chk.errors, "log_errors": chk.log_errors, "blank": chk.blank,
                          "screenshot": str(shot_png.relative_to(REPO))}
    else:
        fig["browser"] = "skipped: chromium not installed"
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/portrait_bench_qc", help="scratch folder (deleted first)")
    ap.add_argument("--edtalk-frames", type=int, default=250)
    ap.add_argument("--only", choices=("demo", "edtalk", "edtalk_late5"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    res = BenchResult("qc_report")
    if args.only in (None, "demo"):
        from engine.demo import build_demo
        res.figures["demo"] = _qc_shot(build_demo(work / "demo", frames=50, executor="debug"), "demo")
    if args.only in (None, "edtalk"):
        if PLATE.is_file():
            shot = work / "edtalk" / "shot.yaml"
            shot.parent.mkdir(parents=True)
            shot.write_text(EDTALK_SHOT.format(last=1000 + args.edtalk_frames, plate=PLATE, audio=""))
            res.figures["edtalk"] = _qc_shot(shot, "edtalk")
            res.notes.append("edtalk: pass-through render (the neural renderer is not in the shot graph yet): "
                             "fidelity figures are those of a perfect render; identity/LMD/sync check the chain")
        else:
            res.notes.append(f"edtalk skipped: {PLATE} absent")
    if args.only in (None, "edtalk_late5") and PLATE.is_file():
        # The same plate with its dialogue delayed by 5 frames (plate.audio): must FAIL on sync.
        import numpy as np

        from engine.io.audio import extract_audio, write_wav
        folder = work / "edtalk_late5"
        folder.mkdir(parents=True)
        late = write_wav(folder / "dialogue_late5.wav",
                         np.concatenate([np.zeros(5 * 640, np.float32), extract_audio(PLATE, 16000)]), 16000)
        shot = folder / "shot.yaml"
        shot.write_text(EDTALK_SHOT.format(last=1000 + args.edtalk_frames, plate=PLATE, audio=f", audio: {late}")
                        .replace("shot: edtalk", "shot: edtalk_late5"))
        res.figures["edtalk_late5"] = _qc_shot(shot, "edtalk_late5")
    res.figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    res.notes.append("timings on a shared 2-core machine under load; rerun on a quiet machine for real figures")
    print(res.write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
