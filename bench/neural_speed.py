"""Benchmark: neural renderer training step time and online inference speed per preset.

    .venv/bin/python -m bench.neural_speed [--presets draft,final] [--size N] [--steps 6]
                                           [--batch 8] [--threads N] [--device auto]

For each preset (its own config; ``--size`` overrides the crop size for a quick run), in a
*fresh subprocess* so that peak RSS / GPU memory are that preset's own: build synthetic
conditioning frames (engine.neural.synthetic, no faces), time ``--steps`` training steps
after a warm-up step (the preset's batch: clips x clip_len frames, all its losses, AMP on
CUDA), then inference from the trained weights: batched frames/s at ``--batch`` and
batch-1 latency (p50/p90), end to end CPU tensors -> CPU results, under
``torch.inference_mode`` (channels-last + autocast on CUDA). Reports parameter counts,
peak RSS (ru_maxrss) and, on CUDA, peak allocated GPU memory for training and inference.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(preset: str, size: int | None, steps: int, batch: int, device: str, threads: int) -> dict:
    import torch
    if threads > 0:
        torch.set_num_threads(threads)
    from engine.benchmark import peak_rss_mib
    from engine.neural.checkpoint import ModelMeta
    from engine.neural.infer import Renderer, measure_speed
    from engine.neural.perceptual import weights_available
    from engine.neural.synthetic import synthetic_cache
    from engine.neural.train import Trainer, make_config

    ov: dict = {"steps": steps + 1, "device": device, "checkpoint_every": 10 ** 6, "log_every": 10 ** 6,
                "data.holdout_fraction": 0.0, "data.prefetch": 0}
    if size:
        ov["generator.image_size"] = size
        ov["loss.perceptual_size"] = min(size, make_config(preset).loss.perceptual_size)
    notes = []
    if not weights_available():
        ov["loss.perceptual"] = 0.0
        notes.append("stlpips-pytorch missing: perceptual loss disabled")
    cfg = make_config(preset, ov)
    S = cfg.generator.image_size
    frames_per_step = cfg.data.clips_per_batch * cfg.data.clip_len
    n = max(frames_per_step * 2, batch, 8)
    t0 = time.perf_counter()
    ds = synthetic_cache(n, S)
    data_s = time.perf_counter() - t0
    meta = ModelMeta(actor_id="bench", face_model_id="synthetic-sphere", consent="synthetic benchmark data")
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, ds, tmp, meta)
        dev = tr.device
        cuda = dev.type == "cuda"
        batches = [ds.get(tr.sampler.batch(s)) for s in range(steps + 1)]
        for b in batches:
            b.clip_len = cfg.data.clip_len
        tr.train_step(batches[0].to(dev))  # warm-up: allocator, cuDNN autotune, lazy init
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for b in batches[1:]:
            t = time.perf_counter()
            tr.train_step(b.to(dev, non_blocking=cuda))
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        train_gpu_mib = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
        params = tr.model.num_parameters()
        model_path = tr.export_model(Path(tmp) / "model.pt")
        del tr
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        r = Renderer.from_checkpoint(model_path, device=device)
        speed = measure_speed(r, ds.get(list(range(min(batch, len(ds))))), batch_size=batch)
        infer_gpu_mib = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    times.sort()
    return {
        "device": str(dev), "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "threads": torch.get_num_threads(), "image_size": S, "frames_per_step": frames_per_step,
        "amp": bool(cfg.amp and cuda), "amp_dtype": cfg.amp_dtype if cfg.amp and cuda else None,
        "perceptual": {"weight": cfg.loss.perceptual, "layers": cfg.loss.perceptual_layers,
                       "size": cfg.loss.perceptual_size},
        "parameters": params, "synthetic_data_s": round(data_s, 2),
        "train_step_s_median": round(times[len(times) // 2], 4), "train_step_s_min": round(times[0], 4),
        "train_frames_per_s": round(frames_per_step / times[len(times) // 2], 3),
        "timed_steps": len(times), **{f"infer_{k}": v for k, v in speed.items()},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "train_peak_gpu_mib": None if train_gpu_mib is None else round(train_gpu_mib, 1),
        "infer_peak_gpu_mib": None if infer_gpu_mib is None else round(infer_gpu_mib, 1),
        "notes": notes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="draft,final")
    ap.add_argument("--size", type=int, default=0, help="crop size override (0: each preset's own)")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--batch", type=int, default=8, help="inference batch size")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        fig = child(args.child, args.size or None, args.steps, args.batch, args.device, args.threads)
        print(json.dumps(fig))
        return 0

    from engine.benchmark import BenchResult
    result = BenchResult("neural_speed")
    repo = Path(__file__).resolve().parents[1]
    ok = True
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        cmd = [sys.executable, "-m", "bench.neural_speed", "--child", preset, "--size", str(args.size),
               "--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads),
               "--device", args.device]
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            result.figures[preset] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            ok = False
            continue
        result.figures[preset] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{preset}: {json.dumps(result.figures[preset])}")
    result.notes.append("each preset runs in a fresh subprocess: peak_rss_mib is that process's ru_maxrss")
    result.notes.append("synthetic conditioning (textured sphere), so figures measure compute, not quality")
    if args.size:
        result.notes.append(f"crop size overridden to {args.size} px for every preset (quick run)")
    out = result.write()
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
