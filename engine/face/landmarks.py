"""Dense per-frame face landmarks (MediaPipe Face Mesh, 478 points) with per-frame status.

What this module gives
----------------------
* :class:`LandmarkTracker` runs MediaPipe 0.10.21's legacy *solutions* Face Mesh graph
  (``face_landmark_front_cpu``, the same graph as ``mediapipe.solutions.face_mesh.FaceMesh``)
  with ``refine_landmarks=True``: 468 mesh points + 10 iris points (468-472 the subject's
  right iris, 473-477 the left; the first of each five is the iris centre), with the
  attention model's refined lips and eyes. The model files ship inside the mediapipe wheel;
  nothing is downloaded.
* a per-frame face-detection confidence (BlazeFace short-range score) and status:
  ``ok`` / ``no_face`` / ``low_confidence`` / ``multiple_faces``. A frame without a usable
  face is flagged (points NaN), never fatal.
* named landmark index sets derived from ``mediapipe.solutions.face_mesh_connections``,
  the tessellation triangles of the 468-vertex mesh, and small geometric measures
  (inter-ocular distance, mouth opening, eye aperture).

Pixel convention (checked, see ``tests/test_face_landmarks.py``)
-----------------------------------------------------------------
MediaPipe reports landmarks normalised by the image width/height. Its CPU image-to-tensor
step (``image_to_tensor_converter_opencv.cc``) maps the region of interest, whose corners
are given in ``normalised * size`` units, onto the model tensor with
``cv::getPerspectiveTransform`` + ``cv::warpPerspective``; OpenCV treats those numbers as
*pixel indices* (centre of pixel ``j`` at ``j``), and the landmark projection inverts the
same map. So ``x * W`` is an OpenCV index coordinate, and under engine/face/camera.py's
convention (centre of pixel ``j`` at ``j + 0.5``) the landmark is at::

    u = x * W + 0.5,   v = y * H + 0.5,   z_px = z * W

We verified this empirically: upsampling a frame 2x with ``cv2.resize`` (which is exact
about pixel centres) moves ``x * W`` by +0.24 px (averaged over 80 frames of two plates,
s.e. 0.01), as the index convention predicts (+0.25) and the edge convention does not (0).
``z`` is MediaPipe's relative depth (origin near the head centre, smaller = nearer the
camera, "roughly the same scale as x"), so it is scaled by ``W`` with no offset.

Cost (why face detection is not run separately on every frame)
--------------------------------------------------------------
The Face Mesh graph runs its own BlazeFace detector only while it tracks fewer than
``max_faces`` faces. With the default ``max_faces=2`` and one person in shot the detector
therefore runs on every frame *inside* the graph; we expose the graph's ``face_detections``
stream and take the tracked face's score from it, so the confidence costs nothing extra.
Only when the graph did not detect (it already tracks ``max_faces`` faces, or the face's
score fell below ``min_detection_confidence``) do we run a second, low-threshold detector,
at most every ``detection_interval`` frames, and carry the last score in between.
Measured on the 256x256 actor plate (500 frames, one process; CPU time per frame, which is
what the 2-core budget pays): bare Face Mesh ``max_faces=1`` ~3.2 ms (~340 frames/s wall on
a quiet core), ``max_faces=2`` (detector every frame) ~5.5 ms (~220 frames/s), the standalone
BlazeFace detector ~1.5 ms; :func:`track_frames` with the defaults ~6.2 ms, with
``max_faces=1, detection_interval=10`` ~4.4 ms (no ``multiple_faces`` check while tracking).
Protobuf -> numpy conversion is ~0.2 ms of that.

Tracking (video) mode and ``static=True`` differ systematically by ~1 px at 256x256 (the
region fed to the mesh model comes from the previous frame's landmarks instead of the
detector), so use one mode for a whole shot.
"""
from __future__ import annotations

import collections
import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from engine.errors import ConfigError, MediaError

try:  # The connection sets are plain Python; importing them is cheap and never loads a model.
    from mediapipe.python.solutions import face_mesh_connections as _conn
except ImportError as _exc:  # pragma: no cover - mediapipe is a pinned dependency
    raise ImportError("engine.face.landmarks needs mediapipe==0.10.21 (pip install mediapipe==0.10.21)") from _exc

NUM_LANDMARKS = 478
NUM_MESH_VERTICES = 468

