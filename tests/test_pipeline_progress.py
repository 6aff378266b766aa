"""Progress lines (format, throttling in logs vs TTY) and the progress JSON."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from engine.pipeline.progress import Progress, format_duration, format_rate, read_progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_line_format_rate_and_eta() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = Progress("render", 48, "frames", stream=out, tty=False, clock=clock)
    clock.t += 3.75
    p.update(12)  # 12 frames in 3.75 s = 3.2 frames/s; 36 left -> 11.25 s
    assert p.line() == "[render] 12/48 frames  3.2 frames/s  ETA 0:00:11"
    assert out.getvalue().splitlines()[-1] == "[render] 12/48 frames  3.2 frames/s  ETA 0:00:11"


def test_non_tty_is_one_line_per_report_and_throttled() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Progress("render", 1000, "frames", stream=out, tty=False, clock=clock) as p:
        for _ in range(1000):
            clock.t += 0.001  # 1 s in all: the 2 s limit never fires, only 10 % steps do
            p.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # start line + one per 10 % step + the final line
    assert 10 <= len(lines) <= 13, lines
    assert lines[0].startswith("[render] 0/1000 frames  -- frames/s  ETA ?")
    assert re.fullmatch(r"\[render\] 1000/1000 frames  1000\.0 frames/s  done in 0:00:01", lines[-1])


def test_non_tty_time_throttle_for_slow_work() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = Progress("train", None, "steps", stream=out, tty=False, clock=clock)
    for _ in range(100):
        clock.t += 0.5
        p.update()
    p.close()
    lines = out.getvalue().splitlines()
    # 50 s of updates every 0.5 s, at most one line every 2 s (+ the final one)
    assert 24 <= len(lines) <= 27
    assert lines[-1] == "[train] 100 steps  2.0 steps/s  done in 0:00:50"


def test_tty_redraws_in_place() -> None:
    clock, out = FakeClock(), io.StringIO()
    with Progress("render", 4, "frames", stream=out, tty=True, clock=clock) as p:
        for _ in range(4):
            clock.t += 1.0
            p.update()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") >= 5
    assert "[render] 4/4 frames  1.0 frames/s  done in 0:00:04" in text


def test_resumed_progress_counts_only_this_run_in_rate() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = Progress("render", 48, "frames", initial=30, stream=out, tty=False, clock=clock)
    clock.t += 2.0
    p.update(4)
    assert p.line() == "[render] 34/48 frames  2.0 frames/s  ETA 0:00:07"


def test_progress_json(tmp_path: Path) -> None:
    clock, out = FakeClock(), io.StringIO()
    path = tmp_path / ".portrait" / "render.progress.json"
    with Progress("render", 10, "frames", stream=out, json_path=path, clock=clock) as p:
        clock.t += 2.0
        p.update(5)
        mid = read_progress(path)
        assert mid is not None and mid["done"] == 5 and mid["state"] == "running"
    data = json.loads(path.read_text())
    assert data["schema"] == "portrait.progress/1"
    assert data["stage"] == "render" and data["done"] == 5 and data["total"] == 10
    assert data["rate"] == pytest.approx(2.5) and data["state"] == "done" and data["updated_at"]
    assert not list(path.parent.glob(".*.tmp*"))  # atomic writes left no temp file


def test_failed_and_interrupted_states(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(ValueError):
        with Progress("qc", 3, stream=out, json_path=tmp_path / "p.json"):
            raise ValueError("x")
    assert "FAILED" in out.getvalue().splitlines()[-1]
    assert read_progress(tmp_path / "p.json")["state"] == "failed"
    with pytest.raises(SystemExit):
        with Progress("qc", 3, stream=out, json_path=tmp_path / "p.json"):
            raise SystemExit(144)
    assert read_progress(tmp_path / "p.json")["state"] == "interrupted"


def test_formatters() -> None:
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(100 * 3600) == "100:00:00"
    assert format_duration(float("inf")) == "?"
    assert format_rate(None, "frames") == "-- frames/s"
    assert format_rate(0.05, "frames") == "20.0 s/frame"
    assert format_rate(12.34, "frames") == "12.3 frames/s"
