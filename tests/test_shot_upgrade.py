"""Schema versions: older files are upgraded through the registered chain; newer/unknown refused."""
from __future__ import annotations

from fractions import Fraction

import pytest

from engine.shot import CURRENT_VERSION, SCHEMA_LABEL, load_shot, register_upgrade, validate_shot
from engine.shot.upgrade import (SHOT_UPGRADES, UpgradeError, UpgradeRegistry, parse_schema_label,
                                 unregister_upgrade)

# A hypothetical portrait.shot/0: flat plate path and fps as two integers.
V0 = """\
schema: portrait.shot/0
show: demo
sequence: sq010
shot: sh010
fps_num: 24000
fps_den: 1001
frames: {last: 1100}
plate_path: plate.mp4
actor: {id: jdoe, consent: internal test footage}
"""


@pytest.fixture
def v0_upgrade():
    assert CURRENT_VERSION == 1, "update this test's hypothetical version chain"
    assert 0 not in SHOT_UPGRADES.versions()

    @register_upgrade(0)
    def _v0_to_v1(data: dict) -> dict:
        data["fps"] = f"{data.pop('fps_num')}/{data.pop('fps_den')}"
        data["plate"] = {"path": data.pop("plate_path")}
        return data

    yield _v0_to_v1
    unregister_upgrade(0)
    assert 0 not in SHOT_UPGRADES.versions()


def test_old_version_is_upgraded_on_load(tmp_path, v0_upgrade):
    (tmp_path / "plate.mp4").write_bytes(b"")
    path = tmp_path / "old.yaml"
    path.write_text(V0)
    shot = load_shot(path)
    assert shot.schema == SCHEMA_LABEL
    assert shot.fps == Fraction(24000, 1001)
    assert shot.plate.path == tmp_path / "plate.mp4"
    assert shot.raw["schema"] == "portrait.shot/0" and "fps_num" in shot.raw  # the file as written


def test_upgraded_data_is_validated_with_today_rules(tmp_path, v0_upgrade):
    (tmp_path / "plate.mp4").write_bytes(b"")
    path = tmp_path / "old.yaml"
    path.write_text(V0.replace("fps_den: 1001", "fps_den: 0"))
    problems = validate_shot(path)
    assert len(problems) == 1 and problems[0].key_path == "fps"
    assert "denominator is zero" in problems[0].message


def test_upgrade_function_failure_is_a_problem(tmp_path, v0_upgrade):
    path = tmp_path / "old.yaml"
    path.write_text(V0.replace("plate_path: plate.mp4\n", ""))
    problems = validate_shot(path)
    assert len(problems) == 1
    assert problems[0].key_path == "schema" and problems[0].line == 1
    assert "cannot upgrade from portrait.shot/0" in problems[0].message and "plate_path" in problems[0].message


def test_old_version_without_upgrade_is_refused(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(V0)
    problems = validate_shot(path)
    assert len(problems) == 1 and problems[0].key_path == "schema"
    assert "no upgrade registered from portrait.shot/0 to portrait.shot/1" in problems[0].message


def test_registry_runs_chain_in_order_on_a_copy():
    reg = UpgradeRegistry()
    seen = []

    @reg.register(1)
    def one(d):
        seen.append((1, d["schema"]))
        d["a"] = d.pop("x")
        return d

    @reg.register(2)
    def two(d):
        seen.append((2, d["schema"]))
        d["b"] = d["a"] * 2
        return d

    @reg.register(3)
    def three(d):
        seen.append((3, d["schema"]))
        d["c"] = d.pop("b") + 1
        return d

    original = {"schema": "portrait.shot/1", "x": 5}
    out = reg.upgrade(original, 1, 4)
    assert out == {"schema": "portrait.shot/4", "a": 5, "c": 11}
    assert seen == [(1, "portrait.shot/1"), (2, "portrait.shot/2"), (3, "portrait.shot/3")]
    assert original == {"schema": "portrait.shot/1", "x": 5}  # not mutated
    assert reg.upgrade({"schema": "portrait.shot/2", "a": 1}, 2, 3)["b"] == 2  # mid-chain start
    with pytest.raises(UpgradeError, match="no upgrade registered from portrait.shot/4"):
        reg.upgrade(original, 1, 5)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(2)(lambda d: d)
    reg.unregister(2)
    with pytest.raises(UpgradeError, match="from portrait.shot/2"):
        reg.upgrade(original, 1, 4)


def test_upgrade_must_return_mapping():
    reg = UpgradeRegistry()
    reg.register(0)(lambda d: [d])
    with pytest.raises(UpgradeError, match="not a mapping"):
        reg.upgrade({}, 0, 1)


def test_parse_schema_label():
    assert parse_schema_label(SCHEMA_LABEL) == CURRENT_VERSION
    assert parse_schema_label("portrait.shot/0") == 0
    for bad in ("portrait.shot/2", "portrait.shot", "otio.shot/1", "portrait.shot/-1", 1, None):
        with pytest.raises(ValueError):
            parse_schema_label(bad)
