"""The benchmark harness records machine info and figures; `portrait bench` lists and rejects."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.benchmark import BenchResult, machine_info
from tools.cli import main


def test_result_json_carries_machine_and_figures(tmp_path: Path) -> None:
    out = BenchResult("unit_demo", figures={"fps": 12.5}, notes=["n"]).write(tmp_path)
    data = json.loads(out.read_text())
    assert data["benchmark"] == "unit_demo" and data["figures"] == {"fps": 12.5}
    for key in ("cpu_model", "cpu_count", "memory_gib", "gpu", "python"):
        assert key in data["machine"]
    assert data["command"] and "git_commit" in data


def test_machine_info_counts_cores() -> None:
    assert machine_info()["cpu_count"] >= 1


def test_bench_cli_lists_and_rejects_unknown(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "exr_write" in listed and "decode_stream" in listed
    assert main(["bench", "no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown benchmark 'no_such_bench'; valid: ")
