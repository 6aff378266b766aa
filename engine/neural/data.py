"""Training data for the neural renderer: :class:`FrameBatch`, the :class:`FrameDataset`
protocol, a compact frame cache (in memory or on disk) and the clip sampler.

The tracker produces, per plate frame, conditioning maps (float, ~20 channels) and the crop
image. Held as float32 a 60 s plate at 256 px would need ~8 GB, so :class:`FrameCache`
stores each map quantised in the cheapest exact-enough form (images and masks uint8, unit-
range maps int8/int16 with 0 kept exactly 0, depth float16, region one-hot as a uint8 id):
~1.2 MB per 256 px frame. On disk the arrays are ``.npy`` files opened with ``mmap``, so a
training process touches only the frames it samples and the OS shares/evicts the pages;
decoding a batch is a few cheap casts, which keeps the data side far ahead of a GPU.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import queue
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from engine import __version__
from engine.errors import ConfigError, MediaError
from engine.util.atomic import atomic_write_json

__all__ = ["FrameBatch", "FrameDataset", "Codec", "DEFAULT_CODECS", "FrameCache", "FrameCacheWriter",
           "ClipSampler", "Prefetcher", "split_holdout", "CACHE_SCHEMA"]

CACHE_SCHEMA = "portrait.neural.frame_cache"
CACHE_SCHEMA_VERSION = 1


# ------------------------------------------------------------------------------ the batch
@dataclass
class FrameBatch:
    """A batch of frames for the generator; every tensor is (B, ...) with B frames.

    cond: conditioning maps name -> (B, C, H, W) float (engine.face.conditioning).
    target: the plate crop (B, 3, H, W) in [0, 1] (None at pure inference).
    context: the plate crop to composite onto (B, 3, H, W); None means "same as target"
    (reconstruction training, self-reenactment).
    frames: (B,) int64 plate frame numbers. expr: (B, E) expression coefficients (optional).
    valid: (B, 1, H, W) 0 where the crop has no plate pixels (ran past the plate edge).
    hole: (B, 1, H, W) explicit context hole (default: the generator's dilated face mask).
    clip_len: frames per clip; consecutive groups of clip_len frames are consecutive frames.
    """

    cond: dict[str, torch.Tensor]
    target: torch.Tensor | None
    frames: torch.Tensor
    context: torch.Tensor | None = None
    expr: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    hole: torch.Tensor | None = None
    clip_len: int = 1

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def plate(self) -> torch.Tensor:
        """The image to composite onto: ``context``, or ``target`` when reconstructing."""
        img = self.context if self.context is not None else self.target
        if img is None:
            raise ConfigError("frame batch has neither a context nor a target image to composite onto")
        return img

    def _map(self, fn) -> "FrameBatch":
        def opt(t):
            return None if t is None else fn(t)
        return replace(self, cond={k: fn(v) for k, v in self.cond.items()}, target=opt(self.target),
                       frames=fn(self.frames), context=opt(self.context), expr=opt(self.expr),
                       valid=opt(self.valid), hole=opt(self.hole))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "FrameBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "FrameBatch":
        return self._map(lambda t: t.pin_memory())

    def select(self, idx: Sequence[int] | slice) -> "FrameBatch":
        """Frames ``idx`` of this batch (as single frames: clip_len 1)."""
        sel = idx if isinstance(idx, slice) else torch.as_tensor(list(idx), dtype=torch.int64)
        b = self._map(lambda t: t[sel])
        return replace(b, clip_len=1)


@runtime_checkable
class FrameDataset(Protocol):
    """What the trainer and evaluator read. Indices are 0-based positions; ``frame_numbers``
    maps them to plate frame numbers (consecutive numbers = consecutive frames)."""

    def __len__(self) -> int: ...

    @property
    def frame_numbers(self) -> np.ndarray: ...

    @property
    def fingerprint(self) -> str: ...

    def get(self, indices: Sequence[int]) -> FrameBatch: ...


def split_holdout(n: int, fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """First (1 - fraction) of ``n`` frames for training, the last ``fraction`` held out.

    Holding out the *end* of the plate (not random frames) keeps neighbouring, near-identical
    frames out of the test set, so the figures measure generalisation, not memorisation.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"holdout fraction must be in [0, 1), got {fraction}")
    n_test = int(math.ceil(n * fraction)) if fraction > 0 else 0
    n_train = n - n_test
    if n_train < 1:
        raise ConfigError(f"holdout of {fraction:.0%} leaves no training frames out of {n}")
    return list(range(n_train)), list(range(n_train, n))


