"""The committed shot reference is exactly what the schema generates (it cannot go stale)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.shot import SCHEMA_LABEL, parse_shot
from engine.shot.docs import _sections, example_yaml, render_reference
from engine.shot.fields import config_fields
from engine.shot.schema import Shot
from engine.shot.yaml_reader import parse_yaml

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "shot_reference.md"


def test_committed_reference_is_current():
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        "docs/shot_reference.md is stale: run `python -m engine.shot.docs > docs/shot_reference.md`")


def test_module_prints_reference():
    python = REPO / ".venv" / "bin" / "python"
    out = subprocess.run([str(python if python.exists() else sys.executable), "-m", "engine.shot.docs"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == render_reference()


def test_reference_covers_every_key():
    text = render_reference()
    assert text.startswith(f"# Shot YAML reference (`{SCHEMA_LABEL}`)")
    for prefix, cls in [("", Shot)] + [(name + ".", c) for name, c in _sections(Shot, "")]:
        for f in config_fields(cls):
            assert f"| `{prefix}{f.name}` |" in text, prefix + f.name


def test_documented_example_is_a_valid_shot(tmp_path):
    data = parse_yaml(example_yaml()).data
    shot = parse_shot(data, base_dir=tmp_path, check_files=False)
    assert shot.drive.mode == "audio" and shot.face_model.kind == "ict"
    assert shot.frames.render_first == shot.plate.start_frame
