"""Stages: functions of files to files, cached by the content hashes of what they read.

A :class:`Stage` instance is a small picklable description of work (paths and a JSON-able
config), never models or frames: it is pickled to a local worker or a SLURM node, which
loads what it needs from the input files. After a stage runs, a manifest (schema
``portrait.stage-manifest/1``) is written atomically next to its outputs, in
``<stage dir>/.portrait/<stage-name>.json``. It records the content hashes of the stage's
inputs, its params and its outputs. A stage is *done* (skipped on rerun) when its manifest
exists, its outputs exist and still hash to what was recorded, and its current inputs and
params hash to what was recorded. Anything else reruns it.

Hashing a 2 GB plate or two thousand EXR frames on every ``status`` would be slow, so each
recorded hash carries a stat signature (size, mtime_ns, ctime_ns, inode) of the file, or of
every file of a folder. When the signature is unchanged the recorded hash is trusted, as
git's index does; any write to a file changes its ctime, so a modified file is always
re-hashed. ``check(verify="hash")`` re-hashes everything regardless.

Stages producing many items (render chunks, frames) derive from :class:`ItemStage`: each
finished item is appended to a ledger (``<stage-name>.items.jsonl``) with its output
hashes, under the stage's input/param fingerprint, so that a killed or preempted job redoes
only the items that are missing, modified or were made with other inputs/params.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from engine.errors import MediaError
from engine.util.atomic import atomic_write_text
from engine.util.hashing import config_sha256, path_sha256

from .progress import Progress, read_progress

log = logging.getLogger("portrait.pipeline")

MANIFEST_SCHEMA = "portrait.stage-manifest/1"
LEDGER_SCHEMA = "portrait.stage-items/1"
STATE_DIR_NAME = ".portrait"

StageState = Literal["done", "stale", "missing"]
Verify = Literal["stat", "hash"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --------------------------------------------------------------------------------------
# hashing with a stat cache
# --------------------------------------------------------------------------------------
def _file_sig(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def stat_signature(path: str | os.PathLike) -> str | None:
    """A cheap fingerprint of a file's or folder's on-disk state; None if it does not exist.

    For folders it covers exactly the files :func:`path_sha256` hashes (no path component
    starting with '.'), so that a stale temp file from a killed atomic write changes neither.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    if not p.is_dir():
        return "f" + _file_sig(st)
    h = hashlib.sha256()
    # Same selection as path_sha256: nothing under a hidden component (".portrait" state,
    # job logs, ".x.tmp" partial writes), or every progress update would force a re-hash.
    for child in sorted(q for q in p.rglob("*")
                        if q.is_file() and not any(part.startswith(".") for part in q.relative_to(p).parts)):
        h.update(str(child.relative_to(p)).encode())
        h.update(_file_sig(child.stat()).encode())
    return "d" + h.hexdigest()


def hash_entry(path: str | os.PathLike, cached: Mapping[str, Any] | None = None,
               verify: Verify = "stat") -> dict[str, Any]:
    """``{"path", "sha256", "stat"}`` for ``path``, reusing ``cached["sha256"]`` when its
    stat signature still matches (and ``verify`` is "stat")."""
    p = Path(path)
    sig = stat_signature(p)
    if sig is None:
        raise FileNotFoundError(str(p))
    if verify == "stat" and cached and cached.get("stat") == sig and cached.get("sha256"):
        digest = str(cached["sha256"])
    else:
        digest = path_sha256(p)
        # The folder may have changed between the two scans; a second signature that
        # differs means our hash may mix states: record no stat so the next check rehashes.
        if stat_signature(p) != sig:
            sig = None
    return {"path": str(p), "sha256": digest, "stat": sig}


def _entry_matches(path: Path, recorded: Mapping[str, Any], verify: Verify) -> bool:
    try:
        return hash_entry(path, recorded, verify)["sha256"] == recorded.get("sha256")
    except FileNotFoundError:
        return False


