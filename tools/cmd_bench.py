"""`portrait bench NAME [ARGS...]`: run a benchmark from the repository's bench/ folder."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from engine.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def available() -> list[str]:
    if not BENCH_DIR.is_dir():
        return []
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def _run(args: argparse.Namespace) -> int:
    names = available()
    if args.list or not args.name:
        print("\n".join(names) if names else "no benchmarks found (bench/ lives in the source checkout)")
        return 0
    if args.name not in names:
        raise ConfigError(f"unknown benchmark {args.name!r}; valid: {', '.join(names) or 'none'}")
    root = str(BENCH_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"bench.{args.name}")
    return int(module.main(list(args.args)) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write bench/results/NAME.json",
                       description="Run a benchmark from bench/ (results go to bench/results/NAME.json).")
    p.add_argument("name", nargs="?", help="benchmark name (see --list)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.add_argument("--list", action="store_true", help="list available benchmarks")
    p.set_defaults(func=_run)
