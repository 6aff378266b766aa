"""Benchmark: engine.io.exr.write_exr against a bare OpenEXR write of the same frame.

    .venv/bin/python -m bench.exr_write [--frames 30] [--out DIR]

1920x1080 RGBA half, ZIP, written alternately (interleaved, so machine noise hits every
variant alike) by

* ``bare``:          ``OpenEXR.File(header, {"RGBA": rgba}).write(path)``
* ``engine``:        ``write_exr(path, {"rgba": rgba}, metadata=...)``: atomic temp + rename,
                     overwrite check, full frame metadata (the default, no fsync)
* ``engine_fsync``:  the same with ``fsync=True`` (one fsync per frame)

and reports median seconds per frame, frames/s and the engine/bare ratio (goal <= 1.25).
The frame is a smooth gradient plus grain, which compresses like a rendered plate (pure
noise would make ZIP unrealistically slow, a flat frame unrealistically fast).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

GOAL_RATIO = 1.25


def make_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37.0) * np.cos(y / 23.0),
                     np.ones_like(x)], axis=-1) * 1.5
    grain = rng.normal(0, 0.01, base.shape).astype(np.float32)
    grain[..., 3] = 0
    return (base + grain).astype(np.float16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=30, help="frames per variant")
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--out", type=Path, default=None, help="folder to write into (default: a temp dir)")
    args = ap.parse_args(argv)

    import OpenEXR

    from engine import __version__
    from engine.benchmark import BenchResult
    from engine.io.exr import exr_frame_metadata, write_exr

    rgba = make_frame(args.width, args.height)
    fps = Fraction(24000, 1001)
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="exr_bench_")
        out = Path(tmp.name)
    else:
        out = args.out
        out.mkdir(parents=True, exist_ok=True)

    def bare(i: int) -> None:
        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        OpenEXR.File(header, {"RGBA": rgba}).write(str(out / f"bare.{1001 + i}.exr"))

    def engine(i: int, fsync: bool = False) -> None:
        meta = exr_frame_metadata(1001 + i, fps, start_timecode="01:00:00:00", owner="bench",
                                  provenance={"engineVersion": __version__})
        name = "engine_fsync" if fsync else "engine"
        write_exr(out / f"{name}.{1001 + i}.exr", {"rgba": rgba}, compression="zip",
                  metadata=meta, overwrite=True, fsync=fsync)

    variants = {"bare": bare, "engine": engine, "engine_fsync": lambda i: engine(i, fsync=True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up: imports, page cache, thread pools
        fn(-1)
    order = list(variants)
    for i in range(args.frames):
        for name in order[i % 3:] + order[:i % 3]:   # rotate who goes first
            t0 = time.perf_counter()
            variants[name](i)
            times[name].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    size = (out / "engine.1001.exr").stat().st_size
    result = BenchResult("exr_write")
    result.figures = {
        "width": args.width, "height": args.height, "channels": "RGBA half", "compression": "zip",
        "frames_per_variant": args.frames, "bytes_per_frame": size,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "fps": {k: round(1 / v, 1) for k, v in med.items()},
        "ratio_engine_vs_bare": round(med["engine"] / med["bare"], 3),
        "ratio_engine_fsync_vs_bare": round(med["engine_fsync"] / med["bare"], 3),
        "fsync_cost_s": round(med["engine_fsync"] - med["engine"], 4),
        "goal_ratio": GOAL_RATIO,
        "goal_met": med["engine"] / med["bare"] <= GOAL_RATIO,
        "output_dir": str(out),
    }
    result.notes.append("engine = write_exr default (atomic temp file + rename, no per-frame fsync; "
                        "durability is batched per render chunk with engine.io.exr.sync_files)")
    path = result.write()
    print(json.dumps(result.figures, indent=2))
    print(f"wrote {path}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if result.figures["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
