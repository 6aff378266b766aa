"""``portrait qc``: the reviewer's QC report of a shot's latest version, or of any render.

    portrait qc SHOT.yaml [--version N] [--out DIR]
    portrait qc --render RENDER --plate PLATE [--audio AUDIO] [--out DIR] [--fps 25] ...

RENDER is an image sequence (``name.%04d.exr`` / ``name.####.png``) or a movie; PLATE a movie
or an image sequence. Writes ``report.html`` (self-contained) and ``metrics.json`` into the
output folder and prints the verdict; the exit code is 0 for PASS and 3 for FAIL, so a
pipeline can gate on it (errors the user can cause exit 1 or 2 with one ``error:`` line).
For a shot, the report goes into the version's qc folder; a version that already has a
report is never overwritten: the new one goes into ``qc/vNNN/recheck-<UTC time>/``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import sys
from fractions import Fraction
from pathlib import Path

from engine.errors import ConfigError
from tools.cmd_run import parse_fps

EXIT_FAIL = 3


def _frames(text: str | None) -> tuple[int, int] | None:
    from tools.cmd_run import parse_frames
    fr = parse_frames(text)
    return (fr[0], fr[-1]) if fr else None


def _measure_overrides(args: argparse.Namespace) -> dict:
    out = {}
    if args.no_perceptual:
        out["perceptual"] = False
    if args.no_identity:
        out["identity"] = False
    return out


def _shot_run(args: argparse.Namespace):
    from engine.qc.stage import latest_version, run_qc, shot_qc_config, shot_qc_inputs
    from engine.shot import load_shot

    shot = load_shot(args.target)
    layout = latest_version(shot, args.version)
    inputs = shot_qc_inputs(shot, layout, drive=Path(args.drive).resolve() if args.drive else None,
                            tracking=Path(args.tracking).resolve() if args.tracking else None)
    if args.audio:
        inputs = _replace(inputs, audio=Path(args.audio).resolve(), audio_start_frame=args.audio_start_frame
                          if args.audio_start_frame is not None else shot.plate.start_frame)
    fr = _frames(args.frames)
    if fr:
        inputs = _replace(inputs, first=fr[0], last=fr[1])
    cfg = shot_qc_config(shot, **_measure_overrides(args))
    if args.out:
        out = Path(args.out)
    elif (layout.qc_dir / "report.html").exists():
        out = layout.qc_dir / ("recheck-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    else:
        out = layout.qc_dir
    return run_qc(inputs, out, cfg, provenance={"shot": str(shot.source), "shot version": layout.version,
                                                "shot config hash": shot.config_hash()[:16],
                                                "actor": shot.actor.id}, command=_command())


def _replace(inputs, **kw):
    from dataclasses import replace
    return replace(inputs, **kw)


def _command() -> str:
    return "portrait " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("portrait", "cli.py")) \
        else " ".join(sys.argv)


def _media_run(args: argparse.Namespace):
    from engine.io.ffmpeg import probe
    from engine.io.sequence import is_sequence_pattern
    from engine.qc.measure import MeasureConfig
    from engine.qc.stage import QcInputs, QcReportConfig, run_qc
    from engine.qc.gates import default_thresholds
    from engine.qc.media import RenderSource
    from engine.io.plate import open_plate

    if not args.plate:
        raise ConfigError("--render needs --plate (the footage the render replaces)")
    render, plate = Path(args.render).resolve(), Path(args.plate).resolve()
    fps = parse_fps(args.fps)
    if fps is None:
        for media in (plate, render):
            if not is_sequence_pattern(media):
                fps = probe(media).fps
                break
        else:
            from engine.io.exr import read_exr_header
            from engine.io.sequence import ImageSequenceSource
            seq = ImageSequenceSource(render)
            if seq.ext == ".exr":
                fps = read_exr_header(seq.path(seq.first)).get("framesPerSecond")
            if fps is None:
                raise ConfigError("two image sequences: give --fps")
    fps = Fraction(fps)
    plate_space = args.plate_colourspace or ("Rec.709" if not is_sequence_pattern(plate) else
                                             "ACEScg" if str(plate).lower().endswith(".exr") else "sRGB")
    with open_plate(plate, fps, args.plate_start) as p:
        pnums = p.frame_numbers
    with RenderSource(render, fps, start_frame=args.render_start, plate_colourspace=plate_space) as r:
        rnums = r.frame_numbers
    fr = _frames(args.frames)
    first, last = fr if fr else (max(pnums.start, rnums.start), min(pnums.stop, rnums.stop) - 1)
    if last < first:
        raise ConfigError(f"render frames {rnums.start}-{rnums.stop - 1} and plate frames "
                          f"{pnums.start}-{pnums.stop - 1} do not overlap (see --render-start / --plate-start)")
    thresholds = default_thresholds()
    for item in args.threshold or []:
        key, _, val = item.partition("=")
        if key not in thresholds:
            raise ConfigError(f"--threshold {key}: unknown (valid: {', '.join(thresholds)})")
        try:
            thresholds[key] = float(val)
        except ValueError:
            raise ConfigError(f"--threshold {item}: value must be a number") from None
    mc = MeasureConfig(ground_truth=not args.no_ground_truth, lmd_region=args.lmd_region, **_measure_overrides(args))
    audio = Path(args.audio).resolve() if args.audio else None
    plate_audio = Path(args.plate_audio).resolve() if args.plate_audio else None
    if plate_audio is None and not is_sequence_pattern(plate) and probe(plate).has_audio:
        plate_audio = plate
    inputs = QcInputs(render=render, plate=plate, fps=fps, first=first, last=last, plate_start_frame=args.plate_start,
                      plate_colourspace=plate_space, render_start_frame=args.render_start,
                      render_colourspace=args.render_colourspace, audio=audio,
                      audio_start_frame=args.audio_start_frame if args.audio_start_frame is not None else args.plate_start,
                      plate_audio=plate_audio if audio is not None else None,
                      drive=Path(args.drive).resolve() if args.drive else None,
                      tracking=Path(args.tracking).resolve() if args.tracking else None, title=render.name)
    out = Path(args.out or "qc_out")
    return run_qc(inputs, out, QcReportConfig(thresholds=thresholds, measure=mc), command=_command())


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if args.target and args.render:
        raise ConfigError("give a shot YAML or --render, not both")
    if args.target:
        if not args.target.lower().endswith((".yaml", ".yml")):
            raise ConfigError(f"{args.target}: expected a shot YAML (for a render use --render ... --plate ...)")
        res = _shot_run(args)
    elif args.render:
        res = _media_run(args)
    else:
        raise ConfigError("give a shot YAML, or --render RENDER --plate PLATE")
    print(f"verdict: {res.verdict}")
    for g in res.gates:
        if g.status == "fail":
            print(f"  FAIL {g.name}: {g.reason}")
    print(f"report:  {res.report}")
    print(f"metrics: {res.metrics}")
    return 0 if res.verdict == "PASS" else EXIT_FAIL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("qc", help="QC report: metrics, PASS/FAIL gates, contact sheet, plots (HTML + JSON)",
                       description="Measure a shot's latest render (or any render against its plate) and write "
                                   "a self-contained report.html and metrics.json. Exit 0 PASS, 3 FAIL.")
    p.add_argument("target", nargs="?", metavar="SHOT.yaml", help="shot YAML (uses its latest rendered version)")
    p.add_argument("--version", type=int, help="shot version number instead of the latest")
    p.add_argument("--render", help="render to check: image sequence (name.%%04d.exr / .png) or movie")
    p.add_argument("--plate", help="the plate (movie or image sequence) the render replaces")
    p.add_argument("--audio", help="dialogue audio the mouth should follow (default for a shot: its audio)")
    p.add_argument("--audio-start-frame", type=int, help="frame number at which the audio's first sample plays "
                                                         "(default: the plate's first frame)")
    p.add_argument("--plate-audio", help="the plate's production audio, taken as in sync: the AV-offset baseline "
                                         "(default: the plate movie's own audio track)")
    p.add_argument("--drive", help="drive file: landmark targets (needs --tracking, or the shot's plate tracking)")
    p.add_argument("--tracking", help="the plate's tracking file (with --drive)")
    p.add_argument("--out", help="output folder (default: the version's qc folder; ./qc_out for --render)")
    p.add_argument("--fps", help="frame rate when neither render nor plate is a movie")
    p.add_argument("--frames", help="check only FIRST-LAST (plate frame numbers)")
    p.add_argument("--plate-start", type=int, default=1001, help="frame number of a plate movie's first frame (1001)")
    p.add_argument("--render-start", type=int, default=1001, help="frame number of a render movie's first frame (1001)")
    p.add_argument("--plate-colourspace", help="plate colourspace (default: Rec.709 movie, sRGB PNG, ACEScg EXR)")
    p.add_argument("--render-colourspace", help="render colourspace (default: the EXR header's, else as the plate)")
    p.add_argument("--no-ground-truth", action="store_true",
                   help="the render changes the performance (dub / video drive): do not gate PSNR/SSIM")
    p.add_argument("--lmd-region", choices=("face", "mouth"), default="face", help="landmarks of the gated LMD")
    p.add_argument("--threshold", action="append", metavar="KEY=VALUE",
                   help="override a gate threshold (e.g. psnr_min=30); repeatable")
    p.add_argument("--no-perceptual", action="store_true", help="skip the ST-LPIPS distance (faster)")
    p.add_argument("--no-identity", action="store_true", help="skip dlib identity similarity (faster)")
    p.set_defaults(func=_run)
