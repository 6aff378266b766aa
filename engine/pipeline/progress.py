"""Progress reporting for long stages: one throttled line on stderr plus a small JSON file.

A render farm job's stderr is a log file, not a terminal: carriage-return animations turn
into megabytes of garbage there. So a :class:`Progress` redraws one line in place only on
a TTY, and on anything else prints a full line per report, rate-limited (at most every
``min_interval_s`` seconds, or when another 10 % of the total is done). It also keeps a
progress JSON file (schema ``portrait.progress/1``) up to date, atomically, so that
``portrait status`` can show how far a remote job is without reading its logs.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable

from engine.util.atomic import atomic_write_json

PROGRESS_SCHEMA = "portrait.progress/1"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (hours unbounded), the way timedelta prints, without microseconds."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_rate(rate: float | None, unit: str) -> str:
    """``3.2 frames/s``; slow work (training epochs, big chunks) reads better as ``s/frame``."""
    if rate is None or rate <= 0 or not math.isfinite(rate):
        return f"-- {unit}/s"
    if rate < 0.1:
        return f"{1.0 / rate:.1f} s/{unit.rstrip('s') or unit}"
    return f"{rate:.1f} {unit}/s"


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Progress:
    """Progress of one stage: ``with Progress("render", 48, "frames") as p: ... p.update()``.

    ``initial`` counts items already done by an earlier (killed) run, so that a resumed
    render shows 30/48 rather than 0/18; the rate and ETA count only this run's work.
    ``total`` may be ``None`` when unknown (then no ETA is shown).
    """

    def __init__(self, stage: str, total: int | None, unit: str = "items", *, initial: int = 0,
                 stream: IO[str] | None = None, json_path: str | os.PathLike | None = None,
                 min_interval_s: float | None = None, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is not None and total < 0:
            raise ValueError(f"progress total must be >= 0, got {total}")
        self.stage = stage
        self.total = total
        self.unit = unit
        self.initial = int(initial)
        self.done = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.json_path = Path(json_path) if json_path is not None else None
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        # A terminal can redraw often; a log file gets a line at most every 2 s.
        self.min_interval_s = min_interval_s if min_interval_s is not None else (0.2 if tty else 2.0)
        self._clock = clock
        self._t0 = clock()
        self._started_at = _now_iso()
        self._last_print_t: float | None = None
        self._last_print_decile = -1
        self._last_json_t: float | None = None
        self._closed = False
        self.state = "running"

    # -- figures -------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._t0

    @property
    def rate(self) -> float | None:
        """Items per second over this run (mean since start: steadier than a window)."""
        n = self.done - self.initial
        dt = self.elapsed_s
        if n <= 0 or dt <= 0:
            return None
        return n / dt

    @property
    def eta_s(self) -> float | None:
        r = self.rate
        if self.total is None or r is None:
            return None
        return max(self.total - self.done, 0) / r

    def line(self) -> str:
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"[{self.stage}] {count} {self.unit}", format_rate(self.rate, self.unit)]
        if self.state == "done":
            parts.append(f"done in {format_duration(self.elapsed_s)}")
        elif self.state == "failed":
            parts.append(f"FAILED after {format_duration(self.elapsed_s)}")
        elif self.state == "interrupted":
            parts.append(f"interrupted after {format_duration(self.elapsed_s)}")
        elif self.total is not None:
            eta = self.eta_s
            parts.append(f"ETA {format_duration(eta) if eta is not None else '?'}")
        return "  ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        rate = self.rate
        eta = self.eta_s
        return {
            "schema": PROGRESS_SCHEMA,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "rate": round(rate, 4) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "state": self.state,
            "started_at": self._started_at,
            "updated_at": _now_iso(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    # -- reporting -----------------------------------------------------------------------
    def _decile(self) -> int:
        if not self.total:
            return -1
        return min(10, (10 * self.done) // self.total)

    def _emit(self, force: bool = False) -> None:
        now = self._clock()
        due_time = self._last_print_t is None or now - self._last_print_t >= self.min_interval_s
        # In logs, also report every further 10 % so short fast stages still show steps.
        due_step = not self.tty and self._decile() > self._last_print_decile
        if force or due_time or due_step:
            self._write_line()
            self._last_print_t = now
            self._last_print_decile = self._decile()
        if self.json_path is not None and (force or self._last_json_t is None
                                           or now - self._last_json_t >= min(1.0, self.min_interval_s)):
            self._write_json()
            self._last_json_t = now

    def _write_line(self) -> None:
        text = self.line()
        try:
            if self.tty:
                # \x1b[K clears what a longer previous line left behind.
                self.stream.write("\r" + text + "\x1b[K")
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed/broken stderr must never fail a render

    def _write_json(self) -> None:
        assert self.json_path is not None
        try:
            atomic_write_json(self.json_path, self.snapshot())
        except OSError:
            pass  # progress is advisory; the stage's outputs are what matter

    def update(self, n: int = 1) -> None:
        if self._closed:
            raise RuntimeError(f"progress '{self.stage}' is closed")
        self.done += int(n)
        self._emit()

    def set_total(self, total: int | None) -> None:
        self.total = total

    def close(self, state: str = "done") -> None:
        if self._closed:
            return
        self.state = state
        self._closed = True
        self._emit(force=True)
        if self.tty:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> "Progress":
        self._emit(force=True)  # a first line tells the log the stage started and its size
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("done")
        elif issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
            self.close("interrupted")  # preempted/requeued or ^C: resumable, not a failure
        else:
            self.close("failed")


def read_progress(path: str | os.PathLike) -> dict[str, Any] | None:
    """The last progress snapshot written at ``path``, or None if there is none (yet)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != PROGRESS_SCHEMA:
        return None
    return data
