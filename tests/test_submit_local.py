"""`portrait submit/status/retry` without SLURM: the local executor runs the same graph
(tracking, render chunks, review, qc) and records it the same way; chunk stages stay
independent; batch manifests expand shots and languages; errors are one line."""
from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
import pytest

from engine.pipeline import ExecutorConfig, ItemStage, Stage, StageContext, StageItem, run_stages
from engine.pipeline.chunk import FrameChunkStage, chunk_ranges
from engine.pipeline.submit import (GraphPlan, _expand_job_id, graph_status, load_plan, read_record,
                                    write_local_record)
from engine.util.atomic import atomic_write_text

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_chunk_ranges() -> None:
    assert chunk_ranges(1001, 1006, 2) == [(1001, 1002), (1003, 1004), (1005, 1006)]
    assert chunk_ranges(1001, 1005, 2) == [(1001, 1002), (1003, 1004), (1005, 1005)]
    assert chunk_ranges(1001, 1001, 50) == [(1001, 1001)]
    with pytest.raises(ValueError):
        chunk_ranges(1, 2, 0)


def test_expand_job_id() -> None:
    assert _expand_job_id("12") == ["12"]
    assert _expand_job_id("12_3") == ["12_3"]
    assert _expand_job_id("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]


class Frames(ItemStage):
    """Writes one file per frame into a folder shared by every chunk (like a render)."""

    item_unit = "frames"

    def __init__(self, folder: Path, frames: list[int], name: str) -> None:
        self.folder, self.frames, self.name = Path(folder), frames, name

    def inputs(self) -> dict[str, Path]:
        return {}

    def params(self) -> dict:
        return {"frames": self.frames}

    def outputs(self) -> dict[str, Path]:
        return {"frames": self.folder}

    def state_dir(self) -> Path:
        return self.folder / ".portrait"

    def items(self) -> list[StageItem]:
        return [StageItem(str(f), {"f": self.folder / f"x.{f}.txt"}) for f in self.frames]

    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        atomic_write_text(item.outputs["f"], item.key)


def test_chunks_sharing_a_folder_stay_independent(tmp_path: Path) -> None:
    chunks = [FrameChunkStage(Frames(tmp_path / "out", list(range(a, b + 1)), f"render-{a}-{b}"))
              for a, b in chunk_ranges(1001, 1004, 2)]
    assert list(chunks[0].outputs()) == ["1001.f", "1002.f"]
    run_stages(chunks, ExecutorConfig(kind="debug"), deps={c.name: [] for c in chunks})
    # The second chunk wrote into the same folder after the first: both are still done.
    assert [c.check().state for c in chunks] == ["done", "done"]
    (tmp_path / "out" / "x.1003.txt").unlink()
    assert [c.check().state for c in chunks] == ["done", "missing"]
    res = run_stages(chunks, ExecutorConfig(kind="debug"), deps={c.name: [] for c in chunks})
    assert [r.state for r in res] == ["skipped", "ran"]


def test_graph_plan_checks_groups(tmp_path: Path) -> None:
    a = Frames(tmp_path, [1], "a")
    b = Frames(tmp_path, [2], "b")
    with pytest.raises(ValueError, match="share their dependencies"):
        GraphPlan([a, b], {"a": [], "b": ["a"]}, tmp_path / "jobs", groups={"g": ["a", "b"]})
    with pytest.raises(ValueError, match="unknown stage"):
        GraphPlan([a], {"a": []}, tmp_path / "jobs", groups={"g": ["a", "zz"]})


# ------------------------------------------------------------------------------------------
class Concat(Stage):
    def __init__(self, name: str, srcs: dict[str, Path], dst: Path, flag: Path | None = None) -> None:
        self.name, self.srcs, self.dst, self.flag = name, srcs, Path(dst), flag

    def inputs(self) -> dict[str, Path]:
        return dict(self.srcs)

    def outputs(self) -> dict[str, Path]:
        return {"out": self.dst}

    def run(self, ctx: StageContext) -> None:
        if self.flag is not None and self.flag.exists():
            raise ValueError("bad frame 1012: no face found")
        text = "".join(Path(p).read_text() for _k, p in sorted(self.srcs.items()))
        atomic_write_text(self.dst, text + f"[{self.name}]\n")


def test_local_failure_shows_traceback_and_retry_reruns_only_it(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from engine.errors import StageError
    from tools.cli import main

    src = tmp_path / "src.txt"
    src.write_text("plate\n")
    flag = tmp_path / "bad"
    flag.write_text("1")
    out = tmp_path / "v001"
    stages = [Concat("a", {"s": src}, out / "a.txt"), Concat("b", {"a": out / "a.txt"}, out / "b.txt", flag),
              Concat("c", {"b": out / "b.txt"}, out / "c.txt")]
    plan = GraphPlan(stages, {"a": [], "b": ["a"], "c": ["b"]}, out / ".portrait" / "jobs", label="t")
    with pytest.raises(StageError):
        run_stages(plan.stages, ExecutorConfig(kind="debug"), deps=plan.deps)
    write_local_record(plan, [], "debug", {})
    assert main(["status", str(plan.jobs_dir)]) == 3
    text = capsys.readouterr().out
    assert "ValueError: bad frame 1012: no face found" in text and "Traceback (most recent call last)" in text
    assert [r.state for r in graph_status(load_plan(plan.jobs_dir))] == ["done", "failed", "pending"]

    flag.unlink()
    a_mtime = (out / "a.txt").stat().st_mtime_ns
    assert main(["retry", str(plan.jobs_dir)]) == 0
    assert "ran b, c" in capsys.readouterr().out
    assert (out / "a.txt").stat().st_mtime_ns == a_mtime
    assert main(["status", str(plan.jobs_dir)]) == 0
    assert not stages[1].failure_path().exists()


def test_submit_local_runs_the_graph_and_resubmit_runs_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from engine.demo import build_demo
    from tools.cli import main

    yaml_path = build_demo(tmp_path / "demo", frames=4, executor="local")
    assert main(["submit", str(yaml_path), "--no-train", "--track", "--chunk-frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "ran " in out
    jobs = tmp_path / "demo" / "out" / "demo" / "sq010" / "sh010" / "render" / "v001" / ".portrait" / "jobs"
    plan = load_plan(jobs)
    assert [s.name for s in plan.stages] == ["render-1001-1002", "render-1003-1004", "review", "qc", "track-plate"]
    assert plan.groups == {"render": ["render-1001-1002", "render-1003-1004"]}
    assert read_record(jobs)["cluster"] == "local"
    assert main(["status", str(yaml_path)]) == 0
    text = capsys.readouterr().out
    assert "rendered: 4/4 frames" in text
    rec = read_record(jobs)["stages"]
    assert Path(rec["review"]["logs"]["stderr"]).is_file()  # per-task logs in the shot's folder
    assert main(["submit", str(yaml_path), "--no-train", "--track", "--chunk-frames", "2"]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert main(["cancel", str(yaml_path)]) == 0
    assert "nothing queued" in capsys.readouterr().out


def test_manifest_expands_shots_and_languages(tmp_path: Path) -> None:
    from engine.demo import build_demo
    from tools.cmd_submit import expand_targets

    shot = build_demo(tmp_path / "demo", frames=4, executor="local")
    text = shot.read_text().replace("drive: {mode: none}", "drive: {mode: audio, source: plate/astronaut_plate.mp4}")
    dubbed = tmp_path / "demo" / "dub_shot.yaml"
    dubbed.write_text(text.replace("shot: sh010", "shot: sh020"))
    manifest = tmp_path / "batch.yaml"
    manifest.write_text("schema: portrait.submit/1\nshots:\n  - demo/demo_shot.yaml\n"
                        "  - path: demo/dub_shot.yaml\n    languages: {fr: demo/plate/astronaut_plate.mp4, "
                        "de: demo/plate/astronaut_plate.mp4}\n")
    shots = expand_targets([str(manifest)])
    assert [s.shot for s in shots] == ["sh010", "sh020_fr", "sh020_de"]
    assert shots[1].drive.mode == "audio" and shots[1].drive.source == (tmp_path / "demo" / "plate" /
                                                                          "astronaut_plate.mp4")


@pytest.mark.parametrize("body, message", [
    ("schema: portrait.submit/1\nshots: []\n", "'shots' must be a non-empty list"),
    ("schema: portrait.submit/1\nshots:\n  - {path: x.yaml, lang: fr}\n", "unknown key(s) lang"),
    ("schema: portrait.submit/1\nshots:\n  - {path: demo/demo_shot.yaml, languages: {fr: a.wav}}\n",
     "languages need a shot driven by audio or video"),
])
def test_manifest_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, body: str, message: str) -> None:
    from engine.demo import build_demo
    from tools.cli import main

    build_demo(tmp_path / "demo", frames=2, executor="local")
    manifest = tmp_path / "batch.yaml"
    manifest.write_text(body)
    assert main(["submit", str(manifest)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_status_of_an_unknown_target_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tools.cli import main

    assert main(["status", str(tmp_path / "nope.yaml")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "neither a shot YAML" in err[0]
