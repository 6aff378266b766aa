"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader (or a resumed job) never sees a half-written file: either the old state or the
new one. The temporary name starts with '.' and ends with '.tmp' so that globbing for
outputs never picks it up, and a crashed write leaves only an ignorable temp file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from engine.errors import MediaError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, overwrite: bool = True, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it onto ``final``.

    Writers that need a file name (OpenEXR, ffmpeg) write to the yielded path. With
    ``overwrite=False`` an existing ``final`` raises instead of being replaced, and
    the rename uses ``os.link`` so that a concurrent writer cannot be clobbered.
    ``fsync=False`` skips flushing to the disk: the rename alone already guarantees that no
    reader sees half a file; fsync only adds surviving a power cut, which callers writing
    thousands of frames batch instead (``engine.io.exr.sync_files``).
    """
    final = Path(final)
    if not overwrite and final.exists():
        from engine.errors import OutputExistsError
        raise OutputExistsError(f"refusing to overwrite existing file {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix,
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; delivered files (frames, movies, reports) must be readable by the
    # rest of the facility like any other file this user writes: apply the umask instead.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)
            except FileExistsError:
                from engine.errors import OutputExistsError
                raise OutputExistsError(f"refusing to overwrite existing file {final}") from None
            tmp.unlink()
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC: say so plainly rather than a traceback
            raise MediaError(f"disk full while writing {final}") from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(final: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_path(final, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(final: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    return atomic_write_text(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n",
                             overwrite=overwrite)