# ---------------------------------------------------------------------------------------
# Status codes
# ---------------------------------------------------------------------------------------
STATUS_OK = 0
STATUS_NO_FACE = 1
STATUS_LOW_CONFIDENCE = 2
STATUS_MULTIPLE_FACES = 3
STATUS_NAMES: tuple[str, ...] = ("ok", "no_face", "low_confidence", "multiple_faces")
# Frames whose landmarks downstream stages may use as measurements. ``multiple_faces`` is
# usable: the tracked person's landmarks are given (the other face is just present).
USABLE_STATUSES = (STATUS_OK, STATUS_MULTIPLE_FACES)


# ---------------------------------------------------------------------------------------
# Named index sets (derived from mediapipe's connection sets where they exist)
# ---------------------------------------------------------------------------------------
def _vertices(edges: Iterable[tuple[int, int]]) -> set[int]:
    return {int(i) for e in edges for i in e}


def _components(edges: Iterable[tuple[int, int]]) -> list[set[int]]:
    adj: dict[int, set[int]] = collections.defaultdict(set)
    for a, b in edges:
        adj[int(a)].add(int(b))
        adj[int(b)].add(int(a))
    seen: set[int] = set()
    comps = []
    for v in sorted(adj):
        if v in seen:
            continue
        stack, comp = [v], set()
        while stack:
            x = stack.pop()
            if x in comp:
                continue
            comp.add(x)
            stack.extend(adj[x] - comp)
        seen |= comp
        comps.append(comp)
    return comps


def _ordered_loop(edges: Iterable[tuple[int, int]], start: int, second: int) -> tuple[int, ...]:
    """Walk a closed polyline given as undirected edges, from ``start`` via ``second``.

    Every loop in this module starts at the corner that is left in the image for a frontal,
    unmirrored face and heads along the *lower* side first, i.e. it runs counter-clockwise
    as seen on screen (negative shoelace area in (u, v) with v pointing down).
    """
    adj: dict[int, set[int]] = collections.defaultdict(set)
    for a, b in edges:
        adj[int(a)].add(int(b))
        adj[int(b)].add(int(a))
    if any(len(n) != 2 for n in adj.values()) or second not in adj[start]:
        raise RuntimeError("mediapipe connection set is not a simple loop; mediapipe version mismatch?")
    loop = [start, second]
    while True:
        nxt = (adj[loop[-1]] - {loop[-2]}).pop()
        if nxt == start:
            break
        loop.append(nxt)
    if len(loop) != len(adj):
        raise RuntimeError("mediapipe connection set has more than one loop")
    return tuple(loop)


def _split_lips() -> tuple[tuple[int, ...], tuple[int, ...]]:
    comps = _components(_conn.FACEMESH_LIPS)
    outer_set = next(c for c in comps if 0 in c)   # 0: top of the upper lip (philtrum end)
    inner_set = next(c for c in comps if 13 in c)  # 13: centre of the upper lip's inner edge
    edges = list(_conn.FACEMESH_LIPS)
    outer = _ordered_loop([e for e in edges if e[0] in outer_set], 61, 146)
    inner = _ordered_loop([e for e in edges if e[0] in inner_set], 78, 95)
    return outer, inner


#: Outer lip contour (20 points), from the image-left mouth corner (61) along the lower lip.
#: Inner lip contour (20 points), from the image-left inner corner (78) along the lower lip.
LIPS_OUTER, LIPS_INNER = _split_lips()
#: Eye contours (16 points each). "Left"/"right" are the SUBJECT's (mediapipe's naming): the
#: subject's right eye is on the image left for an unmirrored frontal view.
RIGHT_EYE = _ordered_loop(_conn.FACEMESH_RIGHT_EYE, 33, 7)      # starts at its outer corner
LEFT_EYE = _ordered_loop(_conn.FACEMESH_LEFT_EYE, 362, 382)     # starts at its inner corner
#: Iris: centre first, then the four contour points of mediapipe's connection set.
RIGHT_IRIS = (468,) + tuple(sorted(_vertices(_conn.FACEMESH_RIGHT_IRIS)))
LEFT_IRIS = (473,) + tuple(sorted(_vertices(_conn.FACEMESH_LEFT_IRIS)))
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473
#: Face oval (36 points), from the top of the forehead (10) towards the image left.
FACE_OVAL = _ordered_loop(_conn.FACEMESH_FACE_OVAL, 10, 109)

