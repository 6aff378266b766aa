"""Valid shot files: typed values, defaults, path resolution, rationals, round trips, hashing."""
from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import pytest

from engine.shot import (SCHEMA_LABEL, Shot, ShotConfigError, load_shot, parse_shot, shot_to_dict,
                         timecode_to_frames, validate_shot)
from engine.shot.values import parse_fps

MINIMAL = """\
schema: portrait.shot/1
show: demo
sequence: sq010
shot: sh010
fps: 25
frames: {last: 1100}
plate: {path: media/plate.mp4}
actor: {id: jdoe, consent: internal test footage}
"""


def write(folder: Path, text: str, name: str = "shot.yaml") -> Path:
    (folder / "media").mkdir(parents=True, exist_ok=True)
    for f in ("plate.mp4", "dub.wav", "drive.mov"):
        (folder / "media" / f).write_bytes(b"")
    path = folder / name
    path.write_text(text)
    return path


def test_minimal_shot_defaults(tmp_path):
    shot = load_shot(write(tmp_path, MINIMAL))
    assert shot.schema == SCHEMA_LABEL
    assert (shot.show, shot.sequence, shot.shot, shot.version) == ("demo", "sq010", "sh010", "auto")
    assert shot.fps == Fraction(25) and isinstance(shot.fps, Fraction)
    assert (shot.frames.first, shot.frames.last) == (1001, 1100)
    assert (shot.frames.handles.head, shot.frames.handles.tail) == (0, 0)
    assert shot.plate.path == tmp_path / "media" / "plate.mp4"
    assert shot.plate.colourspace == "Rec.709"           # auto, video
    assert shot.plate.start_frame == 1001                # frames.first - handles.head
    assert shot.plate.audio is None and shot.plate.timecode is None
    assert shot.actor.media == (shot.plate.path,)        # default: train on the plate
    assert shot.actor.model is None
    assert shot.face_model.kind == "builtin" and shot.face_model.path is None
    assert (shot.drive.mode, shot.drive.source, shot.drive.offset) == ("none", None, 0)
    assert (shot.drive.region, shot.drive.pose) == ("face", "plate")
    assert shot.quality == "offline" and shot.train.preset == "final" and shot.train.overrides == {}
    assert shot.render.passes == ("rgba", "neural", "matte", "depth", "normals", "st")
    assert (shot.render.compression, shot.render.layout) == ("zip", "multilayer")
    rm = shot.render.review_movie
    assert (rm.enabled, rm.side_by_side, rm.burn_in) == (True, False, True)
    assert shot.output.root == tmp_path / "portrait_out"
    assert shot.output.template == "{root}/{show}/{sequence}/{shot}/{task}/{version}"
    assert shot.qc.thresholds.av_offset_max_frames == 1
    assert set(shot.qc.thresholds.as_dict()) >= {"psnr_min", "lmd_max_px", "flicker_max", "identity_min"}
    assert shot.executor.kind == "local" and shot.executor.slurm.time_min > 0
    assert shot.source == tmp_path / "shot.yaml"
    assert shot.raw["frames"] == {"last": 1100}          # the file as written
    assert not (tmp_path / "portrait_out").exists()     # loading writes nothing


