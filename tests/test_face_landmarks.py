"""Dense landmarks: index sets, tessellation, measures, and tracking on real footage."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError, MediaError
from engine.face import landmarks as L

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ACTOR = SHARED / "media" / "actor" / "EDTalk__pose_source2.mp4"
OTHER = SHARED / "media" / "actor" / "styletalk__Obama_clip2.mp4"

try:
    from mediapipe.python.solutions import face_mesh_connections as conn
except ImportError:  # pragma: no cover
    conn = None


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    """First ``count`` frames as RGB uint8 (cv2 here: engine.io is developed separately)."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def need_shared(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared test media absent: {path}")


@pytest.fixture(scope="module")
def actor_frames():
    need_shared(ACTOR)
    frames = read_frames(ACTOR, 100)
    assert len(frames) == 100
    return frames


@pytest.fixture(scope="module")
def actor_track(actor_frames):
    return L.track_frames(actor_frames, L.LandmarkConfig())


def _vset(edges) -> set[int]:
    return {i for e in edges for i in e}


# --------------------------------------------------------------------------------------
# Index sets
# --------------------------------------------------------------------------------------
def test_index_sets_match_mediapipe_connections():
    assert len(L.LIPS_OUTER) == 20 and len(L.LIPS_INNER) == 20
    assert set(L.LIPS_OUTER).isdisjoint(L.LIPS_INNER)
    assert set(L.LIPS_OUTER) | set(L.LIPS_INNER) == _vset(conn.FACEMESH_LIPS)
    assert set(L.RIGHT_EYE) == _vset(conn.FACEMESH_RIGHT_EYE) and len(L.RIGHT_EYE) == 16
    assert set(L.LEFT_EYE) == _vset(conn.FACEMESH_LEFT_EYE) and len(L.LEFT_EYE) == 16
    assert set(L.FACE_OVAL) == _vset(conn.FACEMESH_FACE_OVAL) and len(L.FACE_OVAL) == 36
    assert set(L.RIGHT_IRIS[1:]) == _vset(conn.FACEMESH_RIGHT_IRIS) and L.RIGHT_IRIS[0] == 468
    assert set(L.LEFT_IRIS[1:]) == _vset(conn.FACEMESH_LEFT_IRIS) and L.LEFT_IRIS[0] == 473
    # every loop is a closed walk along the connection set's edges
    for loop, edges in ((L.LIPS_OUTER, conn.FACEMESH_LIPS), (L.LIPS_INNER, conn.FACEMESH_LIPS),
                        (L.RIGHT_EYE, conn.FACEMESH_RIGHT_EYE), (L.LEFT_EYE, conn.FACEMESH_LEFT_EYE),
                        (L.FACE_OVAL, conn.FACEMESH_FACE_OVAL)):
        und = {tuple(sorted(e)) for e in edges}
        for a, b in zip(loop, loop[1:] + loop[:1]):
            assert tuple(sorted((a, b))) in und
    # the hand-picked measurement indices belong to the sets they claim to
    assert set(L.MOUTH_CORNERS) <= set(L.LIPS_OUTER)
    assert {i for p in L.INNER_LIP_PAIRS for i in p} <= set(L.LIPS_INNER)
    assert {i for p in L.EYELID_PAIRS["right"] for i in p} | set(L.EYE_CORNERS["right"]) <= set(L.RIGHT_EYE)
    assert {i for p in L.EYELID_PAIRS["left"] for i in p} | set(L.EYE_CORNERS["left"]) <= set(L.LEFT_EYE)
    assert L.INTEROCULAR == (33, 263)


# --------------------------------------------------------------------------------------
# Tessellation
# --------------------------------------------------------------------------------------
def _edge_stats(tris: np.ndarray):
    half = collections.Counter((int(t[i]), int(t[(i + 1) % 3])) for t in tris for i in range(3))
    und = collections.Counter(tuple(sorted(e)) for e in half.elements())
    return half, und


def _boundary_loops(tris: np.ndarray) -> list[set[int]]:
    half, und = _edge_stats(tris)
    bnd = [e for e, n in und.items() if n == 1]
    adj = collections.defaultdict(set)
    for a, b in bnd:
        adj[a].add(b)
        adj[b].add(a)
    loops, seen = [], set()
    for v in adj:
        if v in seen:
            continue
        comp, stack = set(), [v]
        while stack:
            x = stack.pop()
            if x not in comp:
                comp.add(x)
                stack.extend(adj[x])
        seen |= comp
        loops.append(comp)
    return loops


