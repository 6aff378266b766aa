"""jobs/: the checkpointable stage job really requeues and resumes (submitit LocalExecutor
timeout -> USR2 -> checkpoint -> requeue), and a submitted stage can be rerun by hand."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from engine.pipeline import ExecutorConfig, ItemStage, StageContext, StageItem, read_manifest
from engine.pipeline.runner import StageJob, StageResult
from engine.util.atomic import atomic_write_text
from jobs.stage_job import main as stage_job_main
from jobs.stage_job import submit_stage

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class SlowFrames(ItemStage):
    name = "slow"
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
        return [StageItem(str(f), {"frame": self.out_dir / f"{f}.txt"}) for f in range(1001, 1001 + self.n)]

    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        time.sleep(self.sleep_s)
        atomic_write_text(item.outputs["frame"], item.key + "\n")
        with self.log.open("a") as fh:
            fh.write(item.key + "\n")


def test_preempted_job_is_requeued_and_resumes(tmp_path: Path) -> None:
    # A 6 s wall clock with the warning signal 3 s before it: the 10 x 0.5 s stage is
    # signalled at least once, checkpoints (resubmits itself) and the requeued job resumes.
    cfg = ExecutorConfig(kind="local", folder=tmp_path / "sub",
                         params={"time_min": 0.1, "signal_delay_s": 3, "max_num_timeout": 6})
    stage = SlowFrames(tmp_path / "v001" / "frames", tmp_path / "items.log", n=10, sleep_s=0.5)
    job = submit_stage(stage, cfg)
    result = job.result()
    assert isinstance(result, StageResult) and result.state == "ran", result
    logs = (job.stdout() or "") + (job.stderr() or "")
    assert "Requeued job" in logs, logs
    done = (tmp_path / "items.log").read_text().splitlines()
    assert sorted(set(done)) == [str(f) for f in range(1001, 1011)]
    # Only an item caught between its write and its ledger record could be done twice.
    assert len(done) <= 11, done
    assert stage.status() == "done"
    man = read_manifest(stage.manifest_path())
    assert man is not None and man["items"] == 10


def test_stage_job_checkpoint_resubmits_itself(tmp_path: Path) -> None:
    stage = SlowFrames(tmp_path / "f", tmp_path / "l", n=1, sleep_s=0)
    job = StageJob()
    delayed = job.checkpoint(stage)
    assert delayed.function is job and delayed.args == (stage,)


def test_rerun_a_submitted_stage_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stage = SlowFrames(tmp_path / "v001" / "frames", tmp_path / "items.log", n=2, sleep_s=0)
    job = submit_stage(stage, ExecutorConfig(kind="debug", folder=tmp_path / "sub"))
    assert job.result().state == "ran"
    # Debug jobs keep no pickle; write one the way submitit does for farm jobs.
    pkl = tmp_path / "123_submitted.pkl"
    job.submission().dump(pkl)
    assert stage_job_main([str(pkl)]) == 0
    assert "slow: skipped (up to date)" in capsys.readouterr().out
    assert stage_job_main([str(pkl), "--force"]) == 0
    assert "slow: ran (forced)" in capsys.readouterr().out
    assert stage_job_main([str(tmp_path / "nope.pkl")]) == 2