#: Eye corners. The inter-ocular distance is the distance between the two OUTER eye corners
#: (33 = subject's right, 263 = subject's left): this is the normalisation of the standard
#: normalised mean error (NME) of 300-W / Multi-PIE 68-point benchmarks ("inter-ocular",
#: points 37 and 46), and it does not change with gaze, blinks or expressions.
RIGHT_EYE_OUTER, RIGHT_EYE_INNER = 33, 133
LEFT_EYE_OUTER, LEFT_EYE_INNER = 263, 362
INTEROCULAR = (RIGHT_EYE_OUTER, LEFT_EYE_OUTER)
#: Mouth corners on the outer lip contour (subject's right, left).
MOUTH_CORNERS = (61, 291)
#: Vertically paired points on the inner lip contour (upper, lower): left-of-centre, centre,
#: right-of-centre. Averaging three pairs makes the gap robust to an asymmetric mouth.
INNER_LIP_PAIRS = ((82, 87), (13, 14), (312, 317))
#: Vertically paired eyelid points (upper, lower) and the corners (outer, inner) per eye,
#: as used by the eye aspect ratio (Soukupova & Cech 2016) on mediapipe's topology.
EYELID_PAIRS = {"right": ((160, 144), (159, 145), (158, 153)),
                "left": ((387, 373), (386, 374), (385, 380))}
EYE_CORNERS = {"right": (RIGHT_EYE_OUTER, RIGHT_EYE_INNER), "left": (LEFT_EYE_OUTER, LEFT_EYE_INNER)}
#: Points that move little with expressions: eye corners, nose bridge / tip, subnasale.
#: Used for crop centring and rigid alignment.
RIGID = (33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 2)


# ---------------------------------------------------------------------------------------
# Geometric measures. ``points`` is (..., 478, 2 or 3) in pixels; the result is (...).
# ---------------------------------------------------------------------------------------
def _dist(points: np.ndarray, i: int, j: int) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)[..., :2]
    return np.linalg.norm(p[..., i, :] - p[..., j, :], axis=-1)


def interocular_distance(points: np.ndarray) -> np.ndarray:
    """Distance (pixels) between the outer eye corners 33 and 263 (image plane only)."""
    return _dist(points, *INTEROCULAR)


def mouth_opening(points: np.ndarray, normalise: str = "interocular") -> np.ndarray:
    """Inner-lip gap (mean of three vertical pairs), divided by the inter-ocular distance
    (``normalise="interocular"``, stable under smiles) or by the mouth width
    (``"mouth_width"``, corner to corner). 0 for closed lips, ~0.3-0.6 wide open."""
    gap = np.mean([_dist(points, a, b) for a, b in INNER_LIP_PAIRS], axis=0)
    if normalise == "interocular":
        ref = interocular_distance(points)
    elif normalise == "mouth_width":
        ref = _dist(points, *MOUTH_CORNERS)
    else:
        raise ConfigError(f"mouth_opening: normalise must be 'interocular' or 'mouth_width', not {normalise!r}")
    return gap / np.maximum(ref, 1e-9)


def eye_aperture(points: np.ndarray, side: str) -> np.ndarray:
    """Eye aspect ratio of the subject's ``side`` ('left' or 'right') eye: mean lid gap over
    three vertical pairs divided by the corner-to-corner width (~0.25-0.35 open, < 0.1 shut)."""
    if side not in EYELID_PAIRS:
        raise ConfigError(f"eye_aperture: side must be 'left' or 'right', not {side!r}")
    gap = np.mean([_dist(points, a, b) for a, b in EYELID_PAIRS[side]], axis=0)
    return gap / np.maximum(_dist(points, *EYE_CORNERS[side]), 1e-9)


