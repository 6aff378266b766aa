"""Stage caching: skip when up to date, rerun on changed input/param/output, item resume."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import MediaError
from engine.pipeline import (ItemStage, Stage, StageContext, StageItem, execute_stage, read_manifest,
                             read_progress)
from engine.util.atomic import atomic_write_text


def _count_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class ScaleConfig:
    factor: int = 2


class ScaleStage(Stage):
    """out = every integer of src times factor; appends one line per run to ``runs``."""

    name = "scale"

    def __init__(self, src: Path, dst: Path, runs: Path, config: ScaleConfig | None = None) -> None:
        self.src, self.dst, self.runs = Path(src), Path(dst), Path(runs)
        self.config = config or ScaleConfig()

    def inputs(self) -> dict[str, Path]:
        return {"src": self.src}

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        with self.runs.open("a") as fh:
            fh.write("run\n")
        values = [int(x) * self.config.factor for x in self.src.read_text().split()]
        atomic_write_text(self.dst, " ".join(map(str, values)) + "\n")


class FramesStage(ItemStage):
    """One output file per frame (1001-based), each recorded as an item."""

    name = "frames"
    item_unit = "frames"

    def __init__(self, src: Path, out_dir: Path, log: Path, n: int = 6, gain: int = 1) -> None:
        self.src, self.out_dir, self.log, self.n, self.gain = Path(src), Path(out_dir), Path(log), n, gain

    def inputs(self) -> dict[str, Path]:
        return {"src": self.src}

    def params(self) -> dict:
        return {"n": self.n, "gain": self.gain}

    def outputs(self) -> dict[str, Path]:
        return {"frames": self.out_dir}

    def items(self) -> list[StageItem]:
        return [StageItem(str(f), {"frame": self.out_dir / f"f.{f}.txt"}, {"frame": f})
                for f in range(1001, 1001 + self.n)]

    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        base = int(self.src.read_text().split()[0])
        atomic_write_text(item.outputs["frame"], f"{item.meta['frame'] * self.gain + base}\n")
        with self.log.open("a") as fh:
            fh.write(item.key + "\n")


@pytest.fixture()
def scale(tmp_path: Path) -> ScaleStage:
    src = tmp_path / "in.txt"
    src.write_text("1 2 3\n")
    return ScaleStage(src, tmp_path / "out" / "scaled.txt", tmp_path / "runs.log")


def test_first_run_writes_manifest_then_skips(scale: ScaleStage, caplog: pytest.LogCaptureFixture) -> None:
    assert scale.status() == "missing"
    res = execute_stage(scale)
    assert res.state == "ran"
    assert scale.dst.read_text() == "2 4 6\n"
    man = read_manifest(scale.manifest_path())
    assert man is not None and man["schema"] == "portrait.stage-manifest/1"
    assert scale.manifest_path() == scale.dst.parent / ".portrait" / "scale.json"
    assert set(man["inputs"]) == {"src"} and len(man["inputs"]["src"]["sha256"]) == 64
    assert set(man["outputs"]) == {"out"} and man["params"] == {"factor": 2}
    for key in ("engine_version", "params_sha256", "timings", "host", "job_id"):
        assert key in man
    assert scale.status() == "done" and scale.is_up_to_date()

    with caplog.at_level(logging.INFO, logger="portrait.pipeline"):
        res2 = execute_stage(scale)
    assert res2.state == "skipped"
    assert "skip scale: up to date" in caplog.text
    assert len(_count_lines(scale.runs)) == 1


def test_changed_input_reruns(scale: ScaleStage) -> None:
    execute_stage(scale)
    scale.src.write_text("1 2 4\n")
    st = scale.check()
    assert st.state == "stale" and "input 'src' changed" in st.reason
    assert execute_stage(scale).state == "ran"
    assert scale.dst.read_text() == "2 4 8\n"
    assert len(_count_lines(scale.runs)) == 2
    assert execute_stage(scale).state == "skipped"


def test_same_content_rewritten_input_still_skips(scale: ScaleStage) -> None:
    """Content, not timestamps, decides: touching/rewriting an input identically skips."""
    execute_stage(scale)
    scale.src.write_text("1 2 3\n")  # new mtime/ctime, same bytes
    assert scale.status() == "done"


def test_changed_param_reruns(scale: ScaleStage, tmp_path: Path) -> None:
    execute_stage(scale)
    other = ScaleStage(scale.src, scale.dst, scale.runs, ScaleConfig(factor=3))
    st = other.check()
    assert st.state == "stale" and st.reason == "params changed"
    assert execute_stage(other).state == "ran"
    assert scale.dst.read_text() == "3 6 9\n"


def test_stage_version_bump_reruns(scale: ScaleStage) -> None:
    execute_stage(scale)

    class ScaleV2(ScaleStage):
        version = 2

    assert ScaleV2(scale.src, scale.dst, scale.runs).status() == "stale"


def test_deleted_output_reruns(scale: ScaleStage) -> None:
    execute_stage(scale)
    scale.dst.unlink()
    st = scale.check()
    assert st.state == "missing" and "output 'out' missing" in st.reason
    assert execute_stage(scale).state == "ran"
    assert scale.dst.exists()


def test_corrupted_output_same_size_reruns(scale: ScaleStage) -> None:
    execute_stage(scale)
    scale.dst.write_text("9 9 9\n")  # same length: only the content hash can tell
    st = scale.check()
    assert st.state == "stale" and "output 'out' was modified" in st.reason
    assert scale.check(verify="hash").state == "stale"
    execute_stage(scale)
    assert scale.dst.read_text() == "2 4 6\n"


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    st = ScaleStage(tmp_path / "nope.txt", tmp_path / "o.txt", tmp_path / "r.log")
    with pytest.raises(MediaError, match=r"stage 'scale': input 'src' not found: .*nope.txt"):
        execute_stage(st)


def test_manifest_absent_after_a_crash_mid_run(scale: ScaleStage) -> None:
    """A rerun that dies must not leave the old manifest vouching for replaced outputs."""
    execute_stage(scale)
    scale.src.write_text("5\n")

    class Crashing(ScaleStage):
        def run(self, ctx: StageContext) -> None:
            atomic_write_text(self.dst, "partial\n")
            raise RuntimeError("died")

    crashing = Crashing(scale.src, scale.dst, scale.runs)
    with pytest.raises(RuntimeError):
        execute_stage(crashing)
    assert scale.status() == "missing"


def test_bad_stage_name_rejected(tmp_path: Path) -> None:
    st = ScaleStage(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    st.name = "../evil"
    with pytest.raises(ValueError, match="stage name"):
        st.manifest_path()


# ---- items ------------------------------------------------------------------------------
@pytest.fixture()
def frames(tmp_path: Path) -> FramesStage:
    src = tmp_path / "base.txt"
    src.write_text("100\n")
    return FramesStage(src, tmp_path / "v001" / "frames", tmp_path / "items.log")


def test_item_stage_runs_all_then_skips(frames: FramesStage) -> None:
    assert execute_stage(frames).state == "ran"
    assert sorted(p.name for p in frames.out_dir.iterdir()) == [f"f.{f}.txt" for f in range(1001, 1007)]
    assert (frames.out_dir / "f.1003.txt").read_text() == "1103\n"
    assert _count_lines(frames.log) == [str(f) for f in range(1001, 1007)]
    prog = read_progress(frames.progress_path())
    assert prog is not None and prog["done"] == 6 and prog["total"] == 6 and prog["state"] == "done"
    assert execute_stage(frames).state == "skipped"


def test_item_stage_redoes_only_deleted_items(frames: FramesStage) -> None:
    execute_stage(frames)
    (frames.out_dir / "f.1004.txt").unlink()
    (frames.out_dir / "f.1002.txt").write_text("tampered\n")
    assert frames.status() == "stale"
    execute_stage(frames)
    log = _count_lines(frames.log)
    assert log[6:] == ["1002", "1004"]
    assert (frames.out_dir / "f.1002.txt").read_text() == "1102\n"
    assert frames.status() == "done"


def test_item_stage_param_change_redoes_all(frames: FramesStage) -> None:
    execute_stage(frames)
    again = FramesStage(frames.src, frames.out_dir, frames.log, gain=2)
    execute_stage(again)
    assert len(_count_lines(frames.log)) == 12
    assert (frames.out_dir / "f.1001.txt").read_text() == "2102\n"
    # The ledger was compacted to the current fingerprint only.
    recs = [json.loads(x) for x in again.ledger_path().read_text().splitlines()]
    assert len(recs) == 6 and len({r["fingerprint"] for r in recs}) == 1


def test_item_stage_resumes_after_partial_run_and_torn_ledger(frames: FramesStage) -> None:
    """Simulate a kill after 3 items (ledger has 3 records + a torn line): rerun does 3."""

    class Dies(FramesStage):
        def run_item(self, ctx: StageContext, item: StageItem) -> None:
            if item.meta["frame"] == 1004:
                with open(self.ledger_path(), "a") as fh:
                    fh.write('{"key": "10')  # torn write from a kill mid-append
                raise KeyboardInterrupt  # stands in for the kill
            super().run_item(ctx, item)

    with pytest.raises(KeyboardInterrupt):
        execute_stage(Dies(frames.src, frames.out_dir, frames.log))
    assert frames.status() == "missing"
    execute_stage(frames)
    assert _count_lines(frames.log) == [str(f) for f in range(1001, 1007)]


def test_stage_report(frames: FramesStage) -> None:
    from engine.pipeline import stage_report
    assert stage_report(frames)["state"] == "missing"
    execute_stage(frames)
    rep = stage_report(frames)
    assert rep["state"] == "done" and rep["reason"] == "up to date" and rep["finished_at"]
    assert rep["progress"]["done"] == 6


def test_folder_signature_ignores_hidden_state(tmp_path: Path) -> None:
    """A render folder's manifests, progress files and job logs (under .portrait/) are not
    content: writing them must not change the folder's stat signature (or every status
    check would re-hash every frame), exactly as they do not change its hash."""
    from engine.pipeline.stage import stat_signature
    from engine.util.hashing import path_sha256

    (tmp_path / "f.1001.exr").write_bytes(b"frame")
    sig, digest = stat_signature(tmp_path), path_sha256(tmp_path)
    (tmp_path / ".portrait" / "jobs" / "logs").mkdir(parents=True)
    (tmp_path / ".portrait" / "render.progress.json").write_text("{}")
    (tmp_path / ".portrait" / "jobs" / "logs" / "12_0_log.out").write_text("log")
    assert stat_signature(tmp_path) == sig and path_sha256(tmp_path) == digest
    (tmp_path / "f.1002.exr").write_bytes(b"frame")
    assert stat_signature(tmp_path) != sig
