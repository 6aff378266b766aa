"""`portrait validate`: one line per problem, exit 2 on any problem, `ok: FILE` otherwise, writes nothing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tools.cli

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
schema: portrait.shot/1
show: demo
sequence: sq010
shot: sh010
fps: 25
frames: {last: 1100}
plate: {path: plate.mp4}
actor: {id: jdoe, consent: internal test footage}
"""
BAD = GOOD.replace("fps: 25", "fps: 24/0").replace("frames: {last: 1100}", "frames: {last: 1000}")


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "plate.mp4").write_bytes(b"")
    (folder / "good.yaml").write_text(GOOD)
    (folder / "bad.yaml").write_text(BAD)
    return folder


def _snapshot(*folders: Path) -> set[str]:
    return {str(p) for f in folders for p in f.rglob("*")}


def test_in_process_good_and_bad(shots, capsys, monkeypatch):
    # Only this subcommand: the test must not depend on other subcommands' modules.
    monkeypatch.setattr(tools.cli, "SUBCOMMANDS", ("validate",))
    good, bad = str(shots / "good.yaml"), str(shots / "bad.yaml")
    assert tools.cli.main(["validate", good]) == 0
    assert capsys.readouterr().out == f"ok: {good}\n"
    assert tools.cli.main(["validate", good, bad]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"ok: {good}",
                     f"{bad}:5: fps: invalid frame rate '24/0': denominator is zero",
                     f"{bad}:6: frames.last: last frame 1000 is before first frame 1001"]


def test_in_process_missing_file_and_no_file_checks(shots, capsys, monkeypatch):
    monkeypatch.setattr(tools.cli, "SUBCOMMANDS", ("validate",))
    (shots / "plate.mp4").unlink()
    good = str(shots / "good.yaml")
    assert tools.cli.main(["validate", good]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{good}:7: plate.path: plate file not found: plate.mp4") and out.count("\n") == 1
    assert tools.cli.main(["validate", "--no-file-checks", good]) == 0
    assert tools.cli.main(["validate", str(shots / "nope.yaml")]) == 2
    assert "shot file not found" in capsys.readouterr().out


def test_subprocess_writes_nothing(shots, tmp_path):
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    python = REPO / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), "-m", "tools.cli", "validate"]
    ok = subprocess.run(cmd + ["../shots/good.yaml"], cwd=run_dir, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "ok: ../shots/good.yaml\n"
    bad = subprocess.run(cmd + ["../shots/good.yaml", "../shots/bad.yaml"], cwd=run_dir, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert bad.stdout.splitlines() == [
        "ok: ../shots/good.yaml",
        "../shots/bad.yaml:5: fps: invalid frame rate '24/0': denominator is zero",
        "../shots/bad.yaml:6: frames.last: last frame 1000 is before first frame 1001"]
    assert _snapshot(tmp_path) == before  # no output root, cache or log anywhere
