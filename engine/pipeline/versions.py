"""Versioned output folders: ``{root}/{show}/{sequence}/{shot}/{task}/v003/``.

Two promises, which pull in opposite directions: a version is never overwritten, and a
rerun of the same shot resumes instead of starting a new version. The rules:

* ``version="auto"``: if the latest version was made with the same shot config hash, resume
  it when it is incomplete (and no other live run holds it), or return it read-only when it
  is complete (a rerun of a finished shot runs nothing); otherwise create the next free vNNN.
* ``version="new"``: always create the next free vNNN (e.g. the code changed what a stage
  writes, and the latest complete version must not be touched).
* ``version=N``: if vNNN does not exist, create it. If it exists with the same config hash,
  resume it (a *complete* one is returned read-only: every stage is up to date and skips,
  and :func:`engine.pipeline.executor.run_stages` refuses to write into it). A different
  config hash raises :class:`OutputExistsError`.

Folders are created with ``os.mkdir`` (no ``exist_ok``): of two processes racing for v004
exactly one succeeds and the other moves on to v005. The run that allocated or resumed a
version holds an exclusive ``flock`` on ``.portrait/version.lock`` until it releases it or
dies (the kernel drops the lock with the process), so two concurrent runs of one shot get
two folders while a killed run's version is resumable at once.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import getpass
import os
import re
import socket
import string
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping

from engine import __version__
from engine.errors import ConfigError, OutputExistsError
from engine.util.atomic import atomic_write_json

from .stage import STATE_DIR_NAME, read_json_schema

VERSION_SCHEMA = "portrait.version/1"
DEFAULT_TEMPLATE = "{root}/{show}/{sequence}/{shot}/{task}/{version}"
TEMPLATE_FIELDS = ("root", "show", "sequence", "shot", "task", "version")
_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_DIR_RE = re.compile(r"^v(\d{3,})$")
_MAX_VERSION = 99999

VersionStatus = Literal["incomplete", "complete"]


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def version_name(n: int) -> str:
    return f"v{n:03d}"


def parse_version_name(name: str) -> int | None:
    m = _VERSION_DIR_RE.match(name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------------------
def validate_template(template: str) -> str:
    """Check an output template; return it with ``/{version}`` appended if it lacks one.

    It must start with ``{root}``; use only the fields root, show, sequence, shot, task,
    version (no attribute/index access, conversions or format specs); have no empty, ``.``
    or ``..`` components; and ``{version}`` must be its whole last component (the version
    folder is what is allocated and marked complete).
    """
    if not isinstance(template, str) or not template.strip():
        raise ConfigError("output template is empty")
    t = template.strip().rstrip("/")
    if not t.startswith("{root}"):
        raise ConfigError(f"output template must start with {{root}}: {template!r}")
    try:
        parsed = list(string.Formatter().parse(t))
    except ValueError as exc:
        raise ConfigError(f"output template {template!r} is malformed: {exc}") from None
    for _literal, fname, spec, conv in parsed:
        if fname is None:
            continue
        if fname not in TEMPLATE_FIELDS:
            raise ConfigError(f"output template field {{{fname}}} is unknown; "
                              f"valid fields: {', '.join(TEMPLATE_FIELDS)}")
        if spec or conv:
            raise ConfigError(f"output template field {{{fname}}} may not have a format spec or conversion")
    if ".." in t:
        # Stricter than path semantics need ("x..y" is a legal name), but a template is
        # written once per show: refusing every '..' leaves no doubt that nothing escapes root.
        raise ConfigError(f"output template may not contain '..': {template!r}")
    if "\\" in t:
        raise ConfigError(f"output template may not contain '\\': {template!r}")
    parts = t.split("/")
    if parts[0] != "{root}":
        raise ConfigError(f"output template must start with the component {{root}}/: {template!r}")
    for part in parts[1:]:
        if part in ("", ".", ".."):
            raise ConfigError(f"output template may not contain empty, '.' or '..' components: {template!r}")
    n_version = t.count("{version}")
    if n_version == 0:
        t += "/{version}"
    elif n_version > 1 or parts[-1] != "{version}":
        raise ConfigError(f"{{version}} must appear once, as the last component of the output template: {template!r}")
    return t


def _check_value(name: str, value: Any) -> str:
    s = str(value)
    if not _VALUE_RE.match(s) or ".." in s:
        raise ConfigError(f"output field {name}={s!r} must be a non-empty name of letters, digits, "
                          "'.', '_' or '-' (no '/', no '..', not starting with '.')")
    return s


def render_parent(template: str, fields: Mapping[str, Any]) -> tuple[Path, Path]:
    """(root, folder holding the version folders) for ``fields``; checks nothing escapes root."""
    t = validate_template(template)
    if "root" not in fields or not str(fields["root"]).strip():
        raise ConfigError("output root is not set")
    root = Path(str(fields["root"])).expanduser()
    parent_t = t[: -len("/{version}")]
    used = {f for _l, f, _s, _c in string.Formatter().parse(parent_t) if f and f != "root"}
    missing = sorted(used - set(fields))
    if missing:
        raise ConfigError(f"output template needs field(s) {', '.join(missing)}")
    values = {k: _check_value(k, fields[k]) for k in used}
    rel = parent_t[len("{root}"):].lstrip("/").format(**values)
    rel_path = PurePosixPath(rel) if rel else PurePosixPath(".")
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise ConfigError(f"output path {rel!r} escapes the output root")
    root_res = root.resolve()
    parent = (root / rel_path) if rel else root
    # A symlink inside root pointing elsewhere would also escape; resolve and compare.
    parent_res = parent.resolve()
    if parent_res != root_res and root_res not in parent_res.parents:
        raise ConfigError(f"output folder {parent} resolves to {parent_res}, outside the output root {root_res}")
    return root_res, parent_res


# --------------------------------------------------------------------------------------
# version folders
# --------------------------------------------------------------------------------------
@dataclass
class VersionDir:
    """An allocated (created or resumed) version folder, locked for this process."""

    path: Path
    number: int
    config_hash: str
    status: VersionStatus
    resumed: bool
    created: str
    _lock_fd: int | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return version_name(self.number)

    @property
    def state_dir(self) -> Path:
        return self.path / STATE_DIR_NAME

    @property
    def info_path(self) -> Path:
        return self.state_dir / "version.json"

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    def info(self) -> dict[str, Any]:
        return read_json_schema(self.info_path, VERSION_SCHEMA) or {}

    def mark_complete(self) -> None:
        """Seal the version: later runs never write into it (auto picks the next one)."""
        if self.is_complete:
            return
        info = self.info()
        info.update(status="complete", completed_at=_now_iso())
        atomic_write_json(self.info_path, info)
        self.status = "complete"

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __enter__(self) -> "VersionDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:
        # A lock belongs to the process that took it; a pickled copy carries none.
        state = dict(self.__dict__)
        state["_lock_fd"] = None
        return state


def _try_lock(version_path: Path) -> int | None:
    """Take the version's exclusive lock without waiting; the fd, or None if held elsewhere."""
    state = version_path / STATE_DIR_NAME
    state.mkdir(exist_ok=True)
    lock_path = state / "version.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Who holds it, for the error message of the run that is refused.
    os.ftruncate(fd, 0)
    os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
    return fd


