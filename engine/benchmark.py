"""Benchmark harness: machine info and JSON results under ``bench/results/``.

Benchmarks are not tests: they measure and record. Every result carries the command, the
git commit, the machine (CPU model, cores, memory, GPU if any) and the package versions,
so that figures can be compared only where they are comparable.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import __version__
from engine.util.atomic import atomic_write_json


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return None


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = None
    versions = {}
    for mod in ("numpy", "torch", "OpenEXR", "cv2", "mediapipe", "submitit"):
        m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "gpu": _gpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class BenchResult:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def write(self, results_dir: str | os.PathLike | None = None, repo: Path | None = None) -> Path:
        repo = repo or Path(__file__).resolve().parents[1]
        results_dir = Path(results_dir) if results_dir else repo / "bench" / "results"
        payload = {
            "benchmark": self.name,
            "engine_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - self.started, 3),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "git_commit": _git_commit(repo),
            "machine": machine_info(),
            "figures": self.figures,
            "notes": self.notes,
        }
        out = results_dir / f"{self.name}.json"
        atomic_write_json(out, payload)
        return out