def test_triangles_form_an_oriented_open_surface():
    tris = L.mediapipe_triangles()
    assert tris.shape == (852, 3) and tris.dtype == np.int32
    assert tris.min() == 0 and tris.max() == 467
    assert len({tuple(sorted(t)) for t in tris.tolist()}) == len(tris)
    assert all(len(set(t)) == 3 for t in tris.tolist())
    half, und = _edge_stats(tris)
    assert max(und.values()) <= 2                       # manifold: an edge borders <= 2 faces
    assert max(half.values()) == 1                      # consistent orientation
    assert set(und) == {tuple(sorted(e)) for e in conn.FACEMESH_TESSELATION}  # every edge used
    verts = len(np.unique(tris))
    assert verts == 468
    assert verts - len(und) + len(tris) == -2           # disc with 3 holes (mouth, two eyes)
    loops = _boundary_loops(tris)
    assert sorted(map(sorted, loops)) == sorted(
        sorted(s) for s in (L.FACE_OVAL, L.LIPS_INNER, L.RIGHT_EYE, L.LEFT_EYE))
    assert L.mediapipe_triangles() is tris              # cached
    assert not tris.flags.writeable


def test_filled_triangles_close_mouth_and_eyes():
    tris = L.mediapipe_triangles(fill_holes=True)
    assert tris.shape == (898, 3)                       # the canonical mesh's triangle count
    half, und = _edge_stats(tris)
    assert max(und.values()) <= 2 and max(half.values()) == 1
    assert 468 - len(und) + len(tris) == 1              # a disc
    assert [sorted(s) for s in _boundary_loops(tris)] == [sorted(L.FACE_OVAL)]


# --------------------------------------------------------------------------------------
# Measures (synthetic)
# --------------------------------------------------------------------------------------
def _synthetic_points() -> np.ndarray:
    p = np.zeros((478, 3), np.float32)
    p[33, :2], p[263, :2] = (100, 100), (160, 100)      # inter-ocular 60
    p[133, :2], p[362, :2] = (120, 100), (140, 100)
    for (up, lo), x in zip(L.INNER_LIP_PAIRS, (125, 130, 135)):
        p[up, :2], p[lo, :2] = (x, 150), (x, 156)       # gap 6
    p[61, :2], p[291, :2] = (115, 153), (145, 153)      # mouth width 30
    for (up, lo), x in zip(L.EYELID_PAIRS["right"], (105, 110, 115)):
        p[up, :2], p[lo, :2] = (x, 97), (x, 103)        # lid gap 6, width 20 -> 0.3
    for (up, lo), x in zip(L.EYELID_PAIRS["left"], (145, 150, 155)):
        p[up, :2], p[lo, :2] = (x, 99), (x, 101)        # lid gap 2, width 20 -> 0.1
    return p


def test_measures_on_known_geometry():
    p = _synthetic_points()
    assert L.interocular_distance(p) == pytest.approx(60.0)
    assert L.mouth_opening(p) == pytest.approx(0.1)
    assert L.mouth_opening(p, normalise="mouth_width") == pytest.approx(0.2)
    assert L.eye_aperture(p, "right") == pytest.approx(0.3)
    assert L.eye_aperture(p, "left") == pytest.approx(0.1)
    batch = np.stack([p, p * 2])                        # batched and scale invariant
    np.testing.assert_allclose(L.mouth_opening(batch), [0.1, 0.1])
    np.testing.assert_allclose(L.interocular_distance(batch), [60, 120])
    with pytest.raises(ConfigError):
        L.eye_aperture(p, "middle")
    with pytest.raises(ConfigError):
        L.mouth_opening(p, normalise="nose")


def test_config_validation():
    with pytest.raises(ConfigError):
        L.LandmarkConfig(max_faces=0).validate()
    with pytest.raises(ConfigError):
        L.LandmarkConfig(min_detection_confidence=1.5).validate()
    with pytest.raises(ConfigError):
        L.LandmarkConfig(detection_interval=0).validate()


# --------------------------------------------------------------------------------------
# Tracking without a face (no shared media needed)
# --------------------------------------------------------------------------------------
def test_no_face_frames_are_flagged_not_fatal():
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(6)]
    wall = np.full((256, 256, 3), (180, 170, 150), np.uint8)
    wall[:, 100:110] = 90                                # a door frame, still no face
    frames += [wall.copy() for _ in range(6)]
    calls = []
    track = L.track_frames(frames, L.LandmarkConfig(), progress=calls.append)
    assert calls == list(range(1, 13))
    assert track.status_counts()["no_face"] == 12
    assert np.isnan(track.points).all() and np.isnan(track.bbox).all()
    assert (track.confidence == 0).all()
    assert not track.usable.any()
    assert track.points.shape == (12, 478, 3) and track.image_size == (256, 256)


