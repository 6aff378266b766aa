"""run_stages through REAL submitit executors (LocalExecutor: a separate worker process;
DebugExecutor: in-process), as submitit's own tests do. No SLURM here: its parameter
mapping is checked against the sbatch file submitit would write, with a stand-in srun."""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from engine.errors import ConfigError, OutputExistsError, StageError
from engine.pipeline import (ExecutorConfig, ItemStage, Stage, StageContext, StageItem, make_executor,
                             read_manifest, read_progress, run_stages, valid_params)
from engine.pipeline.versions import DEFAULT_TEMPLATE, allocate_version
from engine.util.atomic import atomic_write_text

# Local workers unpickle the stages; this test module is not importable there (tests/ is
# not a package), so ship its classes by value -- what cloudpickle does for __main__.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LOCAL = ExecutorConfig(kind="local")
DEBUG = ExecutorConfig(kind="debug")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class Concat(Stage):
    """out = concatenation of the inputs' text + a tag; logs each run to ``runs``."""

    def __init__(self, name: str, srcs: dict[str, Path], dst: Path, runs: Path, tag: str = "") -> None:
        self.name, self.srcs, self.dst, self.runs, self.tag = name, srcs, Path(dst), Path(runs), tag

    def inputs(self) -> dict[str, Path]:
        return dict(self.srcs)

    def params(self) -> dict:
        return {"tag": self.tag}

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        with self.runs.open("a") as fh:
            fh.write(f"{self.name} pid={os.getpid()}\n")
        text = "".join(Path(p).read_text() for _k, p in sorted(self.srcs.items()))
        atomic_write_text(self.dst, text + f"[{self.name}{self.tag}]\n")


class Chunks(ItemStage):
    """Frame items; ``die_at`` (not a param: test control only) os._exit()s on that frame."""

    name = "render"
    item_unit = "frames"

    def __init__(self, src: Path, out_dir: Path, log: Path, n: int = 8, die_at: int | None = None,
                 sleep_s: float = 0.0) -> None:
        self.src, self.out_dir, self.log, self.n = Path(src), Path(out_dir), Path(log), n
        self.die_at, self.sleep_s = die_at, sleep_s

    def inputs(self) -> dict[str, Path]:
        return {"src": self.src}

    def params(self) -> dict:
        return {"n": self.n}

    def outputs(self) -> dict[str, Path]:
        return {"frames": self.out_dir}

    def items(self) -> list[StageItem]:
        return [StageItem(f"{f}", {"frame": self.out_dir / f"r.{f}.txt"}, {"frame": f})
                for f in range(1001, 1001 + self.n)]

    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        if item.meta["frame"] == self.die_at:
            os._exit(17)  # a hard kill: no exception, no cleanup, no result pickle
        if self.sleep_s:
            time.sleep(self.sleep_s)
        atomic_write_text(item.outputs["frame"], f"{self.src.read_text().strip()}:{item.meta['frame']}\n")
        with self.log.open("a") as fh:
            fh.write(item.key + "\n")


def _decode_frame(frame: int) -> None:
    raise ValueError(f"bad frame {frame}: no face found")


class Boom(Stage):
    name = "boom"

    def __init__(self, src: Path, dst: Path) -> None:
        self.src, self.dst = src, dst

    def inputs(self) -> dict[str, Path]:
        return {"src": self.src}

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        _decode_frame(1012)


def _diamond(root: Path, runs: Path) -> tuple[list[Stage], dict[str, list[str]]]:
    src = root / "src.txt"
    src.write_text("plate\n")
    out = root / "v001"
    a = Concat("a", {"src": src}, out / "a.txt", runs)
    b = Concat("b", {"a": out / "a.txt"}, out / "b.txt", runs)
    c = Concat("c", {"a": out / "a.txt"}, out / "c.txt", runs, tag="!")
    d = Concat("d", {"b": out / "b.txt", "c": out / "c.txt"}, out / "d.txt", runs)
    return [d, c, b, a], {"d": ["b", "c"], "b": ["a"], "c": ["a"]}


