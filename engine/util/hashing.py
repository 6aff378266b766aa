"""Content hashes for caching and provenance.

Stages record the hashes of their inputs and config; a rerun skips a stage whose recorded
hashes still match. Hashing a 2 GB plate on every rerun would be slow, so file hashes are
memoised per process on (path, size, mtime_ns).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    hit = _memo.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while True:
            block = fh.read(_CHUNK)
            if not block:
                break
            h.update(block)
    digest = h.hexdigest()
    _memo[key] = digest
    return digest


def path_sha256(path: str | os.PathLike) -> str:
    """Hash of a file, or of a folder's files (names and contents, sorted)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        # Hidden names (".portrait" state folders, ".x.tmp" partial writes) are bookkeeping, not content.
        for child in sorted(q for q in p.rglob("*")
                            if q.is_file() and not any(part.startswith(".") for part in q.relative_to(p).parts)):
            h.update(str(child.relative_to(p)).encode())
            h.update(file_sha256(child).encode())
        return h.hexdigest()
    return file_sha256(p)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_sha256(obj: Any) -> str:
    """Hash of a JSON-able config (dataclasses should be converted with asdict first)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
