"""Versioned output folders: never overwrite, resume reruns, race-safe, no escapes."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from engine.errors import ConfigError, OutputExistsError
from engine.pipeline.versions import (DEFAULT_TEMPLATE, allocate_version, render_parent,
                                      validate_template)

H1 = "a" * 64
H2 = "b" * 64


def _fields(root: Path) -> dict:
    return {"root": str(root), "show": "SHOW", "sequence": "sq010", "shot": "sh0040", "task": "dub_fr"}


def test_auto_creates_v001_with_version_json(tmp_path: Path) -> None:
    with allocate_version(DEFAULT_TEMPLATE, _fields(tmp_path), config_hash=H1) as v:
        assert v.path == (tmp_path / "SHOW/sq010/sh0040/dub_fr/v001").resolve()
        assert v.name == "v001" and not v.resumed and v.status == "incomplete"
        info = json.loads((v.path / ".portrait/version.json").read_text())
        assert info["schema"] == "portrait.version/1"
        assert info["config_hash"] == H1 and info["status"] == "incomplete"
        assert info["engine_version"] and info["created"]


def test_auto_resumes_incomplete_same_hash_else_next(tmp_path: Path) -> None:
    f = _fields(tmp_path)
    v1 = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1)
    v1.release()
    again = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1)
    assert again.name == "v001" and again.resumed
    again.mark_complete()
    assert json.loads(again.info_path.read_text())["status"] == "complete"
    again.release()
    # complete with the same config -> returned read-only (a rerun of a finished shot runs nothing)
    done = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1)
    assert done.name == "v001" and done.resumed and done.is_complete
    done.release()
    # "new" -> the next free version, the complete one is never written into
    v2 = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version="new")
    assert v2.name == "v002" and not v2.resumed
    v2.release()
    # latest incomplete but another config -> next
    v3 = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H2)
    assert v3.name == "v003"
    v3.release()


def test_auto_skips_a_version_held_by_a_live_run(tmp_path: Path) -> None:
    f = _fields(tmp_path)
    with allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1) as held:
        other = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1)
        assert held.name == "v001" and other.name == "v002"
        with pytest.raises(OutputExistsError, match="v001 is being written by"):
            allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version=1)
        other.release()


def test_explicit_versions(tmp_path: Path) -> None:
    f = _fields(tmp_path)
    v = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version=3)
    assert v.name == "v003" and not v.resumed
    v.release()
    same = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version=3)
    assert same.resumed and same.status == "incomplete"
    same.mark_complete()
    same.release()
    with pytest.raises(OutputExistsError, match=r"^v003 exists with a different shot config; use version: auto$"):
        allocate_version(DEFAULT_TEMPLATE, f, config_hash=H2, version=3)
    done = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version=3)
    assert done.is_complete and done.resumed
    # auto after a complete v003 of the same config returns it read-only; "new" continues
    # from the highest number
    assert allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1).name == "v003"
    nxt = allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version="new")
    assert nxt.name == "v004"
    nxt.release()
    (tmp_path / "SHOW/sq010/sh0040/dub_fr/v007").mkdir()
    with pytest.raises(OutputExistsError, match="v007 exists but is not a Portrait version folder"):
        allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version=7)
    for bad in (0, -1, "3", True):
        with pytest.raises(ConfigError):
            allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1, version=bad)  # type: ignore[arg-type]


def _allocate_in_child(root: str, barrier, queue) -> None:  # noqa: ANN001
    barrier.wait()  # start both allocations at the same moment
    v = allocate_version(DEFAULT_TEMPLATE, _fields(Path(root)), config_hash=H1)
    queue.put(v.name)
    barrier.wait()  # hold the lock until both have allocated
    v.release()


@pytest.mark.parametrize("preexisting", [False, True])
def test_concurrent_allocation_gets_two_folders(tmp_path: Path, preexisting: bool) -> None:
    if preexisting:  # an unlocked resumable v001 both processes would like to resume
        allocate_version(DEFAULT_TEMPLATE, _fields(tmp_path), config_hash=H1).release()
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_child, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    names = sorted(queue.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert names == ["v001", "v002"]


@pytest.mark.parametrize("template", [
    "{root}/../{shot}/{version}",
    "{root}/{show}/./{shot}",
    "{root}//{shot}",
    "/abs/{shot}/{version}",
    "{shot}/{root}/{version}",
    "{root}x/{shot}",
    "{root}/{shot.__class__}/{version}",
    "{root}/{shot[0]}/{version}",
    "{root}/{bogus}/{version}",
    "{root}/{shot!r}/{version}",
    "{root}/{shot:>8}/{version}",
    "{root}/{version}/{shot}",
    "{root}/{shot}_{version}",
    "{root}/{shot}\\..\\x",
    "{root}/{shot",
    "",
])
def test_bad_templates_rejected(template: str) -> None:
    with pytest.raises(ConfigError):
        validate_template(template)


def test_template_without_version_gets_one_appended() -> None:
    assert validate_template("{root}/{show}/{shot}") == "{root}/{show}/{shot}/{version}"


@pytest.mark.parametrize("field,value", [
    ("shot", ".."), ("shot", "../../etc"), ("shot", "a/b"), ("shot", "/abs"), ("show", ".hidden"),
    ("task", ""), ("sequence", "a..b"),
])
def test_bad_field_values_rejected(tmp_path: Path, field: str, value: str) -> None:
    f = _fields(tmp_path)
    f[field] = value
    with pytest.raises(ConfigError):
        allocate_version(DEFAULT_TEMPLATE, f, config_hash=H1)
    assert not any(tmp_path.parent.glob("etc"))


def test_missing_field_and_root(tmp_path: Path) -> None:
    f = _fields(tmp_path)
    del f["task"]
    with pytest.raises(ConfigError, match="needs field"):
        render_parent(DEFAULT_TEMPLATE, f)
    f = _fields(tmp_path)
    f["root"] = ""
    with pytest.raises(ConfigError, match="root"):
        render_parent(DEFAULT_TEMPLATE, f)


def test_symlink_escape_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "SHOW").mkdir(parents=True)
    outside.mkdir()
    (root / "SHOW" / "sq010").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="outside the output root"):
        allocate_version(DEFAULT_TEMPLATE, _fields(root), config_hash=H1)
    assert not any(outside.iterdir())
