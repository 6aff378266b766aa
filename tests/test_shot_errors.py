"""Broken shot files: each mistake gives exactly one clear problem naming the key path and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.shot import Problem, ShotConfigError, load_shot, validate_shot

# Line numbers below refer to this text (1-based).
BASE = """\
schema: portrait.shot/1
show: demo
sequence: sq010
shot: sh010
fps: 25
frames:
  first: 1001
  last: 1100
  handles: {head: 0, tail: 0}
plate:
  path: media/plate.mp4
actor:
  id: jdoe
  consent: internal test footage
drive:
  mode: audio
  source: media/dub.wav
  region: mouth
output:
  template: "{root}/{show}/{sequence}/{shot}/{task}/{version}"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "media").mkdir(exist_ok=True)
    (tmp_path / "media" / "plate.mp4").write_bytes(b"")
    (tmp_path / "media" / "dub.wav").write_bytes(b"")
    path = tmp_path / "shot.yaml"
    path.write_text(text)
    return path


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def one_problem(tmp_path: Path, text: str) -> Problem:
    path = write(tmp_path, text)
    problems = validate_shot(path)
    assert len(problems) == 1, "\n".join(map(str, problems))
    problem = problems[0]
    assert problem.file == str(path)
    # The one-line form editors understand.
    assert str(problem) == f"{path}:{problem.line}: {problem.key_path}: {problem.message}" \
        if problem.key_path else str(problem) == f"{path}:{problem.line}: {problem.message}"
    assert "\n" not in str(problem)
    return problem


def test_base_is_valid(tmp_path):
    assert validate_shot(write(tmp_path, BASE)) == []


def test_unknown_key_lists_valid_keys(tmp_path):
    p = one_problem(tmp_path, edit("  region: mouth\n", "  regoin: mouth\n"))
    assert (p.key_path, p.line) == ("drive.regoin", 18)
    assert "unknown key 'regoin'" in p.message
    assert "did you mean 'region'" in p.message
    assert "valid keys: mode, source, offset, region, pose" in p.message


def test_unknown_top_level_key(tmp_path):
    p = one_problem(tmp_path, BASE + "qualty: online\n")
    assert (p.key_path, p.line) == ("qualty", 21)
    assert "did you mean 'quality'" in p.message and "valid keys: schema, show," in p.message


def test_fps_zero_denominator(tmp_path):
    p = one_problem(tmp_path, edit("fps: 25\n", "fps: 24/0\n"))
    assert (p.key_path, p.line) == ("fps", 5)
    assert "denominator is zero" in p.message and "24/0" in p.message


@pytest.mark.parametrize("fps, words", [("0", "must be > 0"), ("-25", "must be > 0"),
                                        ("24.5", "ambiguous"), ("'abc'", "invalid frame rate"),
                                        ("true", "expected a frame rate")])
def test_fps_bad_values(tmp_path, fps, words):
    p = one_problem(tmp_path, edit("fps: 25\n", f"fps: {fps}\n"))
    assert (p.key_path, p.line) == ("fps", 5)
    assert words in p.message


def test_last_before_first(tmp_path):
    p = one_problem(tmp_path, edit("  last: 1100\n", "  last: 1000\n"))
    assert (p.key_path, p.line) == ("frames.last", 8)
    assert "1000 is before first frame 1001" in p.message


def test_missing_plate_file(tmp_path):
    p = one_problem(tmp_path, edit("  path: media/plate.mp4\n", "  path: media/nope.mp4\n"))
    assert (p.key_path, p.line) == ("plate.path", 11)
    assert "not found" in p.message and "media/nope.mp4" in p.message
    assert str(tmp_path / "media" / "nope.mp4") in p.message  # the resolved path too


def test_missing_plate_sequence(tmp_path):
    p = one_problem(tmp_path, edit("  path: media/plate.mp4\n", "  path: media/plate.####.exr\n"))
    assert (p.key_path, p.line) == ("plate.path", 11)
    assert "no files match" in p.message


def test_negative_handles(tmp_path):
    p = one_problem(tmp_path, edit("{head: 0, tail: 0}", "{head: 0, tail: -3}"))
    assert (p.key_path, p.line) == ("frames.handles.tail", 9)
    assert "must be >= 0" in p.message and "-3" in p.message


@pytest.mark.parametrize("label, words", [
    ("portrait.shoot/1", "unknown schema label 'portrait.shoot/1' (expected 'portrait.shot/1')"),
    ("portrait.shot/v1", "unknown schema label"),
    ("portrait.shot/99", "newer than this Portrait Engine understands"),
    ("1", "must be a string"),
])
def test_wrong_schema_label(tmp_path, label, words):
    p = one_problem(tmp_path, edit("schema: portrait.shot/1\n", f"schema: {label}\n"))
    assert (p.key_path, p.line) == ("schema", 1)
    assert words in p.message