def _lock_holder(version_path: Path) -> str:
    try:
        return (version_path / STATE_DIR_NAME / "version.lock").read_text().strip() or "another run"
    except OSError:
        return "another run"


def _read_info(version_path: Path) -> dict[str, Any] | None:
    return read_json_schema(version_path / STATE_DIR_NAME / "version.json", VERSION_SCHEMA)


def existing_versions(parent: Path) -> list[int]:
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in (parse_version_name(x) for x in names) if n is not None)


def _create(parent: Path, n: int, config_hash: str) -> VersionDir | None:
    """Create vNNN; None if it already exists (someone else got it first)."""
    path = parent / version_name(n)
    try:
        os.mkdir(path)
    except FileExistsError:
        return None
    fd = _try_lock(path)
    if fd is None:  # cannot happen for a folder we just created, unless someone raced to lock it
        return None
    created = _now_iso()
    atomic_write_json(path / STATE_DIR_NAME / "version.json", {
        "schema": VERSION_SCHEMA, "version": n, "name": version_name(n), "config_hash": config_hash,
        "status": "incomplete", "created": created, "engine_version": __version__,
        "host": socket.gethostname(), "user": _user(),
    })
    return VersionDir(path, n, config_hash, "incomplete", resumed=False, created=created, _lock_fd=fd)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def _resume(path: Path, n: int, info: Mapping[str, Any], fd: int | None) -> VersionDir:
    return VersionDir(path, n, str(info.get("config_hash")), info.get("status", "incomplete"),
                      resumed=True, created=str(info.get("created", "")), _lock_fd=fd)


def allocate_version(template: str, fields: Mapping[str, Any], *, config_hash: str,
                     version: str | int = "auto") -> VersionDir:
    """Create or resume the version folder for ``fields`` (see the module docstring)."""
    if not config_hash:
        raise ValueError("config_hash is required")
    _root, parent = render_parent(template, fields)
    parent.mkdir(parents=True, exist_ok=True)

    if version in ("auto", "new"):
        nums = existing_versions(parent)
        if nums and version == "auto":
            latest = nums[-1]
            path = parent / version_name(latest)
            info = _read_info(path)
            if info and info.get("status") == "complete" and info.get("config_hash") == config_hash:
                return _resume(path, latest, info, None)
            if info and info.get("status") == "incomplete" and info.get("config_hash") == config_hash:
                fd = _try_lock(path)
                if fd is not None:
                    info = _read_info(path) or info  # re-read under the lock
                    if info.get("status") == "incomplete" and info.get("config_hash") == config_hash:
                        return _resume(path, latest, info, fd)
                    os.close(fd)
        n = (nums[-1] + 1) if nums else 1
        while n <= _MAX_VERSION:
            vd = _create(parent, n, config_hash)
            if vd is not None:
                return vd
            n += 1
        raise OutputExistsError(f"no free version number left in {parent}")

    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _MAX_VERSION:
        raise ConfigError(f"version must be 'auto' or an integer 1..{_MAX_VERSION}, got {version!r}")
    name = version_name(version)
    path = parent / name
    vd = _create(parent, version, config_hash)
    if vd is not None:
        return vd
    info = _read_info(path)
    if info is None:
        raise OutputExistsError(f"{name} exists but is not a Portrait version folder "
                                f"(no {STATE_DIR_NAME}/version.json): {path}; use version: auto")
    if info.get("config_hash") != config_hash:
        raise OutputExistsError(f"{name} exists with a different shot config; use version: auto")
    if info.get("status") == "complete":
        # Read-only resume: nothing will be written, so no lock is needed.
        return _resume(path, version, info, None)
    fd = _try_lock(path)
    if fd is None:
        raise OutputExistsError(f"{name} is being written by {_lock_holder(path)}; use version: auto")
    return _resume(path, version, _read_info(path) or info, fd)
