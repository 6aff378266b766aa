"""run_stages on a REAL SLURM cluster (tests/slurm_cluster.py: slurmctld, slurmd, slurmdbd,
munged, MariaDB on localhost, started once per session), through the project's own
executor: ExecutorConfig(kind="slurm") -> submitit's SlurmExecutor -> sbatch/srun/sacct.

Checked here: a stage graph runs in SLURM jobs and sacct accounts for each of them; stages
ready together go out as one job array; a failing stage raises StageError carrying the
remote traceback; a job that dies hard is reported; a preempted or requeued job resumes
without redoing finished items. Skips (with the reason) where the cluster cannot run.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import pytest

from engine.errors import StageError
from engine.pipeline import (ExecutorConfig, ItemStage, Stage, StageContext, StageItem, read_manifest,
                             run_stages)
from engine.util.atomic import atomic_write_text

# The jobs unpickle these stages on the node; tests/ is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# >= 2 min: submitit asks SLURM for USR2 90 s before the limit, and shorter limits would
# signal (and requeue) every job. No test job gets near it.
_TIME_MIN = 10


def _slurm(tmp_path: Path, **params: Any) -> ExecutorConfig:
    return ExecutorConfig(kind="slurm", folder=tmp_path / "submitit",
                          params={"time_min": _TIME_MIN, "job_name": "pe-test", **params})


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _job_env() -> str:
    return " ".join(f"{k}={os.environ.get(k, '-')}" for k in
                    ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME"))


class Concat(Stage):
    """out = concatenation of the inputs' text + [name]; logs pid and SLURM ids to ``runs``."""

    def __init__(self, name: str, srcs: dict[str, Path], dst: Path, runs: Path) -> None:
        self.name, self.srcs, self.dst, self.runs = name, srcs, Path(dst), Path(runs)

    def inputs(self) -> dict[str, Path]:
        return dict(self.srcs)

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        with self.runs.open("a") as fh:
            fh.write(f"{self.name} pid={os.getpid()} {_job_env()}\n")
        text = "".join(Path(p).read_text() for _k, p in sorted(self.srcs.items()))
        atomic_write_text(self.dst, text + f"[{self.name}]\n")


def _decode_frame(frame: int) -> None:
    raise ValueError(f"bad frame {frame}: no face found")


class Boom(Stage):
    name = "boom"

    def __init__(self, src: Path, dst: Path, hard: bool = False) -> None:
        self.src, self.dst, self.hard = src, dst, hard

    def inputs(self) -> dict[str, Path]:
        return {"src": self.src}

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        if self.hard:
            os._exit(17)  # a segfault/OOM-kill stand-in: no exception, no result pickle
        _decode_frame(1012)


class SlowFrames(ItemStage):
    """Frame items taking ``sleep_s`` each; every finished item is logged with its job id."""

    name = "render"
    item_unit = "frames"

    def __init__(self, out_dir: Path, log: Path, n: int, sleep_s: float) -> None:
        self.out_dir, self.log, self.n, self.sleep_s = Path(out_dir), Path(log), n, sleep_s

    def inputs(self) -> dict[str, Path]:
        return {}

    def params(self) -> dict:
        return {"n": self.n}

    def outputs(self) -> dict[str, Path]:
        return {"frames": self.out_dir}

    def items(self) -> list[StageItem]:
        return [StageItem(str(f), {"frame": self.out_dir / f"r.{f}.txt"}) for f in range(1001, 1001 + self.n)]

    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        time.sleep(self.sleep_s)
        atomic_write_text(item.outputs["frame"], item.key + "\n")
        with self.log.open("a") as fh:
            env = os.environ
            fh.write(f"{item.key} {env.get('SLURM_JOB_ID', '-')} {env.get('SLURM_RESTART_COUNT', '0')}\n")