# ------------------------------------------------------------------------------------------
def test_dag_on_local_executor_then_rerun_skips_without_submitting(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    runs = tmp_path / "runs.log"
    stages, deps = _diamond(tmp_path, runs)
    folder = tmp_path / "submitit"
    cfg = ExecutorConfig(kind="local", folder=folder, params={"max_parallel": 2})
    results = run_stages(stages, cfg, deps=deps)
    assert [r.name for r in results] == ["d", "c", "b", "a"] and all(r.state == "ran" for r in results)
    assert (tmp_path / "v001/d.txt").read_text() == "plate\n[a]\n[b]\nplate\n[a]\n[c!]\n[d]\n"
    pids = {ln.split("pid=")[1] for ln in _lines(runs)}
    assert str(os.getpid()) not in pids  # really ran in worker processes
    man = read_manifest(tmp_path / "v001/.portrait/d.json")
    assert man is not None and man["job_id"] and man["host"]
    assert results[0].logs["stderr"].startswith(str(folder))

    n_pickles = len(list(folder.rglob("*_submitted.pkl")))
    with caplog.at_level(logging.INFO, logger="portrait.pipeline"):
        again = run_stages(stages, cfg, deps=deps)
    assert all(r.state == "skipped" for r in again)
    for name in "abcd":
        assert f"skip {name}: up to date" in caplog.text
    assert len(list(folder.rglob("*_submitted.pkl"))) == n_pickles  # nothing submitted
    assert len(_lines(runs)) == 4

    # A changed param in the middle reruns it; d reruns because its input changed; a, b skip.
    stages[1].tag = "?"
    third = {r.name: r.state for r in run_stages(stages, cfg, deps=deps)}
    assert third == {"a": "skipped", "b": "skipped", "c": "ran", "d": "ran"}


def test_debug_and_local_give_identical_outputs(tmp_path: Path) -> None:
    hashes = {}
    for cfg in (DEBUG, LOCAL):
        root = tmp_path / cfg.kind
        root.mkdir()
        stages, deps = _diamond(root, root / "runs.log")
        chunks = Chunks(root / "v001/d.txt", root / "v001/frames", root / "items.log", n=3)
        run_stages([*stages, chunks], cfg, deps={**deps, "render": ["d"]})
        hashes[cfg.kind] = {}
        for name in ("a", "b", "c", "d", "render"):
            man = read_manifest(root / f"v001/.portrait/{name}.json")
            assert man is not None
            hashes[cfg.kind][name] = {k: v["sha256"] for k, v in man["outputs"].items()}
    assert hashes["debug"] == hashes["local"]


def test_killed_local_job_resumes_without_redoing_items(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("take2\n")
    out, log = tmp_path / "v001" / "frames", tmp_path / "items.log"
    with pytest.raises(StageError) as ei:
        run_stages([Chunks(src, out, log, die_at=1004)], LOCAL)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("stage 'render' failed: job ") and "ended without a result" in msg
    assert "logs:" in ei.value.traceback_text
    assert _lines(log) == ["1001", "1002", "1003"]
    stage = Chunks(src, out, log)
    assert stage.status() == "missing"
    prog = read_progress(stage.progress_path())
    # died mid-way: the (throttled) progress file still says running
    assert prog is not None and prog["done"] <= 3 and prog["state"] == "running"

    [res] = run_stages([stage], LOCAL)
    assert res.state == "ran"
    assert _lines(log) == [str(f) for f in range(1001, 1009)]  # 1001-1003 not redone
    assert sorted(p.name for p in out.iterdir()) == [f"r.{f}.txt" for f in range(1001, 1009)]
    assert read_progress(stage.progress_path())["done"] == 8
    assert stage.status() == "done"


@pytest.mark.parametrize("cfg", [LOCAL, DEBUG], ids=["local", "debug"])
def test_failure_carries_remote_traceback(tmp_path: Path, cfg: ExecutorConfig) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    with pytest.raises(StageError) as ei:
        run_stages([Boom(src, tmp_path / "out" / "o.txt")], cfg)
    err = ei.value
    assert str(err) == "stage 'boom' failed: ValueError: bad frame 1012: no face found"
    tb = err.traceback_text
    assert "Traceback (most recent call last)" in tb
    assert "in _decode_frame" in tb and 'raise ValueError(f"bad frame {frame}: no face found")' in tb
    assert "ValueError: bad frame 1012: no face found" in tb
    assert "stderr:" in tb and "stdout:" in tb
    if cfg.kind == "local":  # the worker's log file has it too
        stderr_log = Path(tb.split("stderr: ")[1].splitlines()[0])
        assert "bad frame 1012" in stderr_log.read_text()


def test_failure_stops_downstream(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("x")
    boom = Boom(src, tmp_path / "out" / "o.txt")
    after = Concat("after", {"o": tmp_path / "out" / "o.txt"}, tmp_path / "out" / "z.txt", tmp_path / "r")
    with pytest.raises(StageError, match="stage 'boom' failed"):
        run_stages([boom, after], DEBUG)
    assert not (tmp_path / "out" / "z.txt").exists()


def test_missing_input_fails_before_submitting(tmp_path: Path) -> None:
    st = Concat("a", {"src": tmp_path / "missing.txt"}, tmp_path / "o" / "a.txt", tmp_path / "r")
    with pytest.raises(StageError, match=r"^stage 'a' cannot run: input 'src' not found: .*missing.txt$"):
        run_stages([st], ExecutorConfig(kind="local", folder=tmp_path / "sub"))
    assert not (tmp_path / "sub").exists()


def test_complete_version_is_never_written_into(tmp_path: Path) -> None:
    fields = {"root": str(tmp_path), "show": "S", "sequence": "q", "shot": "s1", "task": "t"}
    v = allocate_version(DEFAULT_TEMPLATE, fields, config_hash="c" * 64)
    src = tmp_path / "src.txt"
    src.write_text("x\n")
    st = Concat("a", {"src": src}, v.path / "a.txt", tmp_path / "r")
    run_stages([st], DEBUG, version=v)
    v.mark_complete()
    v.release()
    again = allocate_version(DEFAULT_TEMPLATE, fields, config_hash="c" * 64, version=1)
    assert [r.state for r in run_stages([st], DEBUG, version=again)] == ["skipped"]  # no-op resume
    (v.path / "a.txt").unlink()
    with pytest.raises(OutputExistsError, match="v001 is complete and stage 'a' is not up to date"):
        run_stages([st], DEBUG, version=again)


def test_dag_errors(tmp_path: Path) -> None:
    a = Concat("a", {}, tmp_path / "a", tmp_path / "r")
    b = Concat("b", {}, tmp_path / "b", tmp_path / "r")
    with pytest.raises(ValueError, match="cycle"):
        run_stages([a, b], DEBUG, deps={"a": ["b"], "b": ["a"]})
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages([a], DEBUG, deps={"a": ["zz"]})
    with pytest.raises(ValueError, match="duplicate"):
        run_stages([a, a], DEBUG)


def test_unpicklable_stage_is_reported(tmp_path: Path) -> None:
    import threading
    st = Concat("a", {}, tmp_path / "o" / "a", tmp_path / "r")
    st.lock = threading.Lock()  # the kind of thing (models, handles) a stage must not hold
    with pytest.raises(StageError, match="stage 'a' cannot be sent to a worker"):
        run_stages([st], DEBUG)


# ---- configuration ------------------------------------------------------------------------
def test_unknown_params_list_valid_ones() -> None:
    with pytest.raises(ConfigError) as ei:
        ExecutorConfig(kind="slurm", params={"gpus": 1, "partition": "gpu"})
    msg = str(ei.value)
    assert "\n" not in msg and "gpus" in msg
    for valid in ("partition", "time_min", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism"):
        assert valid in msg
    with pytest.raises(ConfigError, match="valid: gpus_per_node, max_num_timeout, max_parallel, signal_delay_s, time_min"):
        ExecutorConfig(kind="local", params={"partition": "gpu"})
    with pytest.raises(ConfigError, match=r"valid: \(none\)"):
        ExecutorConfig(kind="debug", params={"time_min": 5})
    with pytest.raises(ConfigError, match="valid kinds: local, debug, slurm"):
        ExecutorConfig(kind="lsf")
    with pytest.raises(ConfigError, match="gpus_per_node must be int"):
        ExecutorConfig(kind="slurm", params={"gpus_per_node": "1"})
    with pytest.raises(ConfigError, match="max_parallel must be >= 1"):
        ExecutorConfig(kind="local", params={"max_parallel": 0})
    assert set(valid_params("slurm")) >= {"partition", "time_min", "array_parallelism"}


def test_slurm_params_reach_the_sbatch_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ExecutorConfig(kind="slurm", params={"partition": "gpu", "time_min": 90, "gpus_per_node": 1,
                                                "cpus_per_task": 8, "mem_gb": 32, "array_parallelism": 4,
                                                "setup": ["module load cuda"]})
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="SLURM is not available"):
        make_executor(cfg, tmp_path / "sub")
    # submitit only looks for an srun binary to decide SLURM is there.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    ex = make_executor(cfg, tmp_path / "sub")
    sbatch = ex._executor._make_submission_file_text("python -m x", "uid")
    for flag in ("--partition=gpu", "--time=90", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB"):
        assert f"#SBATCH {flag}" in sbatch, sbatch
    assert "module load cuda" in sbatch
    assert ex._executor.parameters["array_parallelism"] == 4


def test_local_workers_keep_this_process_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    ex = make_executor(LOCAL, tmp_path / "sub")
    assert ex.parameters["visible_gpus"] == [2, 3] and ex.parameters["gpus_per_node"] == 2
    assert ex.parameters["timeout_min"] >= 24 * 60  # not submitit's 2-minute default
    ex = make_executor(ExecutorConfig(kind="local", params={"gpus_per_node": 0}), tmp_path / "sub")
    assert ex.parameters["gpus_per_node"] == 0


def test_config_from_shot_yaml_mapping(tmp_path: Path) -> None:
    cfg = ExecutorConfig.from_mapping({"kind": "slurm", "folder": str(tmp_path), "partition": "gpu",
                                       "time_min": 60})
    assert cfg.kind == "slurm" and cfg.folder == tmp_path
    assert cfg.params == {"partition": "gpu", "time_min": 60}
    assert ExecutorConfig.from_mapping(None).kind == "local"
    with pytest.raises(ConfigError, match="unknown slurm executor parameter"):
        ExecutorConfig.from_mapping({"kind": "slurm", "partiton": "gpu"})


def test_stage_class_not_importable_on_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic farm failure: the worker cannot import the stage's module. submitit
    reports it as a failed job (the job function never ran); the message still names it."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "ghoststage_mod.py").write_text(
        "from pathlib import Path\n"
        "from engine.pipeline import Stage\n"
        "class Ghost(Stage):\n"
        "    name = 'ghost'\n"
        "    def __init__(self, out):\n"
        "        self.out = out\n"
        "    def inputs(self):\n"
        "        return {}\n"
        "    def outputs(self):\n"
        "        return {'out': self.out}\n"
        "    def run(self, ctx):\n"
        "        self.out.write_text('x')\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import ghoststage_mod  # noqa: PLC0415 -- importable here only
    with pytest.raises(StageError) as ei:
        run_stages([ghoststage_mod.Ghost(tmp_path / "o" / "g.txt")], LOCAL)
    assert str(ei.value) == "stage 'ghost' failed: ModuleNotFoundError: No module named 'ghoststage_mod'"
    assert "Traceback" in ei.value.traceback_text
