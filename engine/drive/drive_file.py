"""The drive file, schema ``portrait.drive/1``: what the face does on every frame of a shot.

Written by the drive stage (video- or audio-driven, or the plate's own performance for
``drive.mode: none``), read by rendering. One ``.npz`` with a JSON header (array ``header``,
a 0-d string) and flat arrays:

header (JSON)
    ``schema`` (``portrait.drive``), ``schema_version``, ``schema_label``
    (``portrait.drive/1``), ``engine_version``, ``created``; ``mode`` (none / video / audio);
    ``fps`` (rational text), ``first_frame`` / ``last_frame`` / ``frame_count`` (plate frame
    numbers); ``flag_names`` (bit i of ``flags`` = ``flag_names[i]``), ``flag_counts``;
    ``inputs``: content hashes of what it was made from (``plate_tracking_sha256``,
    ``plate_media_sha256``, ``driver_media_sha256``, ``driver_tracking_sha256``, audio...);
    ``face_model``: ``id`` and ``content_hash`` of the model the expressions belong to (the
    plate's), ``exp_names``; ``config`` (the settings, JSON); ``info`` (method, rest
    estimates, statistics).

arrays (N = frames; index i <-> ``params_frame_numbers[i]``)
    ``params_*``: :meth:`engine.face.params.FrameParams.to_arrays` with prefix ``params_``;
    ``flags`` (N,) uint16; ``positions`` (N, 2) int64 exact driving positions (numerator,
    denominator; video mode only).

:func:`write_drive` writes atomically; :func:`load_drive` checks the schema, refuses a file
from a newer engine with one line, and upgrades older versions in memory through the
functions registered with :func:`register_upgrade`.
"""
from __future__ import annotations

import datetime as _dt
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engine import __version__
from engine.errors import MediaError
from engine.face.params import FrameParams
from engine.util.schema_npz import SchemaNpz, one_line as _one_line

from .transfer import FLAG_NAMES, DriveResult

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SCHEMA_LABEL", "SUFFIX", "write_drive", "load_drive", "read_drive_header",
           "register_upgrade", "unregister_upgrade", "DriveFile"]

SCHEMA = "portrait.drive"
SCHEMA_VERSION = 1
SCHEMA_LABEL = f"{SCHEMA}/{SCHEMA_VERSION}"
SUFFIX = ".drive.npz"
PREFIX = "params_"

_FILE = SchemaNpz(SCHEMA, SCHEMA_VERSION, "drive", "redo the drive")
register_upgrade = _FILE.register_upgrade
unregister_upgrade = _FILE.unregister_upgrade


class DriveFile(DriveResult):
    """A drive read from disk: a :class:`DriveResult` plus its header and path."""

    header: dict[str, Any]
    path: Path | None

    @property
    def face_model_id(self) -> str:
        return str(self.header["face_model"]["id"])

    @property
    def fps(self) -> Fraction:
        return Fraction(self.header["fps"])


def _fps_text(fps: Fraction) -> str:
    fps = Fraction(fps)
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


def write_drive(result: DriveResult, path: str | os.PathLike, *, fps: Fraction, inputs: Mapping[str, Any],
                face_model: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
    """Write ``result`` atomically as a ``portrait.drive/1`` file (name ends with ``.drive.npz``).

    inputs: content hashes / paths of what it was made from; face_model: ``id``,
    ``content_hash`` and ``exp_names`` of the plate's model; config: the settings (JSON-able)."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise MediaError(f"drive file name must end with {SUFFIX}: {path}")
    p = result.params
    fn = np.asarray(p.frame_numbers, np.int64)
    header = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "schema_label": SCHEMA_LABEL,
        "engine_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": result.mode, "fps": _fps_text(fps),
        "first_frame": int(fn[0]) if fn.size else None, "last_frame": int(fn[-1]) if fn.size else None,
        "frame_count": int(fn.size), "flag_names": list(FLAG_NAMES), "flag_counts": result.flag_counts(),
        "inputs": dict(inputs), "face_model": dict(face_model), "config": dict(config), "info": dict(result.info),
    }
    arrays = {k: np.asarray(v) for k, v in p.to_arrays(PREFIX).items()}
    arrays["flags"] = np.asarray(result.flags, np.uint16)
    if result.positions is not None:
        arrays["positions"] = np.asarray(result.positions, np.int64)
    _FILE.write(path, header, arrays)
    return path


def read_drive_header(path: str | os.PathLike) -> dict[str, Any]:
    """Only the JSON header (cheap)."""
    return _FILE.read_header(path)


def load_drive(path: str | os.PathLike) -> DriveFile:
    """Read a drive file, upgrading older schema versions; one-line MediaError if unusable."""
    p = Path(path)
    header, arrays = _FILE.load(p)
    try:
        params = FrameParams.from_arrays(arrays, PREFIX)
    except Exception as exc:  # noqa: BLE001 - any malformed array set is a damaged file for the user
        if isinstance(exc, MediaError):
            raise
        raise MediaError(f"{p}: damaged drive file ({_one_line(exc)})") from None
    n = len(params)
    if "flags" not in arrays or np.asarray(arrays["flags"]).shape != (n,):
        raise MediaError(f"{p}: drive file lacks per-frame flags for its {n} frames")
    if int(header.get("frame_count", n)) != n:
        raise MediaError(f"{p}: header says {header.get('frame_count')} frames, arrays hold {n}")
    if n > 1 and not (np.diff(params.frame_numbers) > 0).all():
        raise MediaError(f"{p}: drive frame numbers are not increasing")
    names = tuple(header.get("flag_names", ()))
    flags = np.asarray(arrays["flags"], np.int64)
    if names != FLAG_NAMES[:len(names)]:
        # Written with another flag order: re-map bits by name (unknown names are dropped).
        remapped = np.zeros_like(flags)
        for i, name in enumerate(names):
            if name in FLAG_NAMES:
                remapped |= np.where(flags & (1 << i), 1 << FLAG_NAMES.index(name), 0)
        flags = remapped
    positions = arrays.get("positions")
    out = DriveFile(params=params, flags=flags.astype(np.uint16), mode=str(header.get("mode", "video")),
                    positions=None if positions is None else np.asarray(positions, np.int64),
                    info=dict(header.get("info", {})))
    out.header = header
    out.path = p
    return out