def test_frozen(tmp_path):
    shot = load_shot(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        shot.fps = Fraction(24)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        shot.frames.last = 5  # type: ignore[misc]


def test_handles_and_frame_range(tmp_path):
    text = MINIMAL.replace("frames: {last: 1100}", "frames: {first: 1001, last: 1100, handles: {head: 8, tail: 4}}")
    shot = load_shot(write(tmp_path, text))
    assert shot.frames.render_first == 993 and shot.frames.render_last == 1104
    assert shot.frames.render_count == 112 and list(shot.frames.render_frames())[:2] == [993, 994]
    assert shot.plate.start_frame == 993


def test_relative_paths_resolve_against_yaml_folder(tmp_path, monkeypatch):
    shots = tmp_path / "project" / "shots"
    shots.mkdir(parents=True)
    write(tmp_path / "project", "")
    text = (MINIMAL.replace("media/plate.mp4", "../media/plate.mp4")
            + "drive: {mode: audio, source: ../media/dub.wav}\n"
            + "output: {root: ../renders}\n")
    path = write(shots, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    shot = load_shot(Path("..") / "project" / "shots" / "shot.yaml")
    media = tmp_path / "project" / "media"
    assert shot.plate.path == media / "plate.mp4" and shot.plate.path.is_absolute()
    assert shot.drive.source == media / "dub.wav"
    assert shot.output.root == tmp_path / "project" / "renders"
    assert shot.source == path


def test_absolute_and_home_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, "")
    text = MINIMAL.replace("media/plate.mp4", "~/media/plate.mp4") + f"output: {{root: {tmp_path}/out}}\n"
    sub = tmp_path / "a"
    sub.mkdir()
    shot = load_shot(write(sub, text))
    assert shot.plate.path == tmp_path / "media" / "plate.mp4"
    assert shot.output.root == tmp_path / "out"


@pytest.mark.parametrize("written, expected", [
    ("24", Fraction(24)), ("25", Fraction(25)), ("25.0", Fraction(25)),
    ("23.976", Fraction(24000, 1001)), ("23.98", Fraction(24000, 1001)),
    ("29.97", Fraction(30000, 1001)), ("59.94", Fraction(60000, 1001)),
    ("'24000/1001'", Fraction(24000, 1001)), ("30000/1001", Fraction(30000, 1001)),
    ("'48/2'", Fraction(24)), ("'23.976'", Fraction(24000, 1001)), ("'30'", Fraction(30)),
])
def test_fps_rationals(tmp_path, written, expected):
    shot = load_shot(write(tmp_path, MINIMAL.replace("fps: 25", f"fps: {written}")))
    assert shot.fps == expected and isinstance(shot.fps, Fraction)


@pytest.mark.parametrize("bad", ["24/0", 0, -1, 24.5, 23.9, "abc", True, None, "1/1001"])
def test_parse_fps_rejects(bad):
    with pytest.raises(ValueError):
        parse_fps(bad)


def test_versions(tmp_path):
    for written, expected in (("v003", 3), ("3", 3), ("'007'", 7), ("auto", "auto"), ("V012", 12)):
        shot = load_shot(write(tmp_path, MINIMAL + f"version: {written}\n"))
        assert shot.version == expected
    assert load_shot(write(tmp_path, MINIMAL + "version: 4\n")).version_label == "v004"


def test_numeric_names_are_kept_as_written(tmp_path):
    # YAML 1.1 would make `010` octal 8; names keep their zero padding.
    text = MINIMAL.replace("sequence: sq010", "sequence: 020").replace("shot: sh010", "shot: 010")
    shot = load_shot(write(tmp_path, text))
    assert (shot.sequence, shot.shot) == ("020", "010")


def test_timecode_is_a_string_even_unquoted(tmp_path):
    # YAML 1.1 would read 10:00:00:00 as the base-60 integer 2160000.
    text = MINIMAL.replace("plate: {path: media/plate.mp4}", "plate: {path: media/plate.mp4, timecode: 10:00:00:00}")
    shot = load_shot(write(tmp_path, text))
    assert shot.plate.timecode == "10:00:00:00"
    assert shot.plate.timecode_frames(shot.fps) == 10 * 3600 * 25


def test_drop_frame_timecode_counts():
    ntsc = Fraction(30000, 1001)
    assert timecode_to_frames("00:01:00;02", ntsc) == 1800
    assert timecode_to_frames("00:10:00;00", ntsc) == 17982
    assert timecode_to_frames("01:00:00;00", ntsc) == 107892
    assert timecode_to_frames("01:00:00:00", Fraction(24000, 1001)) == 86400


def test_image_sequence_plate_and_colourspace(tmp_path):
    plates = tmp_path / "plates"
    plates.mkdir()
    for f in (993, 994, 1100):
        (plates / f"sh010.{f:04d}.exr").write_bytes(b"")
    for pattern in ("plates/sh010.####.exr", "plates/sh010.%04d.exr"):
        text = MINIMAL.replace("media/plate.mp4", pattern)
        shot = load_shot(write(tmp_path, text))
        assert shot.plate.is_sequence and shot.plate.colourspace == "ACEScg"
        assert shot.plate.frame_path(994) == plates / "sh010.0994.exr"
    (plates / "ref.0001.png").write_bytes(b"")
    shot = load_shot(write(tmp_path, MINIMAL.replace("media/plate.mp4", "plates/ref.%04d.png")))
    assert shot.plate.colourspace == "sRGB"
    shot = load_shot(write(tmp_path, MINIMAL.replace("media/plate.mp4", "plates/ref.%04d.png")
                           .replace("plate: {path: plates/ref.%04d.png}",
                                    "plate: {path: plates/ref.%04d.png, colourspace: acescg}")))
    assert shot.plate.colourspace == "ACEScg"  # case-insensitive, canonical spelling


def test_drive_defaults_follow_mode(tmp_path):
    audio = load_shot(write(tmp_path, MINIMAL + "drive: {mode: audio, source: media/dub.wav, offset: -3}\n"))
    assert (audio.drive.region, audio.drive.pose, audio.drive.offset) == ("mouth", "plate", -3)
    video = load_shot(write(tmp_path, MINIMAL + "drive: {mode: video, source: media/drive.mov, pose: relative}\n"))
    assert (video.drive.region, video.drive.pose) == ("face", "relative")
    explicit = load_shot(write(tmp_path, MINIMAL + "drive: {mode: audio, source: media/dub.wav, region: face}\n"))
    assert explicit.drive.region == "face"


def test_train_overrides_flattened(tmp_path):
    text = MINIMAL + "train:\n  preset: draft\n  overrides:\n    stage1: {iterations: 500, lr: 1e-4}\n    loss.lpips: 0.5\n"
    shot = load_shot(write(tmp_path, text))
    assert shot.train.overrides == {"loss.lpips": 0.5, "stage1.iterations": 500, "stage1.lr": 1e-4}
    with pytest.raises(ShotConfigError, match="given twice"):
        load_shot(write(tmp_path, MINIMAL + "train: {overrides: {a: {b: 1}, a.b: 2}}\n"))


def test_render_passes_canonical_order(tmp_path):
    shot = load_shot(write(tmp_path, MINIMAL + "render: {passes: [depth, RGBA, matte]}\n"))
    assert shot.render.passes == ("rgba", "matte", "depth")


def test_slurm_executor_parameters(tmp_path):
    from engine.shotgraph import executor_config
    text = MINIMAL + ("executor:\n  kind: slurm\n  slurm: {partition: gpu, time_min: 30, account: vfx,"
                      " setup: [module load ffmpeg], additional: {exclude: node07}}\n")
    shot = load_shot(write(tmp_path, text))
    config = executor_config(shot)  # the pipeline checks every name against its valid list
    params = config.params
    assert config.kind == "slurm"
    assert params["partition"] == "gpu" and params["time_min"] == 30
    assert params["account"] == "vfx" and params["setup"] == ["module load ffmpeg"]
    assert params["additional_parameters"] == {"exclude": "node07"}
    assert "qos" not in params  # unset options are left to the cluster


def test_round_trip_through_dict(tmp_path):
    text = (MINIMAL.replace("fps: 25", "fps: 23.976") + "version: 3\n"
            + "drive: {mode: audio, source: media/dub.wav}\n")
    shot = load_shot(write(tmp_path, text))
    data = shot_to_dict(shot)
    json.dumps(data)  # JSON-able
    assert data["fps"] == "24000/1001" and data["version"] == 3
    assert "source" not in data and "raw" not in data
    other = tmp_path / "other"
    other.mkdir()
    again_path = other / "again.yaml"
    again_path.write_text(json.dumps(data))  # JSON is YAML; paths are absolute now
    again = load_shot(again_path)
    assert again == shot
    assert again.config_hash() == shot.config_hash()
    assert parse_shot(data, base_dir=other) == shot


def test_config_hash_ignores_spelling_but_not_meaning(tmp_path):
    a = load_shot(write(tmp_path, MINIMAL, "a.yaml"))
    spelled = (MINIMAL.replace("fps: 25", "fps: '25/1'")
               .replace("frames: {last: 1100}", "frames:\n  last: 1100\n  first: 1001\n  handles: {head: 0}")
               + "render: {compression: ZIP}\n# a comment\n")
    b = load_shot(write(tmp_path, spelled, "b.yaml"))
    assert a == b and a.config_hash() == b.config_hash()
    c = load_shot(write(tmp_path, MINIMAL.replace("last: 1100", "last: 1101"), "c.yaml"))
    assert c.config_hash() != a.config_hash()
    assert len(a.config_hash()) == 64
    # Where a shot runs is not what it renders: the executor section does not change the hash.
    farm = load_shot(write(tmp_path, MINIMAL + "executor:\n  kind: slurm\n  slurm: {time_min: 240}\n", "d.yaml"))
    assert farm.executor.kind == "slurm" and farm.config_hash() == a.config_hash()


def test_parse_shot_from_dict(tmp_path):
    write(tmp_path, "")
    data = {"schema": SCHEMA_LABEL, "show": "demo", "sequence": "sq", "shot": "sh", "fps": 24,
            "frames": {"last": 1010}, "plate": {"path": "media/plate.mp4"},
            "actor": {"id": "a", "consent": "ok"}}
    shot = parse_shot(data, base_dir=tmp_path)
    assert shot.plate.path == tmp_path / "media" / "plate.mp4"
    with pytest.raises(ShotConfigError) as info:
        parse_shot({**data, "fps": "24/0"}, base_dir=tmp_path, file="inline")
    assert [str(p) for p in info.value.problems] == ["inline: fps: invalid frame rate '24/0': denominator is zero"]


def test_check_files_false_skips_existence_only(tmp_path):
    path = tmp_path / "shot.yaml"
    path.write_text(MINIMAL)  # no media written
    assert load_shot(path, check_files=False).plate.path == tmp_path / "media" / "plate.mp4"
    with pytest.raises(ShotConfigError, match="not found"):
        load_shot(path)
    path.write_text(MINIMAL.replace("fps: 25", "fps: 24/0"))
    with pytest.raises(ShotConfigError, match="denominator"):
        load_shot(path, check_files=False)


def test_output_template_follows_the_version_allocator(tmp_path):
    from engine.pipeline import allocate_version
    text = MINIMAL + "output: {template: '{root}/{show}/{shot}/{task}/{version}'}\n"
    shot = load_shot(write(tmp_path, text))
    v = allocate_version(shot.output.template, {"root": shot.output.root, "show": shot.show,
                                                "sequence": shot.sequence, "shot": shot.shot, "task": "render"},
                         config_hash=shot.config_hash())
    assert v.path == tmp_path / "portrait_out" / "demo" / "sh010" / "render" / "v001"
    v.release()
    # {version} must be a whole folder name (the allocator creates and seals that folder).
    bad = MINIMAL + "output: {template: '{root}/{shot}_{task}/{shot}_{version}'}\n"
    problems = validate_shot(write(tmp_path, bad))
    assert len(problems) == 1 and problems[0].key_path == "output.template"
    assert "last component" in problems[0].message


def test_merge_keys_and_anchors(tmp_path):
    text = MINIMAL + ("render:\n  review_movie: {enabled: true, burn_in: false}\n"
                      "executor:\n  slurm:\n    additional:\n      <<: &common {exclude: node01}\n"
                      "      mail-type: END\n")
    shot = load_shot(write(tmp_path, text))
    assert shot.render.review_movie.burn_in is False
    assert shot.executor.slurm.additional == {"exclude": "node01", "mail-type": "END"}
    # Overriding a merged key is not a duplicate key.
    shot = load_shot(write(tmp_path, MINIMAL + "executor: {slurm: {additional: {<<: {exclude: n1}, exclude: n2}}}\n"))
    assert shot.executor.slurm.additional == {"exclude": "n2"}


def test_shot_is_picklable(tmp_path):
    # submitit pickles stage arguments to send them to workers.
    import pickle
    shot = load_shot(write(tmp_path, MINIMAL + "train: {overrides: {a.b: 1}}\n"))
    again = pickle.loads(pickle.dumps(shot))
    assert again == shot and again.raw == shot.raw


def test_shot_class_fields_all_documented():
    from engine.shot.docs import _sections
    from engine.shot.fields import config_fields
    for _, cls in [("", Shot)] + _sections(Shot, ""):
        for f in config_fields(cls):
            assert f.metadata["doc"].strip() and "\n" not in f.metadata["doc"], f.name
            assert f.metadata["example"] is not None, f.name
