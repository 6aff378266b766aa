"""Dense surface correspondence between a MediaPipe-topology face mesh and a morphable model.

Used to embed MediaPipe's 478 landmarks on the surface of ICT, FLAME or any other mesh
(``FaceModel.landmark_tri`` / ``landmark_bary``). Nothing here is typed in by hand: the
correspondence is *computed* by registering the built-in generic MediaPipe mesh onto the
target surface, in three stages:

1. similarity initialisation: Umeyama's closed form (Umeyama 1991, "Least-squares
   estimation of transformation parameters between two point patterns") on a few sparse
   semantic pairs when the caller has them (ICT ships 68 Multi-PIE landmark vertices; the
   MediaPipe side picks the same semantic points from its own connection sets), otherwise
   on the nose tip and the models' shared canonical frame;
2. similarity ICP (Besl & McKay 1992) with closest points on the target's face surface
   and distance-based outlier rejection;
3. non-rigid ICP in the spirit of Amberg et al. 2007 ("Optimal Step Nonrigid ICP"), reduced
   to per-vertex translations with a membrane (graph-Laplacian) stiffness on the offsets
   that is annealed from stiff to soft; every step is a small sparse linear solve.

Then each landmark's registered position is projected to the closest point of the target
surface, giving (triangle, barycentric) pairs and a residual distance per landmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

# --------------------------------------------------------------------------------------
# small geometry helpers


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
            with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted similarity (s, R, t) minimising sum w |s R src + t - dst|^2 (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / max(w.sum(), 1e-12)
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0  # reflection guard
    rot = u @ np.diag(d) @ vt
    var_s = (w * (xs * xs).sum(1)).sum()
    scale = float((sig * d).sum() / var_s) if with_scale and var_s > 0 else 1.0
    trans = mu_d - scale * rot @ mu_s
    return scale, rot, trans


def apply_similarity(points: np.ndarray, sim: tuple[float, np.ndarray, np.ndarray]) -> np.ndarray:
    s, r, t = sim
    return s * points @ r.T + t


def compose_similarity(a, b):
    """Return a∘b (apply b first, then a)."""
    sa, ra, ta = a
    sb, rb, tb = b
    return sa * sb, ra @ rb, sa * ra @ tb + ta


def triangle_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    tv = verts[tris]
    n = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    tv = verts[tris]
    n = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])  # area weighted
    out = np.zeros_like(verts, dtype=np.float64)
    for k in range(3):
        np.add.at(out, tris[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Closest points of p (N,3) on triangles (a,b,c) (N,3 each), vectorised.

    Ericson, "Real-Time Collision Detection" 5.1.5 (Voronoi regions of the triangle).
    Returns (closest points (N,3), barycentric coordinates (N,3)).
    """
    ab = b - a
    ac = c - a
    ap = p - a
    d1 = (ab * ap).sum(1)
    d2 = (ac * ap).sum(1)
    bp = p - b
    d3 = (ab * bp).sum(1)
    d4 = (ac * bp).sum(1)
    cp = p - c
    d5 = (ab * cp).sum(1)
    d6 = (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    n = len(p)
    bary = np.zeros((n, 3))
    done = np.zeros(n, bool)

    def assign(mask, u, v, w):
        m = mask & ~done
        bary[m, 0] = u[m] if np.ndim(u) else u
        bary[m, 1] = v[m] if np.ndim(v) else v
        bary[m, 2] = w[m] if np.ndim(w) else w
        done[m] = True

    one = np.ones(n)
    zero = np.zeros(n)
    eps = 1e-30
    assign((d1 <= 0) & (d2 <= 0), one, zero, zero)                      # vertex a
    assign((d3 >= 0) & (d4 <= d3), zero, one, zero)                     # vertex b
    assign((d6 >= 0) & (d5 <= d6), zero, zero, one)                     # vertex c
    v_ab = d1 / np.where(np.abs(d1 - d3) > eps, d1 - d3, eps)
    assign((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - v_ab, v_ab, zero)     # edge ab
    w_ac = d2 / np.where(np.abs(d2 - d6) > eps, d2 - d6, eps)
    assign((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - w_ac, zero, w_ac)     # edge ac
    den_bc = (d4 - d3) + (d5 - d6)
    w_bc = (d4 - d3) / np.where(np.abs(den_bc) > eps, den_bc, eps)
    assign((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), zero, 1 - w_bc, w_bc)  # edge bc
    denom = va + vb + vc
    denom = np.where(np.abs(denom) > eps, denom, eps)
    v_in = vb / denom
    w_in = vc / denom
    assign(np.ones(n, bool), 1 - v_in - w_in, v_in, w_in)               # interior
    q = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:3] * c
    return q, bary


class SurfaceQuery:
    """Closest-point queries on a triangle mesh (a KD-tree over triangle centroids narrows
    each query to ``k`` candidate triangles; exact point-triangle distance picks the best)."""

    def __init__(self, verts: np.ndarray, tris: np.ndarray, k: int = 24) -> None:
        self.verts = np.asarray(verts, np.float64)
        self.tris = np.asarray(tris, np.int64)
        if len(self.tris) == 0:
            raise ValueError("SurfaceQuery needs at least one triangle")
        tv = self.verts[self.tris]
        self.centroids = tv.mean(1)
        # The largest circumradius bounds how far a centroid can be from the true closest point.
        self.k = int(min(k, len(self.tris)))
        self.tree = cKDTree(self.centroids)
        self.normals = triangle_normals(self.verts, self.tris)

    def closest(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(points (N,3)) -> (closest point (N,3), triangle row (N,), barycentrics (N,3), distance (N,))."""
        p = np.asarray(points, np.float64)
        _, cand = self.tree.query(p, k=self.k)
        cand = cand.reshape(len(p), -1)
        best_d = np.full(len(p), np.inf)
        best_q = np.zeros_like(p)
        best_t = np.zeros(len(p), np.int64)
        best_b = np.zeros((len(p), 3))
        for j in range(cand.shape[1]):
            t = cand[:, j]
            tv = self.verts[self.tris[t]]
            q, bary = closest_point_on_triangles(p, tv[:, 0], tv[:, 1], tv[:, 2])
            d = np.linalg.norm(q - p, axis=1)
            better = d < best_d
            best_d[better] = d[better]
            best_q[better] = q[better]
            best_t[better] = t[better]
            best_b[better] = bary[better]
        return best_q, best_t, best_b, best_d


def mesh_edges(tris: np.ndarray) -> np.ndarray:
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def graph_laplacian(n_verts: int, tris: np.ndarray) -> sp.csr_matrix:
    """Uniform graph Laplacian L = D - A; d^T L d = sum over edges |d_i - d_j|^2 (membrane)."""
    e = mesh_edges(tris)
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    adj = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_verts, n_verts))
    deg = np.asarray(adj.sum(1)).ravel()
    return (sp.diags(deg) - adj).tocsr()


# --------------------------------------------------------------------------------------
# registration


@dataclass
class RegistrationConfig:
    """Knobs of :func:`register_surface`; defaults tuned on ICT (cm units)."""

    rigid_iters: int = 30
    # Stiffness schedule of the non-rigid stage (weight of the membrane term relative to
    # unit-weight data terms); annealed stiff -> soft as in Amberg et al. 2007.
    stiffness: tuple[float, ...] = (50.0, 20.0, 10.0, 5.0, 2.0, 1.0)
    inner_iters: int = 3
    reject_factor: float = 3.0   # drop pairs farther than factor * median distance ...
    reject_min_cm: float = 0.5   # ... but never tighter than this
    normal_dot_min: float = 0.3  # drop pairs whose surface normals disagree (back faces, eyeballs)
    sparse_weight: float = 10.0  # weight of sparse semantic pairs (per pair) in the first stages
    offset_damping: float = 1e-3


@dataclass
class RegistrationResult:
    similarity: tuple[float, np.ndarray, np.ndarray]
    rigid_points: np.ndarray      # source vertices after the similarity stage (target frame)
    registered: np.ndarray        # source vertices after the non-rigid stage
    rigid_residual_cm: float      # mean closest-point distance after the similarity stage
    nonrigid_residual_cm: float   # mean closest-point distance after the non-rigid stage
    offsets_mean_cm: float        # mean non-rigid displacement magnitude
    history: list[float] = field(default_factory=list)


def register_surface(src_verts: np.ndarray, src_tris: np.ndarray, target: SurfaceQuery, *,
                     sparse_src: np.ndarray | None = None, sparse_dst: np.ndarray | None = None,
                     init: tuple[float, np.ndarray, np.ndarray] | None = None,
                     fit_mask: np.ndarray | None = None,
                     config: RegistrationConfig | None = None) -> RegistrationResult:
    """Register a source mesh onto a target surface (similarity ICP, then non-rigid ICP).

    sparse_src / sparse_dst: optional (M,) source vertex indices and (M,3) target points of
    semantic pairs, used for the initial similarity and as soft anchors early on.
    fit_mask: (V_src,) bool, source vertices that take part in the data term (e.g. exclude a
    silhouette contour); all vertices move in the non-rigid stage regardless.
    """
    cfg = config or RegistrationConfig()
    src = np.asarray(src_verts, np.float64)
    n = len(src)
    fit_mask = np.ones(n, bool) if fit_mask is None else np.asarray(fit_mask, bool)
    src_normals = vertex_normals(src, src_tris)

    # ---- 1. initial similarity
    if init is not None:
        sim = init
    elif sparse_src is not None and len(sparse_src) >= 3:
        sim = umeyama(src[sparse_src], sparse_dst)
    else:
        sim = (1.0, np.eye(3), np.zeros(3))

    def pairs(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, t, _, d = target.closest(points)
        ok = fit_mask.copy()
        med = np.median(d[ok]) if ok.any() else 0.0
        ok &= d <= max(cfg.reject_factor * med, cfg.reject_min_cm)
        ok &= (target.normals[t] * normals).sum(1) >= cfg.normal_dot_min
        return q, d, ok

    history: list[float] = []
    # ---- 2. similarity ICP
    for _ in range(cfg.rigid_iters):
        cur = apply_similarity(src, sim)
        nrm = src_normals @ sim[1].T
        q, d, ok = pairs(cur, nrm)
        history.append(float(d[fit_mask].mean()))
        if ok.sum() < 6:
            break
        s_pts = src[ok]
        d_pts = q[ok]
        w = np.ones(len(s_pts))
        if sparse_src is not None and len(sparse_src):
            s_pts = np.concatenate([s_pts, src[sparse_src]])
            d_pts = np.concatenate([d_pts, sparse_dst])
            w = np.concatenate([w, np.full(len(sparse_src), cfg.sparse_weight)])
        new = umeyama(s_pts, d_pts, w)
        delta = np.abs(new[0] - sim[0]) + np.abs(new[1] - sim[1]).max() + np.abs(new[2] - sim[2]).max()
        sim = new
        if delta < 1e-6:
            break
    rigid = apply_similarity(src, sim)
    d_rigid = target.closest(rigid)[3]
    rigid_res = float(d_rigid[fit_mask].mean())

    # ---- 3. non-rigid ICP: per-vertex offsets, membrane stiffness annealed
    lap = graph_laplacian(n, src_tris)
    offsets = np.zeros_like(rigid)
    anchors_w = np.zeros(n)
    anchors_t = np.zeros_like(rigid)
    if sparse_src is not None and len(sparse_src):
        anchors_w[sparse_src] = cfg.sparse_weight
        anchors_t[sparse_src] = np.asarray(sparse_dst, np.float64)
    n_stages = len(cfg.stiffness)
    for stage, alpha in enumerate(cfg.stiffness):
        # Sparse anchors guide the coarse stages only: their ground truth is a different
        # landmark definition (Multi-PIE) whose exact placement we should not force.
        anchor_scale = max(0.0, 1.0 - stage / max(n_stages - 1, 1)) ** 2
        for _ in range(cfg.inner_iters):
            cur = rigid + offsets
            nrm = vertex_normals(cur, src_tris)
            q, d, ok = pairs(cur, nrm)
            history.append(float(d[fit_mask].mean()))
            w = ok.astype(np.float64)
            aw = anchors_w * anchor_scale
            diag = w + aw + cfg.offset_damping
            a_mat = (sp.diags(diag) + alpha * lap).tocsc()
            rhs = w[:, None] * (q - rigid) + aw[:, None] * (anchors_t - rigid)
            solve = spla.factorized(a_mat)
            offsets = np.stack([solve(rhs[:, k]) for k in range(3)], 1)
    registered = rigid + offsets
    d_final = target.closest(registered)[3]
    return RegistrationResult(
        similarity=sim,
        rigid_points=rigid,
        registered=registered,
        rigid_residual_cm=rigid_res,
        nonrigid_residual_cm=float(d_final[fit_mask].mean()),
        offsets_mean_cm=float(np.linalg.norm(offsets, axis=1).mean()),
        history=history,
    )


def embed_points(points: np.ndarray, verts: np.ndarray, tris: np.ndarray, tri_rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest-point embedding of points on (a subset ``tri_rows`` of) a mesh.

    Returns (triangle index into ``tris`` (N,), barycentrics (N,3) float32, distance (N,)).
    """
    rows = np.arange(len(tris)) if tri_rows is None else np.asarray(tri_rows, np.int64)
    query = SurfaceQuery(verts, tris[rows])
    _, t, bary, d = query.closest(points)
    bary = np.clip(bary, 0.0, 1.0)
    bary = bary / bary.sum(1, keepdims=True)
    return rows[t], bary.astype(np.float32), d


def transfer_triangle_labels(points: np.ndarray, verts: np.ndarray, tris: np.ndarray, tri_labels: np.ndarray,
                             max_dist: float) -> np.ndarray:
    """Label each point with the label of the closest triangle of a labelled mesh, -1 if the
    closest point is farther than ``max_dist`` or lies on the mesh border (outside it)."""
    query = SurfaceQuery(verts, tris)
    q, t, bary, d = query.closest(points)
    inside = (bary > 1e-4).all(1) | (d < 0.25 * max_dist)
    out = np.where((d <= max_dist) & inside, tri_labels[t], -1)
    return out


def boundary_loops(tris: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops (vertex index arrays, in traversal order) of a manifold mesh."""
    count: dict[tuple[int, int], int] = {}
    directed: dict[int, int] = {}
    for a, b, c in np.asarray(tris):
        for u, v in ((a, b), (b, c), (c, a)):
            key = (min(u, v), max(u, v))
            count[key] = count.get(key, 0) + 1
    for a, b, c in np.asarray(tris):
        for u, v in ((a, b), (b, c), (c, a)):
            if count[(min(u, v), max(u, v))] == 1:
                directed[int(u)] = int(v)
    loops = []
    remaining = dict(directed)
    while remaining:
        start, nxt = next(iter(remaining.items()))
        loop = [start]
        del remaining[start]
        while nxt != start and nxt in remaining:
            loop.append(nxt)
            nxt = remaining.pop(nxt)
        loops.append(np.array(loop, np.int64))
    return loops


# --------------------------------------------------------------------------------------
# MediaPipe landmark embedding on a morphable model (generic: ICT, FLAME, ...)

#: Multi-PIE 68-point indices (the iBUG/300-W convention, 0-based) of semantic points that
#: MediaPipe's topology also names; "right"/"left" are the subject's.
MULTIPIE68_SEMANTIC = {"eye_outer_right": 36, "eye_inner_right": 39, "eye_inner_left": 42,
                       "eye_outer_left": 45, "nose_tip": 30, "mouth_corner_right": 48,
                       "mouth_corner_left": 54}


def multipie68_sparse_pairs(neutral: np.ndarray, idx68: np.ndarray) -> dict[str, np.ndarray]:
    """Semantic points on a model from its 68 Multi-PIE landmark vertex indices."""
    return {k: np.asarray(neutral[int(idx68[i])], np.float64) for k, i in MULTIPIE68_SEMANTIC.items()}


def _mediapipe_semantic_index(name: str, generic_neutral: np.ndarray) -> int:
    from engine.face import landmarks as mp
    from engine.face.model_builtin import nose_tip_index

    table = {"eye_outer_right": mp.RIGHT_EYE_OUTER, "eye_inner_right": mp.RIGHT_EYE_INNER,
             "eye_inner_left": mp.LEFT_EYE_INNER, "eye_outer_left": mp.LEFT_EYE_OUTER,
             "mouth_corner_right": mp.MOUTH_CORNERS[0], "mouth_corner_left": mp.MOUTH_CORNERS[1]}
    if name == "nose_tip":
        return nose_tip_index(generic_neutral)
    return int(table[name])


def _embedding_cache_key(model, face_tri_rows, eye_tri_rows, sparse_pairs, generic, cfg, label_face_skin) -> str:
    import hashlib
    import json
    from dataclasses import asdict

    from engine.face.model import FACE_MODEL_CODE_VERSION

    h = hashlib.sha256()
    for arr in (model.neutral, model.triangles, np.asarray(face_tri_rows), np.asarray(eye_tri_rows),
                model.vertex_region):
        a = np.ascontiguousarray(arr)
        h.update(str(a.shape).encode() + a.tobytes())
    if sparse_pairs:
        for k in sorted(sparse_pairs):
            h.update(k.encode() + np.asarray(sparse_pairs[k], np.float64).tobytes())
    h.update(generic.content_hash().encode())
    h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
    h.update(f"code={FACE_MODEL_CODE_VERSION};skin={label_face_skin}".encode())
    return h.hexdigest()


def embed_mediapipe(model, *, face_tri_rows: np.ndarray, eye_tri_rows: np.ndarray | None = None,
                    sparse_pairs: dict[str, np.ndarray] | None = None, cache_dir=None, inputs=(),
                    label_face_skin: bool = False, config: RegistrationConfig | None = None):
    """Compute (or load from cache) the MediaPipe-478 embedding of ``model`` and return the
    model with ``landmark_tri/bary/weight`` filled, LIPS transferred from MediaPipe's lip
    contours, and ``meta['correspondence']`` holding the quality figures.

    face_tri_rows: rows of ``model.triangles`` forming the face surface the 468 mesh points
    may land on; eye_tri_rows: rows the 10 iris points land on (weight 0 either way).
    label_face_skin: also relabel the target's SKIN/HEAD split from the registered MediaPipe
    face (for models without a face material, e.g. FLAME).
    """
    import json
    import time
    from dataclasses import replace
    from pathlib import Path

    from engine.face import landmarks as mp
    from engine.face.model import Region
    from engine.face.model_builtin import builtin_iris, lip_band, load_builtin_model

    cfg = config or RegistrationConfig()
    generic = load_builtin_model(None)
    eye_tri_rows = np.zeros(0, np.int64) if eye_tri_rows is None else np.asarray(eye_tri_rows, np.int64)
    face_tri_rows = np.asarray(face_tri_rows, np.int64)
    key = _embedding_cache_key(model, face_tri_rows, eye_tri_rows, sparse_pairs, generic, cfg, label_face_skin)
    cache_file = Path(cache_dir) / f"mp478_embedding_{model.name}_{key[:20]}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                cached = {k: z[k] for k in z.files}
            report = json.loads(str(cached["report"]))
            report["cache"] = "hit"
            return replace(model, landmark_tri=cached["landmark_tri"].astype(np.int64),
                           landmark_bary=cached["landmark_bary"].astype(np.float32),
                           landmark_weight=cached["landmark_weight"].astype(np.float32),
                           vertex_region=cached["vertex_region"].astype(np.uint8),
                           meta=dict(model.meta, correspondence=report))
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite it

    t0 = time.perf_counter()
    neutral = model.neutral.astype(np.float64)
    tris = model.triangles
    src = generic.neutral.astype(np.float64)
    src_tris = generic.triangles
    target = SurfaceQuery(neutral, tris[face_tri_rows])

    sparse_src = sparse_dst = None
    init = None
    if sparse_pairs:
        names = sorted(sparse_pairs)
        sparse_src = np.array([_mediapipe_semantic_index(k, src) for k in names], np.int64)
        sparse_dst = np.stack([np.asarray(sparse_pairs[k], np.float64) for k in names])
    else:
        # Both models live in the same canonical frame and units: start by putting the
        # generic nose tip on the target's most protruding face point.
        tip_src = src[_mediapipe_semantic_index("nose_tip", src)]
        face_verts = np.unique(tris[face_tri_rows])
        tip_dst = neutral[face_verts[np.argmax(neutral[face_verts, 2])]]
        init = (1.0, np.eye(3), tip_dst - tip_src)
    oval = np.array(mp.FACE_OVAL, np.int64)
    fit_mask = np.ones(len(src), bool)
    fit_mask[oval] = False  # the oval is a silhouette contour: it follows the membrane
    reg = register_surface(src, src_tris, target, sparse_src=sparse_src, sparse_dst=sparse_dst, init=init,
                           fit_mask=fit_mask, config=cfg)

    # --- the 468 mesh points
    ltri = np.full(478, -1, np.int64)
    lbary = np.zeros((478, 3), np.float32)
    t468, b468, d468 = embed_points(reg.registered, neutral, tris, face_tri_rows)
    ltri[:468] = t468
    lbary[:468] = b468
    # --- irises: the similarity-mapped generic iris, moved with its eye ring's offsets
    iris_src = builtin_iris(generic)
    iris_pts = apply_similarity(iris_src, reg.similarity)
    offsets = reg.registered - reg.rigid_points
    for ring, sl in ((mp.RIGHT_EYE, slice(0, 5)), (mp.LEFT_EYE, slice(5, 10))):
        iris_pts[sl] += offsets[list(ring)].mean(0)
    d_iris = np.full(10, np.nan)
    if len(eye_tri_rows):
        t_i, b_i, d_iris = embed_points(iris_pts, neutral, tris, eye_tri_rows)
        ltri[468:] = t_i
        lbary[468:] = b_i
    weight = np.ones(478, np.float32)
    weight[oval] = 0.25  # contour points slide along the silhouette as the head turns
    gate = np.clip((0.6 - d468) / 0.4, 0.0, 1.0)  # residual > 0.2 cm: down-weight, 0 at 0.6 cm
    weight[:468] *= gate.astype(np.float32)
    weight[468:] = 0.0  # iris centres follow gaze, not the surface: never fit them rigidly
    weight[ltri < 0] = 0.0

    # --- regions transferred from the registered MediaPipe mesh
    region = model.vertex_region.copy()
    face_v = np.unique(tris[face_tri_rows])
    band_rows, _ = lip_band()
    mp_query = SurfaceQuery(reg.registered, src_tris)
    _, mt, mbary, md = mp_query.closest(neutral[face_v])
    in_band = np.isin(mt, band_rows)
    lips_v = face_v[in_band & (md < 1.0) & np.isin(region[face_v], [int(Region.SKIN), int(Region.HEAD)])]
    if label_face_skin:
        # on the registered MediaPipe face (points past its oval project onto the border
        # and quickly get farther than this)
        inside = md < 0.3
        skin = face_v[inside & np.isin(region[face_v], [int(Region.SKIN), int(Region.HEAD)])]
        head = face_v[~inside & np.isin(region[face_v], [int(Region.SKIN), int(Region.HEAD)])]
        region[skin] = int(Region.SKIN)
        region[head] = int(Region.HEAD)
    region[lips_v] = int(Region.LIPS)

    # --- validation figures
    report = _embedding_report(model, region, reg, ltri, d468, d_iris, face_tri_rows, sparse_pairs, sparse_src)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["n_lips_vertices"] = int(len(lips_v))
    report["cache"] = "miss"
    report["generic_model"] = generic.model_id()
    if cache_file is not None:
        try:
            from engine.util.atomic import atomic_path

            with atomic_path(cache_file) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, landmark_tri=ltri, landmark_bary=lbary, landmark_weight=weight, vertex_region=region,
                             registered=reg.registered.astype(np.float32), report=np.array(json.dumps(report)),
                             inputs=np.array([str(p) for p in inputs], dtype=str))
        except OSError:
            pass  # a read-only cache is not fatal: the embedding is simply recomputed next time
    return replace(model, landmark_tri=ltri, landmark_bary=lbary, landmark_weight=weight, vertex_region=region,
                   meta=dict(model.meta, correspondence=report))


def _embedding_report(model, region, reg: RegistrationResult, ltri, d468, d_iris, face_tri_rows, sparse_pairs,
                      sparse_src) -> dict:
    from engine.face import landmarks as mp
    from engine.face.model import Region

    tris = model.triangles
    neutral = model.neutral.astype(np.float64)
    rep: dict = {
        "rigid_residual_cm": round(reg.rigid_residual_cm, 4),
        "nonrigid_residual_cm": round(reg.nonrigid_residual_cm, 4),
        "nonrigid_offset_mean_cm": round(reg.offsets_mean_cm, 4),
        "scale": round(float(reg.similarity[0]), 4),
        "landmark_residual_mean_cm": round(float(d468.mean()), 4),
        "landmark_residual_max_cm": round(float(d468.max()), 4),
    }
    lip_idx = np.array(list(mp.LIPS_OUTER) + list(mp.LIPS_INNER), np.int64)
    lip_tri_has_lips = (region[tris[ltri[lip_idx]]] == int(Region.LIPS)).any(1)
    rep["lip_landmarks_on_lips"] = round(float(lip_tri_has_lips.mean()), 4)
    # inner lip contour vs the target's mouth opening (a boundary loop of the face surface)
    loops = boundary_loops(tris[face_tri_rows])
    inner = reg.registered[list(mp.LIPS_INNER)]
    if loops:
        cents = np.array([neutral[lp].mean(0) for lp in loops])
        mouth = loops[int(np.argmin(np.linalg.norm(cents - inner.mean(0), axis=1)))]
        tree = cKDTree(neutral[mouth])
        rep["inner_lip_to_mouth_opening_cm"] = round(float(tree.query(inner)[0].mean()), 4)
    eyes_v = np.flatnonzero(region == int(Region.EYES))
    if len(eyes_v):
        tree = cKDTree(neutral[eyes_v])
        eye_pts = reg.registered[list(mp.RIGHT_EYE) + list(mp.LEFT_EYE)]
        rep["eyelid_to_eyeball_cm"] = round(float(tree.query(eye_pts)[0].mean()), 4)
        rep["iris_residual_mean_cm"] = round(float(np.nanmean(d_iris)), 4) if np.isfinite(d_iris).any() else None
    if sparse_pairs:
        names = sorted(sparse_pairs)
        err = np.linalg.norm(reg.registered[sparse_src] - np.stack([sparse_pairs[k] for k in names]), axis=1)
        rep["semantic_point_error_cm"] = {k: round(float(e), 4) for k, e in zip(names, err)}
    oval = np.array(mp.FACE_OVAL, np.int64)
    rep["oval_residual_mean_cm"] = round(float(d468[oval].mean()), 4)
    return rep