# ---------------------------------------------------------------------------------------
# Tessellation triangles
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _triangles_cached(fill_holes: bool) -> np.ndarray:
    directed = {(int(a), int(b)) for a, b in _conn.FACEMESH_TESSELATION}
    edges = {tuple(sorted(e)) for e in directed}
    adj: dict[int, set[int]] = collections.defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    # 1. every 3-cycle of the edge graph is a candidate face.
    cands = {(a, b, k) for a, b in edges for k in adj[a] & adj[b] if k > b}
    # 2. a 3-cycle that is not a face (it encircles a small fan, e.g. around a valence-3
    #    vertex) makes its edges border 3 candidates; drop, one at a time, the candidate with
    #    the most over-used edges until every edge borders at most two triangles.
    def usage(tris: set) -> collections.Counter:
        return collections.Counter(e for t in tris for e in itertools.combinations(t, 2))
    while True:
        use = usage(cands)
        over = {e for e, n in use.items() if n > 2}
        if not over:
            break
        worst = max(sorted(cands), key=lambda t: sum(e in over for e in itertools.combinations(t, 2)))
        cands.discard(worst)
    faces = sorted(cands)
    # 3. orient consistently: neighbours traverse their shared edge in opposite directions.
    by_edge: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for fi, t in enumerate(faces):
        for e in itertools.combinations(t, 2):
            by_edge[e].append(fi)
    oriented: list[tuple[int, int, int] | None] = [None] * len(faces)
    for seed in range(len(faces)):
        if oriented[seed] is not None:
            continue
        oriented[seed] = faces[seed]
        queue = collections.deque([seed])
        while queue:
            fi = queue.popleft()
            a, b, c = oriented[fi]
            for u, v in ((a, b), (b, c), (c, a)):
                for nb in by_edge[tuple(sorted((u, v)))]:
                    if nb == fi or oriented[nb] is not None:
                        continue
                    x, y, z = faces[nb]
                    tri = (x, y, z)
                    # the neighbour must contain the half-edge v->u
                    hes = {(x, y), (y, z), (z, x)}
                    if (v, u) not in hes:
                        tri = (x, z, y)
                    oriented[nb] = tri
                    queue.append(nb)
    tris = np.array(oriented, dtype=np.int64)
    # 4. mediapipe's connection set lists each triangle's half-edges in its own winding: the
    #    boundary half-edges appear in one direction only. Follow that winding, then flip
    #    once so that triangles run counter-clockwise on screen for a face seen from the
    #    front (normal towards the camera: negative z in OpenCV camera space).
    fwd = sum(((int(t[i]), int(t[(i + 1) % 3])) in directed) for t in tris for i in range(3))
    rev = sum(((int(t[(i + 1) % 3]), int(t[i])) in directed) for t in tris for i in range(3))
    if rev > fwd:
        tris = tris[:, ::-1]
    if _MEDIAPIPE_WINDING_IS_CLOCKWISE_ON_SCREEN:
        tris = tris[:, ::-1]
    if fill_holes:
        tris = np.concatenate([tris] + [_strip_fill(loop) for loop in (LIPS_INNER, RIGHT_EYE, LEFT_EYE)])
    tris = np.ascontiguousarray(tris, dtype=np.int32)
    tris.setflags(write=False)
    return tris


# Mediapipe's own triangle winding, checked on real frames (tests/test_face_landmarks.py):
# ~99 % of its triangles run counter-clockwise on screen on a frontal face already (the
# rest are slivers at the silhouette), so no flip is needed.
_MEDIAPIPE_WINDING_IS_CLOCKWISE_ON_SCREEN = False


def _strip_fill(loop: Sequence[int]) -> np.ndarray:
    """Triangulate a closed loop (counter-clockwise on screen, starting at a corner) as a
    zig-zag strip between its lower and upper halves: no slivers fanning from one vertex.
    Triangles (r_i, r_j, r_k) with i < j < k along the loop keep the loop's orientation."""
    lo, hi = 0, len(loop) - 1
    out, take_low = [], True
    while hi - lo >= 2:
        if take_low:
            out.append((loop[lo], loop[lo + 1], loop[hi]))
            lo += 1
        else:
            out.append((loop[lo], loop[hi - 1], loop[hi]))
            hi -= 1
        take_low = not take_low
    return np.array(out, dtype=np.int64)


def mediapipe_triangles(fill_holes: bool = False) -> np.ndarray:
    """Triangles (F, 3) int32 of mediapipe's 468-vertex face mesh, from FACEMESH_TESSELATION.

    The connection set encodes 852 triangles: an open surface with four boundary loops (the
    face oval, the inner lips and the two eyes; Euler characteristic V - E + F = -2). The
    canonical model's 898 triangles also close the mouth and eyes; ``fill_holes=True`` adds
    those 46 triangles (zig-zag strips over the inner-lip and eye loops), giving a disc.
    Triangles run counter-clockwise on screen for a frontal face. Cached, read-only.
    """
    return _triangles_cached(bool(fill_holes))


