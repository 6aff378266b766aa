"""The audio benchmark's cross-validation re-times the phones of a rotated track."""
from fractions import Fraction

import numpy as np
import pytest

from engine.audio.phones import Phone

pytest.importorskip("bench.audio_drive")
from bench.audio_drive import _rotate_phones  # noqa: E402


def test_rotated_phones_follow_their_frames_and_the_seam_is_dropped():
    fps, n = Fraction(25), 100                      # a 4 s track
    phones = [Phone("M", 0.20, 0.32), Phone("AA", 1.96, 2.08), Phone("B", 2.40, 2.52), Phone("IY", 3.60, 3.80)]
    first = 50                                      # new frame i is old frame (i + 50) % 100
    out = _rotate_phones(phones, first, n, fps)
    labels = [p.label for p in out]
    assert "AA" not in labels                       # 1.96-2.08 s straddles the seam at 2.0 s
    by = {p.label: p for p in out}
    # B (old 2.40 s = frame 60) is new frame 10; M (old frame 5) wraps to new frame 55
    assert by["B"].start_s == pytest.approx(0.40) and by["B"].end_s == pytest.approx(0.52)
    assert by["M"].start_s == pytest.approx(2.20) and by["M"].end_s == pytest.approx(2.32)
    assert by["IY"].start_s == pytest.approx(1.60)
    assert [p.start_s for p in out] == sorted(p.start_s for p in out)
    # the frame under each re-timed phone holds the same old frame as before the rotation
    perm = (np.arange(n) + first) % n
    for p in out:
        new_f = int(p.start_s * fps + 1e-9)
        old = next(q for q in phones if q.label == p.label)
        assert perm[new_f] == int(old.start_s * fps + 1e-9)


def test_no_rotation_keeps_every_phone():
    phones = [Phone("P", 0.0, 0.1), Phone("AH", 3.9, 4.0)]
    assert _rotate_phones(phones, 0, 100, Fraction(25)) == phones
