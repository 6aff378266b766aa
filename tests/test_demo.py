"""The main job on its embedded default: `portrait demo`, in-process and as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from engine.io import probe, read_exr
from tools.cli import main

REPO = Path(__file__).resolve().parents[1]


def _outputs(work: Path, version: str = "v001") -> dict[str, Path]:
    base = work / "out" / "demo" / "sq010" / "sh010"
    return {"render": base / "render" / version, "movie": base / "review" / version /
            f"demo_sq010_sh010_review_{version}.mp4", "qc": base / "qc" / version}


# Smoke-sized actor model: the pipeline, not the picture, is under test here.
TINY = ["--preset", "tiny", "--steps", "4"]


def test_demo_in_process_end_to_end_and_rerun_skips(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "demo"
    assert main(["demo", "--out", str(work), "--frames", "12", "--executor", "debug", *TINY]) == 0
    out = _outputs(work)
    exrs = sorted(out["render"].glob("*.exr"))
    assert [p.name for p in exrs] == [f"demo_sq010_sh010_render_v001.{f}.exr" for f in range(1001, 1013)]
    channels, header = read_exr(exrs[0])
    # The neural render: the composite plus the compositor's passes.
    assert {"R", "G", "B", "A", "neural.R", "neural.A", "matte.face", "depth.Z", "N.X", "ST.x"} <= set(channels)
    assert channels["R"].dtype == np.float16 and channels["depth.Z"].dtype == np.float32
    assert float(channels["neural.A"].max()) > 0.5  # the face was painted by the actor model
    assert Fraction(header["framesPerSecond"]) == 25
    assert list((work / "out" / "actors" / "astronaut").glob("tiny-*/model.pt"))
    info = probe(out["movie"])
    assert info.frame_count == 12 and info.fps == 25 and info.has_audio
    metrics = json.loads((out["qc"] / "metrics.json").read_text())
    assert metrics["verdict"] in ("PASS", "FAIL") and metrics["frames"]["missing"] == []
    assert "<img" in (out["qc"] / "report.html").read_text()
    capsys.readouterr()

    # A rerun of the finished shot runs nothing and writes no new version.
    assert main(["demo", "--out", str(work), "--frames", "12", "--executor", "debug", *TINY]) == 0
    text = capsys.readouterr().out
    assert text.count("skipped") == 5, text
    assert not (work / "out" / "demo" / "sq010" / "sh010" / "render" / "v002").exists()


def test_deleted_frame_reruns_into_a_new_version(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work = tmp_path / "demo"
    assert main(["demo", "--out", str(work), "--frames", "6", "--executor", "debug", *TINY]) == 0
    out = _outputs(work)
    first = sorted(out["render"].glob("*.exr"))[0]
    first.unlink()
    assert main(["demo", "--out", str(work), "--frames", "6", "--executor", "debug", *TINY]) == 0
    # v001 is complete and never written into again; v002 holds the full, fresh set.
    assert not first.exists()
    assert len(list(_outputs(work, "v002")["render"].glob("*.exr"))) == 6


def test_chunk_render_writes_only_its_frames(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    from engine.demo import build_demo
    shot = build_demo(work, frames=10, executor="debug", preset="tiny", steps=4)
    assert main(["run", str(shot), "--frames", "1004-1006"]) == 0
    frames = sorted(p.name for p in _outputs(work)["render"].glob("*.exr"))
    assert frames == [f"demo_sq010_sh010_render_v001.{f}.exr" for f in (1004, 1005, 1006)]
    assert not _outputs(work)["movie"].exists()


def test_run_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("error: ") for line in err)
    from engine.demo import build_demo
    shot = build_demo(tmp_path / "d", frames=4, executor="debug", preset="tiny", steps=4)
    assert main(["run", str(shot), "--frames", "990-1002"]) == 2
    assert "outside the shot" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_subprocess_local_executor(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "demo", "--out", str(tmp_path / "w"), "--frames", "8", *TINY],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "report:" in proc.stdout
    assert len(list(_outputs(tmp_path / "w")["render"].glob("*.exr"))) == 8
