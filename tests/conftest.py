"""Shared pytest fixtures (kept generic; area-specific helpers live in their own modules)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import torch

if TYPE_CHECKING:
    from slurm_cluster import LocalSlurmCluster

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (real test media beside the repository); skips when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared test media not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator["LocalSlurmCluster"]:
    """A real one-node SLURM cluster on localhost for the whole session (see
    tests/slurm_cluster.py); ``SLURM_CONF`` points at it while it runs. Skips with the
    reason when SLURM/munge/MariaDB are not installed or the cluster cannot start, unless
    ``PORTRAIT_REQUIRE_SLURM=1`` (CI with the packages installed), where that fails."""
    from slurm_cluster import LocalSlurmCluster, SkipReason

    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SkipReason as exc:
        if os.environ.get("PORTRAIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM test cluster did not start: {exc}", pytrace=False)
        pytest.skip(f"SLURM test cluster unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


class L1Metric(torch.nn.Module):
    """Stand-in for ST-LPIPS in unit tests (no weights needed): mean |x - y| over channels,
    with the metric's interface: (B,) distances, ``mask`` region means, ``spatial`` maps."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, y, mask=None, spatial=False):
        d = (x - y).abs().mean(1, keepdim=True)
        if spatial:
            return d
        m = torch.ones_like(d) if mask is None else mask
        return (d * m).sum((1, 2, 3)) / m.sum((1, 2, 3)).clamp_min(1e-8)


@pytest.fixture()
def l1_metric() -> L1Metric:
    return L1Metric()


@pytest.fixture(scope="session")
def astronaut_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames of the embedded demo plate (scikit-image's astronaut photo with a camera
    move, engine/demo.py) as an H.264 file: a real face without ../shared. 30 >= 25 usable
    frames, so the built-in face model learns the actor's identity from it."""
    from fractions import Fraction

    from engine.demo import demo_frames
    from engine.io import ReviewMovieWriter

    path = tmp_path_factory.mktemp("media") / "astronaut.mp4"
    with ReviewMovieWriter(path, Fraction(25), (256, 256), crf=12) as mov:
        for frame in demo_frames(30):
            mov.write(frame)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared, oversubscribed CPU, OpenMP barriers between 2 threads make small convolutions ~10x
    slower than 1 thread; no result depends on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
