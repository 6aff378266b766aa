"""The test SLURM cluster itself (tests/slurm_cluster.py): it is what the SLURM tests
trust, so its own contract is checked: private config and ports, SLURM_CONF exported
while up and restored after, daemons gone after stop, a clear skip reason when it cannot run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import slurm_cluster as sc
from slurm_cluster import LocalSlurmCluster, SkipReason


def test_missing_binaries_give_a_skip_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sc, "_which", lambda name: None if name in ("slurmd", "munged") else "/bin/true")
    before = os.environ.get("SLURM_CONF")
    with pytest.raises(SkipReason, match=r"needs munged, slurmd \(run scripts/install_system_deps.sh"):
        LocalSlurmCluster(tmp_path).start()
    assert os.environ.get("SLURM_CONF") == before
    assert not any(tmp_path.iterdir())  # nothing written, nothing started


def test_session_cluster_is_private_and_idle(slurm_cluster: LocalSlurmCluster) -> None:
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.slurm_conf)
    assert slurm_cluster.slurm_conf.is_relative_to(slurm_cluster.root)
    config = slurm_cluster.run(["scontrol", "show", "config"])
    assert f"ClusterName             = {slurm_cluster.cluster_name}" in config
    assert f"SlurmctldPort           = {slurm_cluster.ports['slurmctld']}" in config
    assert "cred_expire=10" in config and str(slurm_cluster.munge_socket) in config
    assert slurm_cluster.run(["sinfo", "--noheader", "--Node", "--format=%N %T"]).split() == ["localhost", "idle"]
    assert slurm_cluster.started_s is not None and slurm_cluster.started_s < 60


@pytest.mark.slow
def test_second_cluster_starts_and_stops_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster beside the session's one (own ports, key, socket, database) runs a job,
    and stop() ends every daemon and restores SLURM_CONF."""
    if sc.missing_binaries() or os.geteuid() != 0:
        pytest.skip("SLURM/munge/MariaDB binaries or root missing")
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/outer.conf")
    with LocalSlurmCluster(tmp_path / "c2") as cluster:
        pids = [p.pid for _n, p in cluster._procs]
        assert len(pids) == 5 and all(Path(f"/proc/{pid}").exists() for pid in pids)
        assert os.environ["SLURM_CONF"] == str(cluster.slurm_conf)
        out = tmp_path / "job.out"
        jid = cluster.run(["sbatch", "--parsable", "--wait", f"--output={out}", "--wrap", "echo $SLURM_JOB_ID"],
                          timeout=60).strip()
        assert out.read_text().strip() == jid
        [row] = cluster.sacct([jid])
        assert row["State"] == "COMPLETED"
    assert os.environ["SLURM_CONF"] == "/nonexistent/outer.conf"
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z", pid
    assert not (tmp_path / "c2" / "mariadb").exists()