def read_json_schema(path: str | os.PathLike, schema: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` if it parses and carries ``schema``; else None."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != schema:
        return None
    return data


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    return read_json_schema(path, MANIFEST_SCHEMA)


# --------------------------------------------------------------------------------------
# status, items
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageStatus:
    """Why a stage is what it is: ``StageStatus("stale", "input 'plate' changed")``."""

    state: StageState
    reason: str

    def __str__(self) -> str:
        return f"{self.state}: {self.reason}"


@dataclass(frozen=True)
class StageItem:
    """One unit of resumable work inside a stage (a chunk of frames, one frame, ...).

    ``key`` names it uniquely within the stage; ``outputs`` are the files it writes
    (atomically); ``meta`` is JSON-able data the stage needs to run it (e.g. a frame range).
    """

    key: str
    outputs: Mapping[str, Path]
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fingerprint:
    """What a stage's outputs are a function of: its inputs' content and its params."""

    inputs: Mapping[str, Mapping[str, Any]]  # name -> hash entry
    params_sha256: str

    @property
    def digest(self) -> str:
        return config_sha256({"inputs": {k: v["sha256"] for k, v in self.inputs.items()},
                              "params": self.params_sha256})


# --------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------
class Stage(abc.ABC):
    """Base class of a pipeline stage (a function of files to files).

    Subclasses set ``name`` (class or instance attribute; unique in a pipeline, safe as a
    file name) and implement :meth:`inputs`, :meth:`outputs` and :meth:`run`. ``params``
    defaults to ``dataclasses.asdict(self.config)`` when the stage has a dataclass
    ``config``. Bump ``version`` when the stage's code changes what it writes for the same
    inputs and params: it is part of the params hash, so old outputs become stale.
    """

    name: str
    version: int = 1

    # -- to implement ----------------------------------------------------------------------
    @abc.abstractmethod
    def inputs(self) -> dict[str, Path]:
        """Files or folders whose CONTENT the outputs depend on."""

    @abc.abstractmethod
    def outputs(self) -> dict[str, Path]:
        """Files or folders this stage writes (each atomically)."""

    @abc.abstractmethod
    def run(self, ctx: "StageContext") -> None:
        """Do the work; write every output atomically."""

    def params(self) -> dict[str, Any]:
        """JSON-able settings that affect the outputs."""
        cfg = getattr(self, "config", None)
        if cfg is not None and dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
            return dataclasses.asdict(cfg)
        return {}

    def items(self) -> Sequence[StageItem] | None:
        """Resumable units of work, or None for an all-or-nothing stage."""
        return None

    # -- locations ---------------------------------------------------------------------------
    def validate_name(self) -> str:
        name = getattr(self, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"stage name {name!r} must match {_NAME_RE.pattern} (it names files)")
        return name

    def state_dir(self) -> Path:
        """Where the manifest, item ledger, progress and scratch live: ``<first output's
        folder>/.portrait``. Override when outputs are spread over several folders."""
        outs = self.outputs()
        if not outs:
            raise ValueError(f"stage {self.name!r} declares no outputs")
        return Path(next(iter(outs.values()))).parent / STATE_DIR_NAME

    def manifest_path(self) -> Path:
        return self.state_dir() / f"{self.validate_name()}.json"

    def ledger_path(self) -> Path:
        return self.state_dir() / f"{self.validate_name()}.items.jsonl"

    def progress_path(self) -> Path:
        return self.state_dir() / f"{self.validate_name()}.progress.json"

    def scratch_path(self) -> Path:
        return self.state_dir() / "scratch" / self.validate_name()

    def failure_path(self) -> Path:
        """Where a failed run leaves its error and remote traceback (for ``portrait status``);
        removed by the next successful run."""
        return self.manifest_path().with_name(self.manifest_path().stem + ".failure.json")

    # -- hashing -----------------------------------------------------------------------------
    def params_sha256(self) -> str:
        return config_sha256({"stage_version": self.version, "params": self.params()})

    def missing_inputs(self) -> dict[str, Path]:
        return {k: Path(p) for k, p in self.inputs().items() if not Path(p).exists()}

    def fingerprint(self, previous: Mapping[str, Any] | None = None,
                    verify: Verify = "stat") -> Fingerprint:
        """Hash the current inputs (reusing ``previous`` manifest hashes where the stat
        signature is unchanged). Raises MediaError naming a missing input."""
        missing = self.missing_inputs()
        if missing:
            k, p = next(iter(missing.items()))
            raise MediaError(f"stage '{self.name}': input '{k}' not found: {p}")
        prev_inputs = (previous or {}).get("inputs", {})
        entries = {k: hash_entry(p, prev_inputs.get(k), verify) for k, p in self.inputs().items()}
        return Fingerprint(inputs=entries, params_sha256=self.params_sha256())

    # -- status ------------------------------------------------------------------------------
    def check(self, verify: Verify = "stat") -> StageStatus:
        """Whether the outputs on disk are exactly what the current inputs/params make."""
        manifest = read_manifest(self.manifest_path())
        if manifest is None:
            return StageStatus("missing", "never completed")
        outs = self.outputs()
        for k, p in outs.items():
            if not Path(p).exists():
                return StageStatus("missing", f"output '{k}' missing: {p}")
        rec_outs = manifest.get("outputs", {})
        if set(rec_outs) != set(outs):
            return StageStatus("stale", "declared outputs changed")
        if manifest.get("params_sha256") != self.params_sha256():
            return StageStatus("stale", "params changed")
        rec_inputs = manifest.get("inputs", {})
        ins = self.inputs()
        if set(rec_inputs) != set(ins):
            return StageStatus("stale", "declared inputs changed")
        for k, p in ins.items():
            if not Path(p).exists():
                return StageStatus("stale", f"input '{k}' not found: {p}")
            if not _entry_matches(Path(p), rec_inputs[k], verify):
                return StageStatus("stale", f"input '{k}' changed")
        for k, p in outs.items():
            if not _entry_matches(Path(p), rec_outs[k], verify):
                return StageStatus("stale", f"output '{k}' was modified after it was written")
        return StageStatus("done", "up to date")

    def status(self, verify: Verify = "stat") -> StageState:
        return self.check(verify).state

    def is_up_to_date(self, verify: Verify = "stat") -> bool:
        return self.check(verify).state == "done"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')!r}>"


# --------------------------------------------------------------------------------------
# Item ledger
# --------------------------------------------------------------------------------------
class ItemLedger:
    """Append-only record of finished items, one JSON line each.

    A line is appended (and fsynced) only after an item's outputs were written, so a job
    killed at any point loses at most the item in flight. A torn last line (killed mid-
    write) is ignored. Records made under another fingerprint (other inputs/params) do not
    count and are dropped when the ledger is compacted.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint

    def _read(self) -> tuple[dict[str, dict[str, Any]], bool]:
        records: dict[str, dict[str, Any]] = {}
        dirty = False
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return records, False
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                dirty = True
                continue
            if not isinstance(rec, dict) or rec.get("fingerprint") != self.fingerprint:
                dirty = True
                continue
            if rec.get("key") in records:
                dirty = True
            records[str(rec.get("key"))] = rec
        return records, dirty

    def records(self) -> dict[str, dict[str, Any]]:
        return self._read()[0]

    def compact(self) -> None:
        records, dirty = self._read()
        if dirty:
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                 for r in records.values()))

    def is_done(self, item: StageItem, record: Mapping[str, Any] | None,
                verify: Verify = "stat") -> bool:
        if record is None:
            return False
        rec_outs = record.get("outputs", {})
        if set(rec_outs) != set(item.outputs):
            return False
        return all(_entry_matches(Path(p), rec_outs[k], verify) for k, p in item.outputs.items())

    def pending(self, items: Iterable[StageItem], verify: Verify = "stat") -> list[StageItem]:
        records = self.records()
        return [it for it in items if not self.is_done(it, records.get(it.key), verify)]

    def record(self, item: StageItem) -> None:
        outs = {}
        for k, p in item.outputs.items():
            if not Path(p).exists():
                raise RuntimeError(f"item '{item.key}' finished without writing output '{k}' ({p})")
            outs[k] = hash_entry(p, verify="hash")
        line = json.dumps({"schema": LEDGER_SCHEMA, "key": item.key, "fingerprint": self.fingerprint,
                           "outputs": outs}, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND + one write per line: a kill leaves at most one torn (ignored) line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------
class StageContext:
    """What a running stage gets: progress, a scratch folder, its items still to do."""

    def __init__(self, stage: Stage, fingerprint: Fingerprint, *, job_id: str | None = None,
                 progress_stream: Any = None) -> None:
        self.stage = stage
        self.name = stage.name
        self.fingerprint = fingerprint
        self.job_id = job_id
        self.log = log.getChild(stage.name)
        self._progress_stream = progress_stream
        self._scratch: Path | None = None
        self._ledger: ItemLedger | None = None

    @property
    def scratch(self) -> Path:
        """An empty private folder for temporaries, on the same filesystem as the outputs
        (so finished files can be renamed into place); removed when the stage succeeds."""
        if self._scratch is None:
            path = self.stage.scratch_path()
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            self._scratch = path
        return self._scratch

    def cleanup(self) -> None:
        if self._scratch is not None and self._scratch.exists():
            shutil.rmtree(self._scratch, ignore_errors=True)

    def progress(self, total: int | None, unit: str = "items", *, initial: int = 0) -> Progress:
        return Progress(self.name, total, unit, initial=initial, stream=self._progress_stream,
                        json_path=self.stage.progress_path())

    # -- items ---------------------------------------------------------------------------------
    @property
    def ledger(self) -> ItemLedger:
        if self._ledger is None:
            self._ledger = ItemLedger(self.stage.ledger_path(), self.fingerprint.digest)
            self._ledger.compact()
        return self._ledger

    def all_items(self) -> list[StageItem]:
        items = self.stage.items()
        if items is None:
            raise TypeError(f"stage {self.name!r} has no items()")
        items = list(items)
        keys = [it.key for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"stage {self.name!r} has duplicate item keys")
        return items

    def pending_items(self, verify: Verify = "stat") -> list[StageItem]:
        """Items not finished by an earlier run under the same inputs/params, or whose
        outputs have since been deleted or modified."""
        return self.ledger.pending(self.all_items(), verify)

    def item_done(self, item: StageItem) -> None:
        self.ledger.record(item)


class ItemStage(Stage):
    """A stage made of resumable items: implement :meth:`items` and :meth:`run_item`.

    The default :meth:`run` runs the pending items in order with progress; a rerun after a
    kill redoes only the items whose outputs are not recorded and valid.
    """

    item_unit: str = "items"

    @abc.abstractmethod
    def items(self) -> Sequence[StageItem]:
        ...

    @abc.abstractmethod
    def run_item(self, ctx: StageContext, item: StageItem) -> None:
        """Write ``item.outputs`` atomically."""

    def run(self, ctx: StageContext) -> None:
        items = ctx.all_items()
        pending = ctx.pending_items()
        if len(pending) < len(items):
            ctx.log.info("resume %s: %d of %d %s already done", self.name,
                         len(items) - len(pending), len(items), self.item_unit)
        with ctx.progress(len(items), self.item_unit, initial=len(items) - len(pending)) as prog:
            for item in pending:
                self.run_item(ctx, item)
                ctx.item_done(item)
                prog.update()


def stage_report(stage: Stage) -> dict[str, Any]:
    """One row of ``portrait status``: state, why, and the last progress of a running job."""
    st = stage.check()
    manifest = read_manifest(stage.manifest_path()) or {}
    return {
        "stage": stage.name,
        "state": st.state,
        "reason": st.reason,
        "finished_at": manifest.get("timings", {}).get("finished_at"),
        "job_id": manifest.get("job_id"),
        "progress": read_progress(stage.progress_path()),
    }