def test_bad_frames_raise_media_error():
    with L.LandmarkTracker() as tracker:
        with pytest.raises(MediaError):
            tracker.process(np.zeros((64, 64, 3), np.float32))
        with pytest.raises(MediaError):
            tracker.process(np.zeros((64, 64), np.uint8))
        tracker.process(np.zeros((64, 64, 3), np.uint8))
        with pytest.raises(MediaError):                  # size change mid-sequence
            tracker.process(np.zeros((32, 64, 3), np.uint8))


# --------------------------------------------------------------------------------------
# Real footage
# --------------------------------------------------------------------------------------
@pytest.mark.shared
def test_actor_plate_tracks_every_frame(actor_track):
    t = actor_track
    assert t.status_counts()["ok"] == 100
    assert t.confidence.min() > 0.8
    assert np.isfinite(t.points).all()
    uv = t.points[..., :2]
    assert uv.min() > 0 and uv.max() < 256
    assert ((t.bbox[:, 2] - t.bbox[:, 0]) > 80).all()
    # subject's left eye is on the image right; upper inner lip above (or on) the lower
    assert (uv[:, list(L.LEFT_EYE)].mean(1)[:, 0] > uv[:, list(L.RIGHT_EYE)].mean(1)[:, 0]).all()
    assert (uv[:, 13, 1] <= uv[:, 14, 1] + 0.5).all()
    iod = L.interocular_distance(t.points)
    assert 50 < iod.mean() < 120 and iod.std() < 0.1 * iod.mean()
    ear = L.eye_aperture(t.points, "left")
    assert 0.1 < np.median(ear) < 0.5
    assert (L.mouth_opening(t.points) >= 0).all()
    # all named loops run counter-clockwise on screen (negative shoelace area, v down)
    p = uv[0]
    for loop in (L.LIPS_OUTER, L.LIPS_INNER, L.RIGHT_EYE, L.LEFT_EYE, L.FACE_OVAL):
        q = p[list(loop)]
        assert np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]) < 0
    # ... and so do the triangles (their normals face the camera), bar silhouette slivers
    tri = L.mediapipe_triangles()
    a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert (cross < 0).mean() > 0.95
    # round trip through the array form used by tracking files
    back = L.LandmarkTrack.from_arrays(t.to_arrays())
    np.testing.assert_array_equal(back.points, t.points)
    assert back.image_size == t.image_size and back.status_counts() == t.status_counts()


@pytest.mark.shared
def test_pixel_centre_convention_is_scale_consistent(actor_frames):
    """Under u = x*W + 0.5, landmarks of a 2x upsampled frame are exactly twice ours; the
    edge convention (u = x*W) would be off by 0.25 px at the original scale."""
    import cv2
    frames = actor_frames[:20]
    a = L.track_frames(frames).points[..., :2].astype(np.float64)
    up = [cv2.resize(f, (512, 512), interpolation=cv2.INTER_LINEAR) for f in frames]
    b = L.track_frames(up).points[..., :2].astype(np.float64)
    bias = (b / 2 - a).mean(axis=(0, 1))
    assert np.abs(bias).max() < 0.08, bias


@pytest.mark.shared
def test_two_faces_keep_the_tracked_person(actor_frames):
    need_shared(OTHER)
    other = read_frames(OTHER, 10)
    grey = np.full_like(actor_frames[0], 128)
    # the tracked actor is on the RIGHT; the second person enters on the left after 4 frames
    frames = [np.concatenate([grey, actor_frames[i]], 1) for i in range(4)]
    frames += [np.concatenate([other[i], actor_frames[4 + i]], 1) for i in range(10)]
    track = L.track_frames(frames)
    assert (track.status[:4] == L.STATUS_OK).all()
    assert (track.status[4:] == L.STATUS_MULTIPLE_FACES).all(), track.status
    assert (track.num_faces[4:] == 2).all()
    centre_u = (track.bbox[:, 0] + track.bbox[:, 2]) / 2
    assert (centre_u > 256).all(), centre_u
    assert track.usable.all() and np.isfinite(track.points).all()
    # the landmarks are the actor's: same as tracking the actor alone (shifted by 256 px)
    alone = L.track_frames(actor_frames[:14])
    err = np.linalg.norm(track.points[:, :, :2] - (alone.points[:, :, :2] + [256, 0]), axis=-1)
    assert np.median(err) < 3.0


@pytest.mark.shared
def test_low_confidence_and_sparse_scoring(actor_frames):
    strict = L.track_frames(actor_frames[:8], L.LandmarkConfig(low_confidence_threshold=0.99))
    assert (strict.status == L.STATUS_LOW_CONFIDENCE).all()
    assert np.isfinite(strict.points).all()              # still given, but flagged
    sparse = L.track_frames(actor_frames[:20], L.LandmarkConfig(max_faces=1, detection_interval=5))
    assert (sparse.status == L.STATUS_OK).all() and sparse.confidence.min() > 0.8