def _wait_for(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------
def test_stage_graph_runs_as_slurm_jobs_with_an_array(slurm_cluster, tmp_path: Path) -> None:
    """a -> (b, c) -> d: b and c become ready together and go out as ONE job array."""
    runs = tmp_path / "runs.log"
    src = tmp_path / "src.txt"
    src.write_text("plate\n")
    out = tmp_path / "v001"
    a = Concat("a", {"src": src}, out / "a.txt", runs)
    b = Concat("b", {"a": out / "a.txt"}, out / "b.txt", runs)
    c = Concat("c", {"a": out / "a.txt"}, out / "c.txt", runs)
    d = Concat("d", {"b": out / "b.txt", "c": out / "c.txt"}, out / "d.txt", runs)
    stages, deps = [d, c, b, a], {"d": ["b", "c"], "b": ["a"], "c": ["a"]}
    cfg = _slurm(tmp_path, partition=slurm_cluster.partition, cpus_per_task=1, mem_gb=0.25)

    t0 = time.perf_counter()
    results = {r.name: r for r in run_stages(stages, cfg, deps=deps)}
    print(f"graph of 4 stages in 3 waves on SLURM: {time.perf_counter() - t0:.1f} s")
    assert {n: r.state for n, r in results.items()} == {"a": "ran", "b": "ran", "c": "ran", "d": "ran"}
    assert (out / "d.txt").read_text() == "plate\n[a]\n[b]\nplate\n[a]\n[c]\n[d]\n"

    # Each stage ran in a SLURM job on the node, never in this process.
    logged = {ln.split()[0]: dict(kv.split("=", 1) for kv in ln.split()[1:]) for ln in _lines(runs)}
    assert sorted(logged) == ["a", "b", "c", "d"]
    for name, env in logged.items():
        assert env["pid"] != str(os.getpid())
        assert env["SLURM_JOB_ID"] != "-" and env["SLURMD_NODENAME"] == "localhost", env
    # b and c: two tasks of one array; a and d: plain jobs.
    array_id = logged["b"]["SLURM_ARRAY_JOB_ID"]
    assert array_id != "-" and logged["c"]["SLURM_ARRAY_JOB_ID"] == array_id
    assert {logged["b"]["SLURM_ARRAY_TASK_ID"], logged["c"]["SLURM_ARRAY_TASK_ID"]} == {"0", "1"}
    assert logged["a"]["SLURM_ARRAY_JOB_ID"] == "-" and logged["d"]["SLURM_ARRAY_JOB_ID"] == "-"
    assert {results["b"].job_id, results["c"].job_id} == {f"{array_id}_0", f"{array_id}_1"}

    # The manifests name the job; sacct (slurmdbd) accounts for every one of them.
    for name, r in results.items():
        man = read_manifest(out / ".portrait" / f"{name}.json")
        assert man is not None and man["job_id"] == r.job_id and man["host"]
        assert r.logs["stderr"].startswith(str(cfg.folder))
    rows = {row["JobID"]: row for row in slurm_cluster.sacct([results["a"].job_id, array_id, results["d"].job_id],
                                                                 fields="JobID,JobName,State,ExitCode,Partition")}
    for jid in (results["a"].job_id, f"{array_id}_0", f"{array_id}_1", results["d"].job_id):
        assert jid in rows, (jid, rows)
        assert rows[jid]["State"] == "COMPLETED" and rows[jid]["ExitCode"] == "0:0", rows[jid]
        assert rows[jid]["JobName"] == "pe-test" and rows[jid]["Partition"] == slurm_cluster.partition

    # A rerun submits nothing: every stage is up to date on the submitting side.
    n_jobs = len(slurm_cluster.sacct())
    again = run_stages(stages, cfg, deps=deps)
    assert all(r.state == "skipped" for r in again)
    assert len(slurm_cluster.sacct()) == n_jobs and len(_lines(runs)) == 4


def test_failing_stage_raises_with_remote_traceback(slurm_cluster, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    after = Concat("after", {"o": tmp_path / "out" / "o.txt"}, tmp_path / "out" / "z.txt", tmp_path / "runs.log")
    with pytest.raises(StageError) as ei:
        run_stages([Boom(src, tmp_path / "out" / "o.txt"), after], _slurm(tmp_path))
    err = ei.value
    assert str(err) == "stage 'boom' failed: ValueError: bad frame 1012: no face found"
    tb = err.traceback_text
    assert "Traceback (most recent call last)" in tb and "in _decode_frame" in tb
    assert "ValueError: bad frame 1012: no face found" in tb
    # The job's own stderr log (written by srun on the node) holds the traceback too.
    stderr_log = Path(tb.split("stderr: ")[1].splitlines()[0])
    assert stderr_log.parent == tmp_path / "submitit" and "bad frame 1012" in stderr_log.read_text()
    assert not (tmp_path / "out" / "z.txt").exists()  # downstream never submitted
    jid = stderr_log.name.split("_")[0]
    [row] = slurm_cluster.sacct([jid])
    assert row["State"] == "COMPLETED"  # the job itself ended cleanly, reporting the failure


@pytest.mark.slow
def test_job_that_dies_hard_is_reported(slurm_cluster, tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    with pytest.raises(StageError) as ei:
        run_stages([Boom(src, tmp_path / "out" / "o.txt", hard=True)], _slurm(tmp_path))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("stage 'boom' failed: job ")
    assert "ended without a result" in msg
    jid = msg.split("job ")[1].split()[0]
    [row] = slurm_cluster.sacct([jid])
    assert row["State"] == "FAILED" and row["ExitCode"].startswith("17:"), row


def _run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test thread
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def _requeue_and_resume(slurm_cluster, tmp_path: Path, interrupt: Callable[[str], None]) -> tuple[list[str], str]:
    """Run a 10-frame stage, ``interrupt(job_id)`` once 3 frames are done, and let
    run_stages carry on: it must see the same job requeued and finishing."""
    n = 10
    log = tmp_path / "items.log"
    stage = SlowFrames(tmp_path / "v001" / "frames", log, n=n, sleep_s=1.0)
    cfg = _slurm(tmp_path, max_num_timeout=3)
    th, box = _run_in_thread(lambda: run_stages([stage], cfg))
    _wait_for(lambda: len(_lines(log)) >= 3 or not th.is_alive(), 90, "3 frames done")
    assert th.is_alive(), box
    [jid] = {ln.split()[1] for ln in _lines(log)}
    interrupt(jid)
    th.join(timeout=150)
    assert not th.is_alive(), "run_stages did not return after the requeue"
    assert "error" not in box, box.get("error")
    [result] = box["result"]
    assert result.state == "ran" and result.job_id == jid  # same SLURM job, requeued

    keys = [ln.split()[0] for ln in _lines(log)]
    assert sorted(set(keys)) == [str(f) for f in range(1001, 1001 + n)]
    # Finished frames are not redone; only the frame in flight when killed may be.
    assert len(keys) <= n + 1, keys
    restarts = {ln.split()[0]: int(ln.split()[2]) for ln in _lines(log)}
    assert restarts["1001"] == 0 and restarts[str(1000 + n)] >= 1, restarts  # resumed in a requeued run
    assert stage.status() == "done"
    man = read_manifest(stage.manifest_path())
    assert man is not None and man["items"] == n and man["job_id"] == jid

    rows = slurm_cluster.sacct([jid], duplicates=True)
    states = [r["State"] for r in rows if r["JobID"] == jid]
    assert states[-1] == "COMPLETED" and len(states) >= 2, rows  # the killed run + the resumed one
    logs = Path(result.logs["stderr"]).read_text() + Path(result.logs["stdout"]).read_text()
    return states, logs


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    """Preemption as SLURM delivers it to submitit (what submitit's own Job._interrupt()
    sends): SIGTERM then USR2 -> StageJob.checkpoint -> scontrol requeue by the job itself."""
    def preempt(jid: str) -> None:
        slurm_cluster.run(["scancel", jid, "--signal", "SIGTERM"])
        slurm_cluster.run(["scancel", jid, "--signal", "USR2"])

    t0 = time.perf_counter()
    states, logs = _requeue_and_resume(slurm_cluster, tmp_path, preempt)
    print(f"preempt + requeue + resume: {time.perf_counter() - t0:.1f} s; sacct states {states}")
    assert "checkpoint render: requeued; finished work on disk will be kept" in logs, logs
    assert "resume render: 3 of 10 frames already done" in logs or "of 10 frames already done" in logs, logs
    assert "REQUEUED" in states


@pytest.mark.slow
def test_requeued_by_admin_resumes(slurm_cluster, tmp_path: Path) -> None:
    """``scontrol requeue JOBID`` from outside (an admin, a node drain): the job is killed
    without warning and started again from submitit's pickle; the ledger makes it resume."""
    t0 = time.perf_counter()
    states, logs = _requeue_and_resume(slurm_cluster, tmp_path,
                                       lambda jid: slurm_cluster.run(["scontrol", "requeue", jid]))
    print(f"scontrol requeue + resume: {time.perf_counter() - t0:.1f} s; sacct states {states}")
    assert "frames already done" in logs, logs
    assert "REQUEUED" in states


@pytest.mark.slow
def test_demo_shot_runs_on_slurm_from_its_yaml(slurm_cluster, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    """`portrait run SHOT.yaml` with the shot's own ``executor: {kind: slurm, slurm: ...}``
    section: the real render -> review -> qc stages run as SLURM jobs on the node."""
    from engine.demo import build_demo
    from tools.cli import main

    # A smoke-sized actor model: `run` trains it on the node before the render.
    yaml_path = build_demo(tmp_path / "demo", frames=6, executor="slurm", preset="tiny", steps=4)
    text = yaml_path.read_text()
    assert "executor: {kind: slurm}" in text
    # The shot defaults (1 GPU, 8 cores, 64 GB) fit no test node: ask for what it has.
    yaml_path.write_text(text.replace(
        "executor: {kind: slurm}",
        "executor:\n  kind: slurm\n  slurm: {partition: %s, time_min: %d, gpus_per_node: 0, cpus_per_task: 1,"
        " mem_gb: 1, array_parallelism: 2, setup: [\"export PORTRAIT_SETUP_RAN=1\"]}"
        % (slurm_cluster.partition, _TIME_MIN)))
    t0 = time.perf_counter()
    assert main(["run", str(yaml_path)]) == 0
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\ndemo shot (6 frames) on SLURM: {wall:.1f} s")
    base = tmp_path / "demo" / "out" / "demo" / "sq010" / "sh010"
    assert len(list((base / "render" / "v001").glob("*.exr"))) == 6, out
    job_ids = []
    for task in ("render", "review", "qc"):
        mans = [read_manifest(p) for p in (base / task / "v001" / ".portrait").glob("*.json")]
        mans = [m for m in mans if m is not None]
        assert mans, (task, out)
        for man in mans:
            assert man["job_id"] and man["host"], man
            job_ids.append(man["job_id"])
    rows = {r["JobID"]: r for r in slurm_cluster.sacct(job_ids)}
    assert set(job_ids) <= set(rows) and all(rows[j]["State"] == "COMPLETED" for j in job_ids), rows
    # the YAML's setup lines ran in the batch script before the stage
    sbatch = sorted((base / "render" / "v001" / ".portrait").rglob("*_submission.sh"))
    assert sbatch and "export PORTRAIT_SETUP_RAN=1" in sbatch[0].read_text()
