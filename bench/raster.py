"""Benchmark: rasteriser and conditioning maps at 256x256 (frames/s).

    .venv/bin/python -m bench.raster [--threads 2] [--min-time 1.0] [--size 256] [--no-cuda]

Meshes: a ~1k-triangle closed ellipsoid (MediaPipe-mesh size), a ~50k-triangle one (ICT
size) and, when ../shared holds it, the real ICT Face Model Light neutral (26k quads ->
~53k triangles, with eyes, teeth and mouth interior), each posed to fill a face crop the way
the tracker frames it. For batch 1 and 16 on the CPU (``--threads`` torch threads; the goal
machine has 2 cores) and on CUDA when present it times

* ``raster``:        :func:`engine.face.raster.rasterize` alone,
* ``conditioning``:  :func:`engine.face.conditioning.render_conditioning` with all default
                     maps (includes the rasterisation),

reporting frames/s from the median of timed calls, and the naive loop reference on a small
case for comparison. Goal context: tracking end to end (landmarks + fitting + conditioning)
must reach >= 25 frames/s on 2 CPU cores at 256x256, so conditioning for the ~1k-triangle
mesh should stay well above 100 frames/s.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/raster.py` from a source checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

ICT_NPZ = ROOT.parent / "shared" / "models" / "ict_facekit" / "ict_face_model_light_basis.npz"
GOAL_FPS_1K = 100.0


def ellipsoid(nlat: int, nlon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed UV ellipsoid (head-like proportions), outward winding; 2*nlon*(nlat-1) triangles."""
    th = torch.linspace(0, math.pi, nlat + 1)[1:-1]
    ph = torch.linspace(0, 2 * math.pi, nlon + 1)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    ring = torch.stack([T.sin() * P.sin(), -T.cos(), -T.sin() * P.cos()], -1).reshape(-1, 3)
    verts = torch.cat([torch.tensor([[0.0, -1.0, 0.0]]), ring, torch.tensor([[0.0, 1.0, 0.0]])])
    verts = verts * torch.tensor([7.5, 10.0, 9.0])  # cm: width, height, depth of a head
    faces = []
    idx = lambda i, j: 1 + i * nlon + j % nlon  # noqa: E731
    last = verts.shape[0] - 1
    for j in range(nlon):
        faces.append([0, idx(0, j + 1), idx(0, j)])
        faces.append([last, idx(nlat - 2, j), idx(nlat - 2, j + 1)])
    for i in range(nlat - 2):
        for j in range(nlon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [[a, b, d], [a, d, c]]
    faces = torch.tensor(faces)
    # Orient outward (convex): flip where the normal points to the centre.
    v0, v1, v2 = (verts[faces[:, k]] for k in range(3))
    flip = (torch.linalg.cross(v1 - v0, v2 - v0, dim=-1) * (v0 + v1 + v2)).sum(-1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts, faces


def ict_mesh() -> tuple[torch.Tensor, torch.Tensor] | None:
    if not ICT_NPZ.is_file():
        return None
    data = np.load(ICT_NPZ)
    quads = torch.from_numpy(data["faces_quad"].astype(np.int64))
    # Quads split along (0, 2); a -1 fourth index marks a triangle.
    faces = torch.cat([quads[:, [0, 1, 2]], quads[quads[:, 3] >= 0][:, [0, 2, 3]]])
    # ICT is y-up, looking along +z; the camera convention is y-down, z forward.
    verts = torch.from_numpy(data["neutral"].astype(np.float32)) * torch.tensor([1.0, -1.0, -1.0])
    return verts, faces


def mesh_inputs(verts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plausible per-vertex attributes: canonical code, spherical uv, regions by position."""
    from engine.face.conditioning import normalise_canonical
    can = normalise_canonical(verts)
    uv = torch.stack([torch.atan2(can[:, 0], -can[:, 2]) / (2 * math.pi) + 0.5, can[:, 1] * 0.5 + 0.5], -1)
    region = torch.ones(verts.shape[0], dtype=torch.uint8)
    region[(can[:, 1] > 0.3) & (can[:, 1] < 0.5) & (can[:, 2] < 0)] = 3
    region[(can[:, 1] > -0.2) & (can[:, 1] < 0.0) & (can[:, 2] < 0)] = 4
    return {"canonical_verts": can, "uv": uv, "vertex_region": region}


def posed_batch(verts: torch.Tensor, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slightly different head poses per batch element, framed so the mesh fills ~80% of the crop."""
    from engine.face.camera import axis_angle_to_matrix
    centre = (verts.amax(0) + verts.amin(0)) / 2
    height = float((verts[:, 1].amax() - verts[:, 1].amin()))
    z = 60.0
    f = 0.8 * size * z / height
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    out = []
    for b in range(batch):
        aa = torch.tensor([0.05 * math.sin(b), 0.35 * math.sin(0.7 * b + 0.3), 0.03 * math.cos(b)])
        R = axis_angle_to_matrix(aa)
        out.append((verts - centre) @ R.T + torch.tensor([0.0, 0.0, z]))
    return torch.stack(out), K


def timed(fn: Callable[[], object], sync: Callable[[], None], min_time: float, min_iters: int = 5
          ) -> tuple[float, float]:
    """(median wall seconds per call, median process CPU seconds per call) after warm-up.

    CPU time is a diagnostic for loaded machines: it excludes time the process waited for a
    core (but includes threads spinning on each other, so compare it at equal --threads)."""
    for _ in range(2):
        fn()
    sync()
    wall: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(wall) < min_iters or time.perf_counter() - start < min_time:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (goal machine: 2 cores)")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per case")
    ap.add_argument("--size", type=int, default=256, help="crop side in pixels")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--no-cuda", action="store_true", help="skip CUDA even when available")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = ap.parse_args(argv)

    from engine.benchmark import BenchResult, peak_rss_mib
    from engine.face.conditioning import ConditioningConfig, render_conditioning
    from engine.face.raster import rasterize, rasterize_naive

    torch.set_num_threads(args.threads)
    res = BenchResult("raster")
    meshes = {"ellipsoid_1k": ellipsoid(16, 32), "ellipsoid_50k": ellipsoid(101, 248)}
    ict = ict_mesh()
    if ict is not None:
        meshes["ict_53k"] = ict
    else:
        res.notes.append(f"ICT mesh not found at {ICT_NPZ}: synthetic meshes only")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    cfg = ConditioningConfig(size=args.size)
    S = args.size
    figures: dict[str, object] = {"size": S, "cpu_threads": args.threads, "maps": list(cfg.maps),
                                  # other processes competing for the cores distort CPU figures
                                  "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
                                  "triangles": {k: int(f.shape[0]) for k, (_, f) in meshes.items()}}
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        for name, (verts, faces) in meshes.items():
            attrs = {k: v.to(dev) for k, v in mesh_inputs(verts).items()}
            for B in args.batches:
                vb, K = posed_batch(verts, B, S)
                vb, K, fd = vb.to(dev), K.to(dev), faces.to(dev)
                t_r, c_r = timed(lambda: rasterize(vb, fd, K, S, S), sync, args.min_time)
                t_c, c_c = timed(lambda: render_conditioning(vb, fd, K, config=cfg, **attrs), sync,
                                 args.min_time)
                cover = float(rasterize(vb, fd, K, S, S).mask.float().mean())
                key = f"{dev}/{name}/b{B}"
                figures[key] = {"raster_fps": round(B / t_r, 1), "conditioning_fps": round(B / t_c, 1),
                                "raster_ms_per_call": round(t_r * 1e3, 2),
                                "conditioning_ms_per_call": round(t_c * 1e3, 2),
                                "raster_cpu_ms_per_frame": round(c_r / B * 1e3, 2),
                                "conditioning_cpu_ms_per_frame": round(c_c / B * 1e3, 2),
                                "coverage": round(cover, 3)}
                print(f"{key:28s} raster {B / t_r:8.1f} fps   conditioning {B / t_c:8.1f} fps   "
                      f"(cpu ms/frame {c_r / B * 1e3:.2f} / {c_c / B * 1e3:.2f}; coverage {cover:.2f})",
                      flush=True)
    # Naive loop reference vs the vectorised path on a small case (CPU).
    verts, faces = meshes["ellipsoid_1k"]
    vb, K = posed_batch(verts, 1, 64)
    t0 = time.perf_counter()
    ref = rasterize_naive(vb, faces, K, 64, 64)
    t_naive = time.perf_counter() - t0
    t_vec = timed(lambda: rasterize(vb, faces, K, 64, 64), lambda: None, 0.3)[0]
    same = bool(torch.equal(ref.face_idx, rasterize(vb, faces, K, 64, 64).face_idx))
    figures["naive_reference"] = {"case": "ellipsoid_1k, 64x64, batch 1, cpu", "naive_s": round(t_naive, 3),
                                  "vectorised_s": round(t_vec, 5), "speedup": round(t_naive / t_vec, 1),
                                  "identical_face_idx": same}
    print(f"naive reference 64x64: {t_naive:.3f} s vs vectorised {t_vec * 1e3:.2f} ms "
          f"({t_naive / t_vec:.0f}x), identical={same}")
    c1 = figures.get("cpu/ellipsoid_1k/b1", {})
    if c1:
        figures["goal_conditioning_1k_cpu_b1_fps"] = GOAL_FPS_1K
        figures["goal_met"] = bool(c1["conditioning_fps"] >= GOAL_FPS_1K)
    figures["peak_rss_mib"] = round(peak_rss_mib(), 1)
    res.figures = figures
    if not args.no_write:
        print(f"wrote {res.write()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