# ---------------------------------------------------------------------------------------
# Tracking
# ---------------------------------------------------------------------------------------
@dataclass
class LandmarkConfig:
    """Face Mesh settings. Confidences are BlazeFace / Face Mesh scores in [0, 1]."""

    min_detection_confidence: float = 0.5  # detector score to (re)acquire a face
    min_tracking_confidence: float = 0.5   # mesh face-presence score to keep tracking
    low_confidence_threshold: float = 0.6  # detector score below which a tracked face is flagged
    max_faces: int = 2       # >= 2 so that a second face in shot is noticed (multiple_faces)
    static: bool = False     # True: every frame independent (stills, shuffled frames)
    detection_interval: int = 1   # frames between extra scoring detections (see module doc)
    score_floor: float = 0.05     # threshold of the extra scoring detector: reports weak scores
    detector_model: int = 0       # extra scoring detector: 0 short range (< 2 m), 1 full range
    match_iou: float = 0.25       # min IoU between a detection box and a face's landmark box

    def validate(self) -> None:
        for name in ("min_detection_confidence", "min_tracking_confidence", "low_confidence_threshold",
                     "score_floor", "match_iou"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"landmarks.{name} must be in [0, 1], got {v}")
        if self.max_faces < 1:
            raise ConfigError(f"landmarks.max_faces must be >= 1, got {self.max_faces}")
        if self.detection_interval < 1:
            raise ConfigError(f"landmarks.detection_interval must be >= 1, got {self.detection_interval}")
        if self.detector_model not in (0, 1):
            raise ConfigError(f"landmarks.detector_model must be 0 or 1, got {self.detector_model}")


@dataclass
class FrameLandmarks:
    """One frame's result. ``points`` (478, 3) float32 (u, v, z) pixels, NaN without a face;
    ``bbox`` (u0, v0, u1, v1) of the 478 points, NaN without a face; ``confidence`` the
    tracked face's detector score (0 when no detector saw it)."""

    points: np.ndarray
    status: int
    confidence: float
    bbox: np.ndarray
    num_faces: int = 0

    @property
    def status_name(self) -> str:
        return STATUS_NAMES[self.status]

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES


def _bbox(points: np.ndarray) -> np.ndarray:
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()],
                    dtype=np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _detections(dets, width: int, height: int) -> list[tuple[np.ndarray, float]]:
    """Mediapipe Detection protos -> [(box u0 v0 u1 v1 px, score)]. Boxes follow the same
    index convention as landmarks (+0.5), though for IoU matching it hardly matters."""
    out = []
    for d in dets or ():
        rb = d.location_data.relative_bounding_box
        u0 = rb.xmin * width + 0.5
        v0 = rb.ymin * height + 0.5
        out.append((np.array([u0, v0, u0 + rb.width * width, v0 + rb.height * height], np.float32),
                    float(d.score[0]) if len(d.score) else 0.0))
    return out