# ----------------------------------------------------------------------------- the codecs
@dataclass(frozen=True)
class Codec:
    """How one map is stored. kind:

    ``u8``: [lo, hi] -> 0..255; ``s8``/``s16``: [-s, s] -> +-127 / +-32767 (0 stays exactly 0,
    which off-face pixels rely on); ``u16``: [lo, hi] -> 0..65535; ``f16``/``f32``: as is;
    ``onehot8``: one-hot (C channels, all-zero allowed) -> uint8 id (0 = none);
    ``i16``: integer ids.
    """

    kind: str
    lo: float = 0.0
    hi: float = 1.0

    def dtype(self) -> np.dtype:
        return np.dtype({"u8": np.uint8, "s8": np.int8, "s16": np.int16, "u16": np.uint16,
                         "f16": np.float16, "f32": np.float32, "onehot8": np.uint8,
                         "i16": np.int16}[self.kind])

    def stored_channels(self, channels: int) -> int:
        return 1 if self.kind == "onehot8" else channels

    def encode(self, x: torch.Tensor) -> np.ndarray:
        """(B, C, H, W) float -> stored (B, C', H, W) numpy array."""
        x = x.detach().to("cpu", torch.float32)
        k = self.kind
        if k in ("u8", "u16"):
            top = 255 if k == "u8" else 65535
            q = ((x - self.lo) / (self.hi - self.lo)).clamp(0, 1) * top
            return q.round().numpy().astype(self.dtype())
        if k in ("s8", "s16"):
            top = 127 if k == "s8" else 32767
            return (x / self.hi).clamp(-1, 1).mul(top).round().numpy().astype(self.dtype())
        if k in ("f16", "f32", "i16"):
            return x.numpy().astype(self.dtype())
        if k == "onehot8":
            if x.shape[1] > 254:
                raise ConfigError("onehot8 codec holds at most 254 classes")
            any_on = x.amax(1, keepdim=True) > 0.5
            ids = torch.where(any_on, x.argmax(1, keepdim=True) + 1, torch.zeros_like(any_on, dtype=torch.int64))
            return ids.numpy().astype(np.uint8)
        raise ConfigError(f"unknown codec kind {k!r}")

    def decode(self, a: np.ndarray, channels: int) -> torch.Tensor:
        """Stored (B, C', H, W) -> float32 tensor (B, C, H, W)."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        k = self.kind
        if k in ("u8", "u16"):
            top = 255.0 if k == "u8" else 65535.0
            return t.to(torch.float32) / top * (self.hi - self.lo) + self.lo
        if k in ("s8", "s16"):
            top = 127.0 if k == "s8" else 32767.0
            return t.to(torch.float32) / top * self.hi
        if k == "onehot8":
            oh = torch.nn.functional.one_hot(t[:, 0].to(torch.int64), channels + 1)[..., 1:]
            return oh.permute(0, 3, 1, 2).to(torch.float32)
        return t.to(torch.float32)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "lo": self.lo, "hi": self.hi}


DEFAULT_CODECS: dict[str, Codec] = {
    "canonical": Codec("s16", -1.0, 1.0),
    "normal": Codec("s8", -1.0, 1.0),
    "depth": Codec("f16"),
    "depth_norm": Codec("f16"),
    "uv": Codec("u16", 0.0, 1.0),
    "mask_face": Codec("u8"),
    "mask_mouth": Codec("u8"),
    "region": Codec("onehot8"),
    "region_id": Codec("i16"),
}
_IMAGE = Codec("u8")


def _codec_for(key: str, codecs: dict[str, Codec] | None) -> Codec:
    if codecs and key in codecs:
        return codecs[key]
    return DEFAULT_CODECS.get(key, Codec("f16"))


# ------------------------------------------------------------------------------ the cache
def _image_to_chw_float(img: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) / (3, H, W) or float [0,1] (3, H, W) -> float (3, H, W)."""
    t = torch.as_tensor(img)
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        t = t.permute(2, 0, 1)
    if t.shape != (3, size, size):
        raise ConfigError(f"frame image must be {size}x{size} RGB, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.to(torch.float32) / 255.0
    return t.to(torch.float32)


class FrameCache:
    """Frames of one training clip, quantised; implements :class:`FrameDataset`.

    Build with :class:`FrameCacheWriter` (in memory with ``path=None``, or on disk), reopen a
    disk cache with :meth:`open`. Arrays: ``cond/<name>`` (N, C', S, S), ``image`` (N, 3, S, S)
    uint8, optional ``context`` / ``valid`` / ``hole`` / ``expr`` (N, E) float32.
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path | None = None) -> None:
        self._arrays = arrays
        self.meta = meta
        self.path = path
        self._codecs = {k: Codec(**v) for k, v in meta["codecs"].items()}
        self._frames = np.asarray(meta["frames"], dtype=np.int64)

    # -- FrameDataset
    def __len__(self) -> int:
        return int(self._frames.shape[0])

    @property
    def frame_numbers(self) -> np.ndarray:
        return self._frames

    @property
    def fingerprint(self) -> str:
        return str(self.meta["content_sha256"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def maps(self) -> dict[str, int]:
        return dict(self.meta["maps"])

    @property
    def expr_dim(self) -> int:
        return int(self.meta.get("expr_dim", 0))

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.meta.get("source", {}))

    def get(self, indices: Sequence[int]) -> FrameBatch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"frame index out of range 0..{len(self) - 1}")
        # Reading sorted unique rows from a memmap is sequential I/O; then scatter back.
        uniq, inv = np.unique(idx, return_inverse=True)
        inv_t = torch.from_numpy(inv)

        def read(name: str, codec: Codec, channels: int) -> torch.Tensor:
            return codec.decode(self._arrays[name][uniq], channels)[inv_t]

        cond = {k: read(f"cond/{k}", self._codecs[k], c) for k, c in self.meta["maps"].items()}
        opt = {}
        for name in ("context", "valid", "hole"):
            if name in self._arrays:
                opt[name] = read(name, _IMAGE, 3 if name == "context" else 1)
        expr = None
        if "expr" in self._arrays:
            expr = torch.from_numpy(np.ascontiguousarray(self._arrays["expr"][uniq]))[inv_t]
        return FrameBatch(cond=cond, target=read("image", _IMAGE, 3), frames=torch.from_numpy(self._frames[idx]),
                          expr=expr, **opt)

    # -- disk
    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = True) -> "FrameCache":
        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise MediaError(f"{path} is not a frame cache (no meta.json)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise MediaError(f"cannot read frame cache {meta_path}: {exc}") from None
        if meta.get("schema") != CACHE_SCHEMA:
            raise MediaError(f"{path} is not a frame cache (schema {meta.get('schema')!r})")
        if meta.get("schema_version") != CACHE_SCHEMA_VERSION:
            raise MediaError(f"frame cache {path} has schema version {meta.get('schema_version')}, "
                             f"this engine reads {CACHE_SCHEMA_VERSION}: rebuild it")
        arrays = {}
        n = len(meta["frames"])
        for name in meta["arrays"]:
            f = path / (name.replace("/", "__") + ".npy")
            try:
                a = np.load(f, mmap_mode="r" if mmap else None)
            except (OSError, ValueError) as exc:
                raise MediaError(f"frame cache array {f} is unreadable: {exc}") from None
            if a.shape[0] != n:
                raise MediaError(f"frame cache array {f} has {a.shape[0]} frames, meta says {n}")
            arrays[name] = a
        return cls(arrays, meta, path)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self._arrays.values()))


class FrameCacheWriter:
    """Fill a :class:`FrameCache` frame by frame (the tracker streams), then :meth:`close`.

    ``path=None`` keeps it in memory. On disk the arrays are written into a hidden temp
    folder next to ``path`` and the folder is renamed into place by ``close`` -- a killed
    build never leaves a cache that looks complete. ``maps`` gives each conditioning map's
    channel count; ``source`` records provenance (media/tracking hashes, crop settings) and
    becomes part of the cache's meta.
    """

    def __init__(self, path: str | os.PathLike | None, frames: Sequence[int], size: int, maps: dict[str, int], *,
                 expr_dim: int = 0, context: bool = False, valid: bool = False, hole: bool = False,
                 codecs: dict[str, Codec] | None = None, source: dict[str, Any] | None = None) -> None:
        frames = [int(f) for f in frames]
        if not frames:
            raise ConfigError("frame cache needs at least one frame")
        if len(set(frames)) != len(frames):
            raise ConfigError("frame cache frame numbers must be unique")
        self.path = None if path is None else Path(path)
        self.frames = frames
        self.size = int(size)
        self.maps = {k: int(c) for k, c in maps.items()}
        self.codecs = {k: _codec_for(k, codecs) for k in self.maps}
        self.expr_dim = int(expr_dim)
        self.source = dict(source or {})
        n, S = len(frames), self.size
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for k, c in self.maps.items():
            cd = self.codecs[k]
            shapes[f"cond/{k}"] = ((n, cd.stored_channels(c), S, S), cd.dtype())
        shapes["image"] = ((n, 3, S, S), np.dtype(np.uint8))
        for name, on, ch in (("context", context, 3), ("valid", valid, 1), ("hole", hole, 1)):
            if on:
                shapes[name] = ((n, ch, S, S), np.dtype(np.uint8))
        if self.expr_dim:
            shapes["expr"] = ((n, self.expr_dim), np.dtype(np.float32))
        self._tmp: Path | None = None
        self.arrays: dict[str, np.ndarray] = {}
        if self.path is None:
            self.arrays = {k: np.zeros(shp, dt) for k, (shp, dt) in shapes.items()}
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
            if self._tmp.exists():
                shutil.rmtree(self._tmp)
            self._tmp.mkdir()
            for k, (shp, dt) in shapes.items():
                self.arrays[k] = np.lib.format.open_memmap(self._tmp / (k.replace("/", "__") + ".npy"),
                                                           mode="w+", dtype=dt, shape=shp)
        self._written = np.zeros(n, dtype=bool)

    def put(self, index: int, cond: dict[str, torch.Tensor], image: torch.Tensor | np.ndarray, *,
            context: torch.Tensor | np.ndarray | None = None, expr: Sequence[float] | torch.Tensor | None = None,
            valid: torch.Tensor | None = None, hole: torch.Tensor | None = None) -> None:
        """Store frame ``index`` (0-based position in ``frames``). cond maps (C, S, S) or (1, C, S, S)."""
        S = self.size
        missing = [k for k in self.maps if k not in cond]
        if missing:
            raise ConfigError(f"frame {self.frames[index]}: conditioning map(s) {missing} missing")
        for k, c in self.maps.items():
            t = torch.as_tensor(cond[k])
            t = t[None] if t.dim() == 3 else t
            if tuple(t.shape) != (1, c, S, S):
                raise ConfigError(f"conditioning map {k!r} must be ({c}, {S}, {S}), got {tuple(t.shape[1:])}")
            self.arrays[f"cond/{k}"][index] = self.codecs[k].encode(t)[0]
        self.arrays["image"][index] = _IMAGE.encode(_image_to_chw_float(image, S)[None])[0]
        for name, val, ch in (("context", context, 3), ("valid", valid, 1), ("hole", hole, 1)):
            if name in self.arrays:
                if val is None:
                    raise ConfigError(f"frame cache was created with {name}=True: pass {name} for every frame")
                if ch == 3:
                    t = _image_to_chw_float(val, S)
                else:
                    t = torch.as_tensor(val, dtype=torch.float32).reshape(1, S, S)
                self.arrays[name][index] = _IMAGE.encode(t[None])[0]
        if self.expr_dim:
            if expr is None:
                raise ConfigError(f"frame cache has expr_dim={self.expr_dim}: pass expr for every frame")
            e = np.asarray(torch.as_tensor(expr, dtype=torch.float32).reshape(-1))
            if e.shape[0] != self.expr_dim:
                raise ConfigError(f"expr must have {self.expr_dim} values, got {e.shape[0]}")
            self.arrays["expr"][index] = e
        self._written[index] = True

    def abort(self) -> None:
        """Drop a partly built on-disk cache (its temp folder); the final path is untouched."""
        self.arrays = {}
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def close(self) -> FrameCache:
        if not self._written.all():
            missing = [self.frames[i] for i in np.flatnonzero(~self._written)[:5]]
            raise ConfigError(f"frame cache incomplete: frame(s) {missing} were never written")
        h = hashlib.sha256()
        for k in sorted(self.arrays):
            a = self.arrays[k]
            h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
            for i in range(0, a.shape[0], 64):  # chunks: bounded memory on a memmap
                h.update(np.ascontiguousarray(a[i:i + 64]).tobytes())
        h.update(json.dumps(self.frames).encode())
        meta = {
            "schema": CACHE_SCHEMA, "schema_version": CACHE_SCHEMA_VERSION, "engine_version": __version__,
            "frames": self.frames, "size": self.size, "maps": self.maps, "expr_dim": self.expr_dim,
            "codecs": {k: c.to_json() for k, c in self.codecs.items()},
            "arrays": sorted(self.arrays), "source": self.source, "content_sha256": h.hexdigest(),
        }
        if self.path is None:
            return FrameCache(self.arrays, meta)
        for a in self.arrays.values():
            a.flush()
        self.arrays = {}
        atomic_write_json(self._tmp / "meta.json", meta)
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
            os.replace(self.path, old)
        os.replace(self._tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return FrameCache.open(self.path)


# ----------------------------------------------------------------------------- sampling
class ClipSampler:
    """Batches of ``clips`` clips of ``clip_len`` consecutive frames, drawn from ``indices``.

    Stateless in the step: the batch of step ``s`` is a pure function of (seed, s), from a
    fresh permutation of all valid clip starts per epoch. So the "data loader position" of a
    checkpoint is just its step, a resumed run sees exactly the batches the uninterrupted
    run would have, and a prefetch thread can build step s+1 while step s trains.
    """

    def __init__(self, frame_numbers: Sequence[int], indices: Sequence[int], clip_len: int, clips: int,
                 seed: int) -> None:
        if clip_len < 1 or clips < 1:
            raise ConfigError(f"clip_len and clips per batch must be >= 1 (got {clip_len}, {clips})")
        fn = np.asarray(frame_numbers, dtype=np.int64)
        idx = sorted(int(i) for i in indices)
        pos = {i: k for k, i in enumerate(idx)}
        starts = []
        for i in idx:
            chain = [i + d for d in range(clip_len)]
            if all(j in pos and j < len(fn) and fn[j] == fn[i] + d for d, j in enumerate(chain)):
                starts.append(i)
        if not starts:
            raise ConfigError(f"no run of {clip_len} consecutive frames among the {len(idx)} training frames")
        self.starts = np.asarray(starts, dtype=np.int64)
        self.clip_len = clip_len
        self.clips = clips
        self.seed = int(seed)
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2 ** 63))
            self._perm = torch.randperm(len(self.starts), generator=g).numpy()
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> list[int]:
        M = len(self.starts)
        out = []
        for j in range(self.clips):
            p = step * self.clips + j
            s = int(self.starts[self._permutation(p // M)[p % M]])
            out.extend(range(s, s + self.clip_len))
        return out

    def state(self, step: int) -> dict[str, Any]:
        return {"kind": "epoch_permutation", "seed": self.seed, "num_starts": int(len(self.starts)),
                "clip_len": self.clip_len, "clips": self.clips, "position": int(step),
                "epoch": int(step * self.clips // len(self.starts))}


class Prefetcher:
    """Decode batches of steps [start, stop) in a background thread, ``depth`` ahead.

    Only decoding happens off the main thread; which frames make up a step is fixed by the
    (stateless) sampler, so prefetching changes nothing about the result.
    """

    def __init__(self, dataset: FrameDataset, sampler: ClipSampler, start: int, stop: int, depth: int = 2,
                 pin: bool = False) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()

        def put(item: tuple) -> bool:
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for s in range(start, stop):
                    b = dataset.get(sampler.batch(s))
                    b.clip_len = sampler.clip_len
                    if pin:
                        b = b.pin_memory()
                    if not put((s, b, None)):
                        return
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put((None, None, exc))

        self._t = threading.Thread(target=work, name="frame-prefetch", daemon=True)
        self._t.start()

    def next(self, step: int) -> FrameBatch:
        s, b, exc = self._q.get()
        if exc is not None:
            raise exc
        if s != step:
            raise RuntimeError(f"prefetcher out of step: got {s}, expected {step}")
        return b

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._t.join(timeout=5)
