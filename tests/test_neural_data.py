"""Frame cache (codecs, disk round trip, provenance), clip sampler, hold-out split."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, MediaError
from engine.neural.data import ClipSampler, Codec, FrameCache, FrameCacheWriter, Prefetcher, split_holdout
from engine.neural.synthetic import SYNTH_MAPS, synthetic_cache, synthetic_frame


def test_codecs_round_trip_within_quantisation_and_keep_zero_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 5, generator=g) * 2 - 1
    x[0, :, 0, 0] = 0
    for kind, tol in (("s8", 0.5 / 127 + 1e-6), ("s16", 0.5 / 32767 + 1e-7)):
        c = Codec(kind, -1, 1)
        y = c.decode(c.encode(x), 3)
        assert (y - x).abs().max() <= tol
        assert torch.all(y[0, :, 0, 0] == 0)
    u = torch.rand(2, 2, 5, 5, generator=g)
    c = Codec("u16", 0, 1)
    assert (c.decode(c.encode(u), 2) - u).abs().max() <= 0.5 / 65535 + 1e-7
    oh = torch.nn.functional.one_hot(torch.randint(0, 8, (2, 5, 5), generator=g), 8).permute(0, 3, 1, 2).float()
    oh[:, :, 0, 0] = 0  # background: no class
    c = Codec("onehot8")
    enc = c.encode(oh)
    assert enc.dtype == np.uint8 and enc.shape == (2, 1, 5, 5)
    assert torch.equal(c.decode(enc, 8), oh)


def test_cache_get_matches_source_frames():
    ds = synthetic_cache(6, 32)
    assert len(ds) == 6 and list(ds.frame_numbers) == list(range(1001, 1007))
    b = ds.get([4, 1, 4])
    assert b.frames.tolist() == [1005, 1002, 1005]
    maps, img, expr = synthetic_frame(4, 32)
    assert (b.target[0] - img).abs().max() <= 0.5 / 255 + 1e-6
    for k, v in maps.items():
        tol = {"canonical": 1e-4, "normal": 5e-3, "depth": 3e-3, "depth_norm": 1e-3, "uv": 1e-4}.get(k, 0)
        assert (b.cond[k][0] - v[0]).abs().max() <= tol, k
    assert torch.allclose(b.expr[0], expr)
    assert torch.equal(b.cond["uv"][0], b.cond["uv"][2])


def test_disk_cache_round_trip_and_atomic_build(tmp_path):
    path = tmp_path / "cache"
    mem = synthetic_cache(5, 32)
    disk = synthetic_cache(5, 32, path)
    assert disk.fingerprint == mem.fingerprint and disk.path == path
    reopened = FrameCache.open(path)
    a, b = mem.get([0, 3]), reopened.get([0, 3])
    assert torch.equal(a.target, b.target) and all(torch.equal(a.cond[k], b.cond[k]) for k in a.cond)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left
    # An unfinished build leaves nothing that opens as a cache.
    w = FrameCacheWriter(tmp_path / "partial", [1, 2], 32, SYNTH_MAPS)
    maps, img, _ = synthetic_frame(0, 32)
    w.put(0, maps, img)
    with pytest.raises(ConfigError, match="incomplete"):
        w.close()
    with pytest.raises(MediaError, match="not a frame cache"):
        FrameCache.open(tmp_path / "partial")


def test_writer_checks_shapes_and_required_inputs():
    w = FrameCacheWriter(None, [1, 2], 32, SYNTH_MAPS, expr_dim=2, context=True)
    maps, img, expr = synthetic_frame(0, 32)
    with pytest.raises(ConfigError, match="context"):
        w.put(0, maps, img, expr=expr)
    with pytest.raises(ConfigError, match="missing"):
        w.put(0, {k: v for k, v in maps.items() if k != "uv"}, img, context=img, expr=expr)
    with pytest.raises(ConfigError, match="32x32"):
        w.put(0, maps, img[:, :16], context=img, expr=expr)
    bad = dict(maps, uv=maps["uv"][:, :1])
    with pytest.raises(ConfigError, match="uv"):
        w.put(0, bad, img, context=img, expr=expr)
    with pytest.raises(ConfigError, match="unique"):
        FrameCacheWriter(None, [1, 1], 32, SYNTH_MAPS)
    # uint8 HxWx3 images are accepted as decoded from video.
    u8 = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    w.put(0, maps, u8, context=u8, expr=expr)
    w.put(1, maps, img, context=img, expr=expr)
    ds = w.close()
    b = ds.get([0, 1])
    assert torch.allclose(b.target[0], b.target[1], atol=1 / 255) and b.context is not None


def test_sampler_is_stateless_consecutive_and_respects_gaps():
    frames = list(range(1001, 1011)) + list(range(1020, 1025))  # a gap (e.g. no-face frames)
    s = ClipSampler(frames, range(15), clip_len=2, clips=3, seed=7)
    for step in (0, 5, 11):
        b = s.batch(step)
        assert b == ClipSampler(frames, range(15), 2, 3, seed=7).batch(step)  # pure function of step
        for j in range(0, len(b), 2):
            assert frames[b[j + 1]] == frames[b[j]] + 1  # never across the gap
    assert 9 not in s.starts  # 1010 -> 1020 is not consecutive
    # One epoch visits every clip start exactly once.
    M = len(s.starts)
    seen = [s.batch(k)[::2] for k in range(M // 3)]
    flat = [x for b in seen for x in b]
    assert len(set(flat)) == len(flat)
    assert ClipSampler(frames, range(15), 2, 3, seed=8).batch(0) != s.batch(0) or M < 3
    with pytest.raises(ConfigError, match="consecutive"):
        ClipSampler([1, 3, 5], range(3), clip_len=2, clips=1, seed=0)


def test_prefetcher_yields_the_sampler_batches():
    ds = synthetic_cache(8, 32)
    s = ClipSampler(ds.frame_numbers, range(8), 2, 2, seed=0)
    pre = Prefetcher(ds, s, start=3, stop=6, depth=2)
    try:
        for step in range(3, 6):
            b = pre.next(step)
            assert b.frames.tolist() == [int(ds.frame_numbers[i]) for i in s.batch(step)] and b.clip_len == 2
    finally:
        pre.close()


def test_split_holdout_keeps_the_end():
    train, test = split_holdout(100, 0.1)
    assert train == list(range(90)) and test == list(range(90, 100))
    train, test = split_holdout(15, 0.1)
    assert len(test) == 2 and train[-1] == 12
    with pytest.raises(ConfigError):
        split_holdout(1, 0.5)