def test_missing_schema_label(tmp_path):
    p = one_problem(tmp_path, edit("schema: portrait.shot/1\n", ""))
    assert p.key_path == "schema" and "missing schema label" in p.message


def test_duplicate_key(tmp_path):
    p = one_problem(tmp_path, edit("  last: 1100\n", "  last: 1100\n  first: 1001\n"))
    assert (p.key_path, p.line) == ("frames.first", 9)
    assert "duplicate key 'first'" in p.message and "line 7" in p.message


def test_duplicate_key_top_level_keeps_reporting_even_if_values_differ(tmp_path):
    p = one_problem(tmp_path, BASE + "fps: 30\n")
    assert (p.key_path, p.line) == ("fps", 21)
    assert "duplicate key 'fps'" in p.message


def test_list_instead_of_mapping(tmp_path):
    p = one_problem(tmp_path, edit("  first: 1001\n  last: 1100\n  handles: {head: 0, tail: 0}\n",
                                   "  - 1001\n  - 1100\n"))
    assert (p.key_path, p.line) == ("frames", 6)
    assert "expected a mapping" in p.message and "a list" in p.message


def test_top_level_list(tmp_path):
    p = one_problem(tmp_path, "- schema: portrait.shot/1\n- show: demo\n")
    assert p.key_path == "" and "expected a mapping of keys at the top level" in p.message


def test_invalid_yaml_has_line(tmp_path):
    p = one_problem(tmp_path, edit("  id: jdoe\n", "  id: jdoe: x\n"))
    assert p.line == 13 and p.key_path == ""
    assert p.message.startswith("invalid YAML:")


def test_invalid_yaml_tab_indent(tmp_path):
    p = one_problem(tmp_path, edit("  mode: audio\n", "\tmode: audio\n"))
    assert p.line == 16 and p.message.startswith("invalid YAML:")


def test_output_template_parent_dir(tmp_path):
    p = one_problem(tmp_path, edit("{root}/{show}/", "{root}/../{show}/"))
    assert (p.key_path, p.line) == ("output.template", 20)
    assert "'..'" in p.message


@pytest.mark.parametrize("template, words", [
    ("{show}/{task}/{version}", "must start with {root}"),
    ("{root}//abs/{task}/{version}", "empty, '.' or '..' components"),
    ("{root}/{user}/{task}/{version}", "field {user} is unknown"),
    ("{root}/{show}/{task}", "must contain {version}"),
    ("{root}/{show!r}/{task}/{version}", "format spec or conversion"),
    ("{root}/x..y/{task}/{version}", "'..'"),
])
def test_output_template_rules(tmp_path, template, words):
    p = one_problem(tmp_path, edit('"{root}/{show}/{sequence}/{shot}/{task}/{version}"', f'"{template}"'))
    assert p.key_path == "output.template" and words in p.message


def test_missing_required_key_reported_at_section_line(tmp_path):
    p = one_problem(tmp_path, edit("  last: 1100\n", ""))
    assert (p.key_path, p.line) == ("frames.last", 6)
    assert "required key is missing" in p.message


def test_empty_consent(tmp_path):
    p = one_problem(tmp_path, edit("  consent: internal test footage\n", "  consent: '  '\n"))
    assert (p.key_path, p.line) == ("actor.consent", 14)


def test_wrong_choice_suggests(tmp_path):
    p = one_problem(tmp_path, edit("  region: mouth\n", "  region: mouht\n"))
    assert (p.key_path, p.line) == ("drive.region", 18)
    assert "did you mean 'mouth'" in p.message and "allowed: mouth, face" in p.message


def test_wrong_types(tmp_path):
    p = one_problem(tmp_path, edit("  last: 1100\n", "  last: '1100'\n"))
    assert (p.key_path, p.line) == ("frames.last", 8) and "expected an integer" in p.message
    p = one_problem(tmp_path, edit("  last: 1100\n", "  last: true\n"))
    assert "expected an integer, got boolean true" in p.message


def test_yaml_11_booleans_are_not_booleans(tmp_path):
    p = one_problem(tmp_path, BASE + "render:\n  review_movie: {enabled: yes}\n")
    assert p.key_path == "render.review_movie.enabled" and "expected true or false" in p.message


