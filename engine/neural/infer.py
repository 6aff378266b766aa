"""Online inference: render frames from conditioning with a trained actor model.

No test-time optimisation: a frame's render is one forward pass of the generator on its
conditioning maps (+ plate context, + expression), so a shot renders at the network's
throughput. :class:`Renderer` loads a checkpoint (training or exported model), runs under
``torch.inference_mode`` with channels-last and autocast on CUDA, and batches frames;
:func:`measure_speed` reports batched frames/s and batch-1 latency (end to end: CPU
tensors in, CPU tensors out, the way a render stage uses it).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from engine.neural.checkpoint import Checkpoint, ModelMeta
from engine.neural.data import FrameBatch, FrameDataset
from engine.neural.generator import GeneratorConfig, GeneratorOutput, PortraitGenerator
from engine.neural.train import resolve_device

__all__ = ["RenderOutput", "Renderer", "measure_speed"]


@dataclass
class RenderOutput:
    """CPU float32 tensors: rgb / composite (B, 3, H, W), alpha / hole (B, 1, H, W), frames (B,)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    composite: torch.Tensor
    hole: torch.Tensor
    frames: torch.Tensor


class Renderer:
    def __init__(self, model: PortraitGenerator, meta: ModelMeta, *, device: torch.device, step: int = 0,
                 amp: bool = True, channels_last: bool = True) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.step = step
        self.use_cuda = device.type == "cuda"
        self.channels_last = channels_last and self.use_cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.use_amp = amp and self.use_cuda
        self.amp_dtype = (torch.bfloat16 if self.use_cuda and torch.cuda.is_bf16_supported() else torch.float16)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def config(self) -> GeneratorConfig:
        return self.model.cfg

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str = "auto",
                        expected_face_model_id: str | None = None, amp: bool = True,
                        channels_last: bool = True) -> "Renderer":
        """Load ``model.pt`` or a training ``checkpoint.pt``; a face-model mismatch is a ConfigError."""
        dev = resolve_device(device)
        ckpt = Checkpoint.load(Path(path), map_location="cpu", expected_face_model_id=expected_face_model_id)
        gcfg = _generator_config(ckpt.generator_config)
        model = PortraitGenerator(gcfg)
        model.load_state_dict(ckpt.model)
        return cls(model, ckpt.meta, device=dev, step=ckpt.step, amp=amp, channels_last=channels_last)

    @torch.inference_mode()
    def forward(self, cond: dict[str, torch.Tensor], context: torch.Tensor | None = None,
                expr: torch.Tensor | None = None, hole: torch.Tensor | None = None) -> GeneratorOutput:
        """One batch on the device (tensors may be on CPU; they are moved). Outputs stay on the device."""
        nb = self.use_cuda
        cond = {k: v.to(self.device, non_blocking=nb) for k, v in cond.items()}
        if self.channels_last:
            cond = {k: v.contiguous(memory_format=torch.channels_last) for k, v in cond.items()}
        mv = (lambda t: None if t is None else t.to(self.device, non_blocking=nb))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            return self.model(cond, mv(context) if self.config.context else None, mv(expr), mv(hole))

    def render_batch(self, batch: FrameBatch) -> RenderOutput:
        ctx = batch.plate if self.config.context else None
        out = self.forward(batch.cond, ctx, batch.expr, batch.hole)
        return RenderOutput(rgb=out.rgb.float().cpu(), alpha=out.alpha.float().cpu(),
                            composite=out.composite.float().cpu(), hole=out.hole.float().cpu(),
                            frames=batch.frames.cpu())

    def render_dataset(self, dataset: FrameDataset, indices: Sequence[int], batch_size: int = 8
                       ) -> Iterator[tuple[FrameBatch, RenderOutput]]:
        """Render ``indices`` of ``dataset`` in batches; yields (input batch, output)."""
        idx = list(indices)
        for i in range(0, len(idx), batch_size):
            b = dataset.get(idx[i:i + batch_size])
            yield b, self.render_batch(b)


def _generator_config(d: dict) -> GeneratorConfig:
    known = set(GeneratorConfig.__dataclass_fields__)
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
    return GeneratorConfig(**kw)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_speed(renderer: Renderer, sample: FrameBatch, *, batch_size: int = 8, warmup: int = 3,
                  iters: int = 10, latency_iters: int = 20) -> dict[str, float]:
    """Batched throughput (frames/s) at ``batch_size`` and batch-1 latency (ms, p50/p90),
    both end to end from CPU tensors to CPU results. ``sample`` supplies frames (repeated
    to fill the batch)."""
    reps = -(-batch_size // len(sample))
    idx = list(range(len(sample))) * reps
    big = sample.select(idx[:batch_size])
    one = sample.select([0])
    for _ in range(warmup):
        renderer.render_batch(big)
        renderer.render_batch(one)
    _sync(renderer.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        renderer.render_batch(big)
    _sync(renderer.device)
    thr = batch_size * iters / (time.perf_counter() - t0)
    lat = []
    for _ in range(latency_iters):
        t = time.perf_counter()
        renderer.render_batch(one)
        _sync(renderer.device)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"batch_size": batch_size, "frames_per_s": round(thr, 3),
            "batch1_latency_ms_p50": round(statistics.median(lat), 3),
            "batch1_latency_ms_p90": round(lat[min(len(lat) - 1, int(0.9 * len(lat)))], 3)}
