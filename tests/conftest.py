"""Shared pytest fixtures (kept generic; area-specific helpers live in their own modules)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

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