def test_drive_source_required_and_forbidden(tmp_path):
    p = one_problem(tmp_path, edit("  source: media/dub.wav\n", ""))
    assert (p.key_path, p.line) == ("drive.source", 15) and "required for mode audio" in p.message
    p = one_problem(tmp_path, edit("  mode: audio\n", "  mode: none\n"))
    assert p.key_path == "drive.source" and "drive.mode is none" in p.message


def test_audio_drive_cannot_take_driving_pose(tmp_path):
    p = one_problem(tmp_path, edit("  region: mouth\n", "  region: mouth\n  pose: driving\n"))
    assert (p.key_path, p.line) == ("drive.pose", 19)


def test_face_model_path_rules(tmp_path):
    p = one_problem(tmp_path, BASE + "face_model: {kind: ict}\n")
    assert p.key_path == "face_model.path" and "required for kind ict" in p.message
    p = one_problem(tmp_path, BASE + "face_model: {kind: flame, path: models/none.pkl}\n")
    assert p.key_path == "face_model.path" and "not found" in p.message


def test_plate_must_cover_handles(tmp_path):
    p = one_problem(tmp_path, edit("  path: media/plate.mp4\n", "  path: media/plate.mp4\n  start_frame: 1005\n"))
    assert (p.key_path, p.line) == ("plate.start_frame", 12)


def test_single_image_is_not_a_plate(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "still.png").write_bytes(b"")
    p = one_problem(tmp_path, edit("media/plate.mp4", "media/still.png"))
    assert p.key_path == "plate.path" and "single image" in p.message


@pytest.mark.parametrize("tc, words", [
    ("'01:00:00:25'", "frame field must be < 25"),
    ("'1:00:00:00'", "expected HH:MM:SS:FF"),
    ("'01:00:00;00'", "only valid at 29.97 or 59.94"),
])
def test_bad_timecode(tmp_path, tc, words):
    p = one_problem(tmp_path, edit("  path: media/plate.mp4\n", f"  path: media/plate.mp4\n  timecode: {tc}\n"))
    assert (p.key_path, p.line) == ("plate.timecode", 12) and words in p.message


def test_dropped_drop_frame_timecode(tmp_path):
    text = edit("fps: 25\n", "fps: 29.97\n")
    p = one_problem(tmp_path, edit("  path: media/plate.mp4\n", "  path: media/plate.mp4\n  timecode: '00:01:00;01'\n", text))
    assert "does not exist in drop-frame" in p.message


def test_qc_unknown_metric(tmp_path):
    p = one_problem(tmp_path, BASE + "qc:\n  thresholds:\n    psnr_min: 30\n    sharpness_min: 2\n")
    assert (p.key_path, p.line) == ("qc.thresholds.sharpness_min", 24)
    assert "psnr_min, ssim_min, lmd_max_px, av_offset_max_frames" in p.message


def test_render_pass_listed_twice(tmp_path):
    p = one_problem(tmp_path, BASE + "render: {passes: [rgba, depth, rgba]}\n")
    assert p.key_path == "render.passes" and "more than once: rgba" in p.message


def test_python_tags_are_never_constructed(tmp_path):
    p = one_problem(tmp_path, BASE + "train:\n  overrides: {x: !!python/object/apply:os.system [touch pwned]}\n")
    assert "unsupported YAML tag" in p.message and p.line == 22
    assert not (tmp_path / "pwned").exists()


def test_all_problems_collected_in_line_order(tmp_path):
    text = edit("fps: 25\n", "fps: 24/0\n")
    text = edit("  last: 1100\n", "  last: 1000\n", text)
    text = edit("  region: mouth\n", "  regoin: mouth\n", text)
    text = edit("{root}/{show}/", "{root}/../{show}/", text)
    problems = validate_shot(write(tmp_path, text))
    assert [(p.key_path, p.line) for p in problems] == [
        ("fps", 5), ("frames.last", 8), ("drive.regoin", 18), ("output.template", 20)]


def test_load_shot_raises_config_error_with_problems(tmp_path):
    path = write(tmp_path, edit("fps: 25\n", "fps: 24/0\n"))
    with pytest.raises(ShotConfigError) as info:
        load_shot(path)
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    assert len(info.value.problems) == 1
    assert str(info.value) == str(info.value.problems[0])


def test_missing_shot_file(tmp_path):
    problems = validate_shot(tmp_path / "nope.yaml")
    assert len(problems) == 1 and "shot file not found" in problems[0].message


def test_empty_file(tmp_path):
    p = one_problem(tmp_path, "# only a comment\n")
    assert "file is empty" in p.message


def test_alias_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    p = one_problem(tmp_path, "\n".join(lines) + "\n")
    assert "alias bomb" in p.message