class LandmarkTracker:
    """Stateful per-frame landmark tracker (a context manager owning the mediapipe graphs).

    Keeps the same person across the sequence: when several faces are found it picks the
    one whose landmark box best continues the last usable frame's box (highest IoU, else the
    nearest centre), flags the frame ``multiple_faces`` and still returns its landmarks. On
    the first frame (or with no history) it picks the largest face.
    """

    def __init__(self, config: LandmarkConfig | None = None) -> None:
        self.config = config or LandmarkConfig()
        self.config.validate()
        self._mesh = None
        self._scorer = None
        self._size: tuple[int, int] | None = None
        self._prev_bbox: np.ndarray | None = None
        self._last_score: float = 0.0
        self._last_scored: int = -(10 ** 9)
        self._was_tracking = False
        self._index = 0

    # -- resource handling ----------------------------------------------------------------
    def __enter__(self) -> "LandmarkTracker":
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        if self._mesh is not None:
            return
        from mediapipe.python.solution_base import SolutionBase
        from mediapipe.python.solutions import face_mesh as mp_face_mesh

        cfg = self.config

        class _MeshGraph(SolutionBase):
            # Same graph and parameters as mp.solutions.face_mesh.FaceMesh, but also observing
            # the graph's 'face_detections' stream to get BlazeFace scores for free.
            def __init__(self) -> None:
                super().__init__(
                    binary_graph_path=mp_face_mesh._BINARYPB_FILE_PATH,
                    side_inputs={"num_faces": cfg.max_faces, "with_attention": True,
                                 "use_prev_landmarks": not cfg.static},
                    calculator_params={
                        "facedetectionshortrangecpu__facedetectionshortrange__facedetection"
                        "__TensorsToDetectionsCalculator.min_score_thresh": cfg.min_detection_confidence,
                        "facelandmarkcpu__ThresholdingCalculator.threshold": cfg.min_tracking_confidence,
                    },
                    outputs=["multi_face_landmarks", "face_detections"])

            def process(self, image: np.ndarray):
                return super().process(input_data={"image": image})

        self._mesh = _MeshGraph()

    def _score_detector(self):
        if self._scorer is None:
            from mediapipe.python.solutions import face_detection as mp_face_detection
            self._scorer = mp_face_detection.FaceDetection(min_detection_confidence=self.config.score_floor,
                                                           model_selection=self.config.detector_model)
        return self._scorer

    def close(self) -> None:
        for g in (self._mesh, self._scorer):
            if g is not None:
                g.close()
        self._mesh = self._scorer = None

    def reset(self) -> None:
        """Forget the tracked person (e.g. at a cut). The mediapipe graph is rebuilt."""
        self.close()
        self._prev_bbox = None
        self._last_score = 0.0
        self._last_scored = -(10 ** 9)
        self._was_tracking = False

    # -- per frame --------------------------------------------------------------------------
    def process(self, frame_rgb: np.ndarray) -> FrameLandmarks:
        """Landmarks of the tracked face in one RGB uint8 frame (H, W, 3)."""
        if not isinstance(frame_rgb, np.ndarray) or frame_rgb.dtype != np.uint8 or frame_rgb.ndim != 3 \
                or frame_rgb.shape[2] != 3:
            raise MediaError(f"landmark tracking needs RGB uint8 frames (H, W, 3), got "
                             f"{getattr(frame_rgb, 'dtype', type(frame_rgb))} {getattr(frame_rgb, 'shape', '')}")
        height, width = frame_rgb.shape[:2]
        if self._size is not None and self._size != (width, height):
            raise MediaError(f"frame size changed mid-sequence: {self._size} -> {(width, height)}")
        self._size = (width, height)
        self._open()
        index = self._index
        self._index += 1
        image = np.ascontiguousarray(frame_rgb)
        res = self._mesh.process(image)

        faces = []
        for lms in res.multi_face_landmarks or ():
            arr = np.array([(p.x, p.y, p.z) for p in lms.landmark], dtype=np.float64)
            if arr.shape[0] != NUM_LANDMARKS:
                continue  # defensive: refine_landmarks is always on, so this never happens
            pts = np.empty((NUM_LANDMARKS, 3), np.float32)
            pts[:, 0] = arr[:, 0] * width + 0.5   # index -> pixel-centre convention (module doc)
            pts[:, 1] = arr[:, 1] * height + 0.5
            pts[:, 2] = arr[:, 2] * width
            faces.append(pts)

        nan_pts = np.full((NUM_LANDMARKS, 3), np.nan, np.float32)
        nan_box = np.full(4, np.nan, np.float32)
        if not faces:
            # A bare detection the mesh rejected (BlazeFace fires on noise now and then) is
            # not a face we track: confidence 0.
            self._was_tracking = False
            return FrameLandmarks(nan_pts, STATUS_NO_FACE, 0.0, nan_box, 0)

        boxes = [_bbox(p) for p in faces]
        chosen = self._choose(boxes)
        score = self._match_score(_detections(res.face_detections, width, height), boxes, chosen)
        acquired = not self._was_tracking
        if score is None and (acquired or index - self._last_scored >= self.config.detection_interval):
            dets = _detections(self._score_detector().process(image).detections, width, height)
            score = self._match_score(dets, boxes, chosen)
            if score is None:
                score = 0.0  # the mesh holds a face no detector sees: not trustworthy
        if score is not None:
            self._last_score = score
            self._last_scored = index
        conf = self._last_score
        self._was_tracking = True
        self._prev_bbox = boxes[chosen]

        if conf < self.config.low_confidence_threshold:
            status = STATUS_LOW_CONFIDENCE   # dominates: downstream must not trust these points
        elif len(faces) > 1:
            status = STATUS_MULTIPLE_FACES
        else:
            status = STATUS_OK
        return FrameLandmarks(faces[chosen], status, float(conf), boxes[chosen], len(faces))

    def _choose(self, boxes: list[np.ndarray]) -> int:
        if len(boxes) == 1:
            return 0
        if self._prev_bbox is None:
            return int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]))
        ious = [_iou(b, self._prev_bbox) for b in boxes]
        if max(ious) > 0:
            return int(np.argmax(ious))
        prev_c = (self._prev_bbox[:2] + self._prev_bbox[2:]) / 2
        return int(np.argmin([np.linalg.norm((b[:2] + b[2:]) / 2 - prev_c) for b in boxes]))

    def _match_score(self, dets, boxes, chosen) -> float | None:
        """Score of the best detection assigned to the chosen face (each detection goes to
        the face box it overlaps most), or None when none overlaps enough."""
        best = None
        for box, score in dets:
            ious = [_iou(box, b) for b in boxes]
            k = int(np.argmax(ious))
            if k == chosen and ious[k] >= self.config.match_iou:
                best = score if best is None else max(best, score)
        return best


