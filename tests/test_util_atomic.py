"""Atomic writes: all or nothing, no clobbering, normal permissions, a clear disk-full error."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from engine.errors import MediaError, OutputExistsError
from engine.util.atomic import atomic_path, atomic_write_json, atomic_write_text
from engine.util.hashing import config_sha256, path_sha256


def test_failed_write_leaves_no_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_replace_and_refuse_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert '"x": 2' in target.read_text()
    with pytest.raises(OutputExistsError):
        atomic_write_text(target, "nope", overwrite=False)
    assert '"x": 2' in target.read_text()


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "frame.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_disk_full_is_a_one_line_media_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="disk full while writing"):
        with atomic_path(tmp_path / "big.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_folder_hash_ignores_bookkeeping_but_not_content(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("a")
    h0 = path_sha256(tmp_path)
    (tmp_path / ".portrait").mkdir()
    (tmp_path / ".portrait" / "manifest.json").write_text("{}")
    assert path_sha256(tmp_path) == h0
    (tmp_path / "f.txt").write_text("b")
    assert path_sha256(tmp_path) != h0
    assert config_sha256({"a": 1, "b": 2}) == config_sha256({"b": 2, "a": 1})
