"""`portrait submit SHOT.yaml ... [--cluster local|slurm|debug]`: hand shots to the farm.

On SLURM it returns as soon as the jobs are queued (job ids and per-task logs are recorded in
each shot's version folder, ``.portrait/jobs/``); ``portrait status`` follows them. With
``local``/``debug`` the same graph runs here and the command returns when it is done.

Several shot files, or a *batch manifest* (schema ``portrait.submit/1``) listing shots and
their language versions, go in one command::

    schema: portrait.submit/1
    shots:
      - shots/sh010.yaml
      - path: shots/sh020.yaml
        languages: {fr: dub/sh020_fr.wav, de: dub/sh020_de.wav}

Each language becomes its own shot ``<shot>_<lang>`` driven by that file (``drive.source``);
paths in the manifest resolve against the manifest's folder.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.shot import Shot, load_shot, parse_shot
from engine.shotgraph import submit_shot

MANIFEST_SCHEMA = "portrait.submit/1"
_LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")


def _read_yaml(path: Path) -> Any:
    from engine.shot.yaml_reader import YamlSyntaxError, parse_yaml

    try:
        return parse_yaml(path.read_text(encoding="utf-8")).data
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except YamlSyntaxError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}") from None


def _language_shot(path: Path, lang: str, source: Path) -> Shot:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a shot file")
    drive = dict(data.get("drive") or {})
    if drive.get("mode", "none") == "none":
        raise ConfigError(f"{path}: languages need a shot driven by audio or video (drive.mode is none)")
    drive["source"] = str(source)
    data = {**data, "drive": drive, "shot": f"{data.get('shot')}_{lang}"}
    return parse_shot(data, base_dir=path.parent, file=str(path))


def expand_targets(paths: list[str]) -> list[Shot]:
    """Shot files and batch manifests -> the shots to submit, in order."""
    shots: list[Shot] = []
    for text in paths:
        path = Path(text)
        data = _read_yaml(path)
        if isinstance(data, dict) and data.get("schema") == MANIFEST_SCHEMA:
            entries = data.get("shots")
            if not isinstance(entries, list) or not entries:
                raise ConfigError(f"{path}: 'shots' must be a non-empty list")
            for i, entry in enumerate(entries):
                if isinstance(entry, str):
                    entry = {"path": entry}
                if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                    raise ConfigError(f"{path}: shots[{i}] must be a path or a mapping with 'path'")
                unknown = sorted(set(entry) - {"path", "languages"})
                if unknown:
                    raise ConfigError(f"{path}: shots[{i}]: unknown key(s) {', '.join(unknown)}; valid: path, languages")
                shot_path = (path.parent / entry["path"]).resolve()
                langs = entry.get("languages")
                if langs is None:
                    shots.append(load_shot(shot_path))
                    continue
                if not isinstance(langs, dict) or not langs:
                    raise ConfigError(f"{path}: shots[{i}].languages must map language -> drive file")
                for lang, src in langs.items():
                    if not _LANG_RE.match(str(lang)):
                        raise ConfigError(f"{path}: shots[{i}]: language {lang!r} must be letters/digits (e.g. fr, pt-BR)")
                    shots.append(_language_shot(shot_path, str(lang), (path.parent / str(src)).resolve()))
        else:
            shots.append(load_shot(path))
    names = [f"{s.show}/{s.sequence}/{s.shot}" for s in shots]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"shot(s) listed twice: {', '.join(twice)}")
    return shots


def _submit(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    shots = expand_targets(args.shots)
    for shot in shots:
        res = submit_shot(shot, cluster=args.cluster, chunk_frames=args.chunk_frames,
                          track=True if args.track else None, train=not args.no_train)
        head = f"{shot.show}/{shot.sequence}/{shot.shot} {res.plan.layout.version}"
        if res.submission is not None:
            sub = res.submission
            if not sub.submitted:
                what = "nothing to submit: " + ("every stage is done" if not sub.active
                                                 else f"{len(sub.active)} stage(s) still queued or running")
                print(f"{head}: {what}")
            else:
                print(f"{head}: submitted {len(sub.submitted)} stage(s) as job(s) {', '.join(_mains(sub.job_ids))}")
                for name, jid in sub.submitted.items():
                    print(f"  {name:20s} {jid}")
        else:
            ran = [r.name for r in res.results or [] if r.state == "ran"]
            print(f"{head}: {'ran ' + ', '.join(ran) if ran else 'nothing to run: every stage is done'}")
        print(f"  jobs: {res.jobs_dir}")
    return 0


def _mains(ids: list[str]) -> list[str]:
    seen: list[str] = []
    for j in ids:
        m = j.split("_")[0]
        if m not in seen:
            seen.append(m)
    return seen


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit shots to the cluster (returns at once on SLURM)",
                       description="Submit each shot's stage graph (tracking, training, drive, render "
                                   "array, review, QC) with dependencies; record job ids and logs in the "
                                   "shot's output folder.")
    p.add_argument("shots", nargs="+", metavar="SHOT.yaml", help="shot files or batch manifests (portrait.submit/1)")
    p.add_argument("--cluster", choices=("local", "slurm", "debug"), help="override the shots' executor kind")
    p.add_argument("--chunk-frames", type=int, help="frames per render task (default: executor.slurm.chunk_frames)")
    p.add_argument("--track", action="store_true", help="plan face tracking even if nothing consumes it yet")
    p.add_argument("--no-train", action="store_true",
                   help="do not train an actor model (shots without actor.model render the plate through)")
    p.set_defaults(func=_submit)