@dataclass
class LandmarkTrack:
    """Landmarks of a frame sequence (0-based array index = position in the sequence)."""

    points: np.ndarray        # (N, 478, 3) float32, NaN where no face
    status: np.ndarray        # (N,) uint8 codes into STATUS_NAMES
    confidence: np.ndarray    # (N,) float32
    bbox: np.ndarray          # (N, 4) float32 (u0, v0, u1, v1)
    num_faces: np.ndarray     # (N,) uint8
    image_size: tuple[int, int]  # (W, H) of the frames the landmarks are in
    status_names: tuple[str, ...] = field(default=STATUS_NAMES)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def usable(self) -> np.ndarray:
        """(N,) bool: frames whose landmarks can be used as measurements."""
        return np.isin(self.status, USABLE_STATUSES)

    def status_counts(self) -> dict[str, int]:
        return {name: int((self.status == code).sum()) for code, name in enumerate(self.status_names)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for an .npz tracking file (the file's writer adds schema/version)."""
        return {"points": self.points, "status": self.status, "confidence": self.confidence,
                "bbox": self.bbox, "num_faces": self.num_faces,
                "image_size": np.asarray(self.image_size, np.int64),
                "status_names": np.asarray(self.status_names)}

    @classmethod
    def from_arrays(cls, arrays) -> "LandmarkTrack":
        names = tuple(str(s) for s in arrays["status_names"])
        if names != STATUS_NAMES:
            raise MediaError(f"tracking file has unknown landmark status names {names}")
        return cls(np.asarray(arrays["points"], np.float32), np.asarray(arrays["status"], np.uint8),
                   np.asarray(arrays["confidence"], np.float32), np.asarray(arrays["bbox"], np.float32),
                   np.asarray(arrays["num_faces"], np.uint8),
                   tuple(int(v) for v in np.asarray(arrays["image_size"])), names)


def iter_landmarks(frames: Iterable[np.ndarray], config: LandmarkConfig | None = None) -> Iterator[FrameLandmarks]:
    """Stream :class:`FrameLandmarks` for RGB uint8 frames (one tracker for the sequence)."""
    with LandmarkTracker(config) as tracker:
        for frame in frames:
            yield tracker.process(frame)


def track_frames(frames: Iterable[np.ndarray], config: LandmarkConfig | None = None,
                 progress: Callable[[int], None] | None = None) -> LandmarkTrack:
    """Track a whole sequence of RGB uint8 frames. ``progress(n_done)`` after each frame."""
    pts, status, conf, boxes, nfaces = [], [], [], [], []
    size = None
    with LandmarkTracker(config) as tracker:
        for frame in frames:
            r = tracker.process(frame)
            size = tracker._size
            pts.append(r.points)
            status.append(r.status)
            conf.append(r.confidence)
            boxes.append(r.bbox)
            nfaces.append(min(r.num_faces, 255))
            if progress is not None:
                progress(len(pts))
    if not pts:
        raise MediaError("no frames to track")
    return LandmarkTrack(np.stack(pts), np.asarray(status, np.uint8), np.asarray(conf, np.float32),
                         np.stack(boxes), np.asarray(nfaces, np.uint8), size)
