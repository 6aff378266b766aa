"""QC on real speech footage (../shared): a shot whose dialogue is shifted by 5 frames FAILS on
lip sync, with an AV offset of about 5 frames named as the reason.

The shot is the primary actor plate (25 fps, production audio in the file) rendered
pass-through by the pipeline (the neural renderer is not wired into the shot graph yet), with
``plate.audio`` pointing at the plate's own audio delayed by 5 frames (3200 samples at 16 kHz).
The plate's own track stays the in-sync baseline of the estimator.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.io.audio import extract_audio, write_wav
from tools.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PLATE = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"

pytestmark = [pytest.mark.slow, pytest.mark.shared,
              pytest.mark.skipif(not PLATE.is_file(), reason=f"needs the shared actor plate {PLATE}")]

SHOT = """\
schema: portrait.shot/1
show: qc
sequence: sq010
shot: {name}
fps: 25
frames: {{first: 1001, last: 1150}}
plate: {{path: {plate}, colourspace: Rec.709, audio: {audio}}}
actor: {{id: edtalk, consent: "shared test media, internal QC test only"}}
drive: {{mode: none}}
render: {{review_movie: {{enabled: true, burn_in: false}}}}
output: {{root: out}}
executor: {{kind: debug}}
"""


def test_audio_shifted_by_five_frames_fails_on_av_offset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    audio = extract_audio(PLATE, 16000)
    late = tmp_path / "dialogue_late5.wav"
    write_wav(late, np.concatenate([np.zeros(5 * 640, np.float32), audio]), 16000)   # 5 frames at 25 fps
    shot = tmp_path / "shot.yaml"
    shot.write_text(SHOT.format(name="sh_late5", plate=PLATE, audio=late))
    # A pass-through render (no actor model): the audio/picture offset is what is under test.
    assert main(["run", str(shot), "--no-train"]) == 0
    capsys.readouterr()
    code = main(["qc", str(shot), "--no-perceptual", "--no-identity", "--out", str(tmp_path / "qc")])
    out = capsys.readouterr().out
    assert code == 3 and "verdict: FAIL" in out and "FAIL av_offset_max_frames" in out, out
    m = json.loads((tmp_path / "qc" / "metrics.json").read_text())
    assert m["verdict"] == "FAIL"
    gate = next(g for g in m["gates"] if g["name"] == "av_offset_max_frames")
    assert gate["status"] == "fail" and abs(gate["value"] - 5.0) < 1.0, gate
    assert "frames apart" in gate["reason"]
    # the shift is the only thing wrong with this pass-through: it is the one failing gate
    assert m["failing"] == ["av_offset_max_frames"] and m["gates"][0]["name"] == "av_offset_max_frames"
    assert m["summary"]["lmd_px"] == 0.0 and m["summary"]["no_face_frames"] == []
    assert m["lipsync"]["phones"], "pocketsphinx aligned no phones on real speech"
    assert m["review_movie"]["ok"]
