"""Loader of FLAME (Li et al. 2017, "Learning a model of facial shape and expression from 4D
scans") from the user's ``generic_model.pkl``.

The file is a pickle of a dict: ``v_template`` (5023,3), ``shapedirs`` (5023,3,400: 300
shape + 100 expression components), ``posedirs`` (5023,3,36), ``J_regressor`` (5,5023,
scipy sparse), ``weights`` (5023,5), ``kintree_table`` (2,5), ``f`` (9976,3). The official
file stores some arrays as *chumpy* objects; chumpy is unmaintained and does not import on
current numpy, so :class:`_NoChumpyUnpickler` maps every ``chumpy.*`` class to a stub that
keeps the pickled state, and the loader turns stubs into numpy arrays (a chumpy ``Ch``
pickles its value as the ``x`` entry of its state).

Conversion to Portrait Engine's model space: metres -> centimetres (x100); FLAME's axes are
already +X subject's left, +Y up, +Z toward the viewer (the SMPL-family convention).
Identity = the first ``n_id`` shape components (FLAME's PCA directions are scaled to unit
variance, so ``id_std`` = 1); expression = ``shapedirs[..., 300:300+n_exp]`` named
``flameExp000`` ... with range [-3, 3].

Jaw: FLAME opens the mouth by rotating the jaw joint (linear blend skinning + pose
correctives), not with a blendshape. We do not implement general LBS; we add one extra
expression direction ``jawOpen`` = the displacement produced by LBS (with the jaw pose
corrective ``posedirs``) at a fixed jaw angle of ``JAW_OPEN_RAD`` about the jaw joint's
x axis, so coefficient 1 is that angle and the direction is the chord of the rotation (a
linearisation, accurate for moderate openings). Neck and eyeball rotations are not
modelled: head pose is the fitter's rigid transform.

UVs live in FLAME's separate ``head_template.obj``; pass it as ``template_obj`` to use
them, else ``uv`` is a cylindrical unwrap about the vertical axis (seam at the back).
Regions: connected components other than the largest (the eyeballs) are EYES; SKIN/HEAD
and LIPS are transferred from the registered MediaPipe mesh (the same routine as ICT).
"""
from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np

from engine.errors import MediaError
from engine.face.model import FACE_MODEL_CODE_VERSION, FaceModel, Region, validate_face_model

JAW_OPEN_RAD = 0.35  # ~20 degrees: a wide but natural mouth opening
N_SHAPE_TOTAL = 300  # FLAME's shapedirs: 300 identity then the expression components


class _ChumpyStub:
    """Stand-in for any chumpy class: keeps whatever state the pickle restores."""

    def __init__(self, *args, **kwargs) -> None:
        self._args = args
        self._state: dict = {}

    def __setstate__(self, state) -> None:
        self._state = state if isinstance(state, dict) else {"state": state}


class _NoChumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStub
        return super().find_class(module, name)


def _to_array(value, key: str) -> np.ndarray:
    if isinstance(value, _ChumpyStub):
        x = value._state.get("x")
        if x is None:
            raise MediaError(f"FLAME entry {key!r} is a chumpy expression without a stored value")
        return np.asarray(x)
    if hasattr(value, "toarray"):  # scipy sparse (J_regressor)
        return np.asarray(value.toarray())
    return np.asarray(value)


def read_flame_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """Read FLAME's generic_model.pkl into numpy arrays without chumpy."""
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"FLAME model not found: {p}")
    try:
        with open(p, "rb") as fh:
            raw = _NoChumpyUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError) as exc:
        raise MediaError(f"cannot read FLAME model {p}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(raw, dict):
        raise MediaError(f"{p} is not a FLAME model (pickle holds {type(raw).__name__}, not a dict)")
    need = ("v_template", "shapedirs", "f")
    missing = [k for k in need if k not in raw]
    if missing:
        raise MediaError(f"{p} is not a FLAME model (missing {', '.join(missing)})")
    return {k: _to_array(v, k) for k, v in raw.items()
            if k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")}


def _rot_x(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def jaw_open_direction(data: dict[str, np.ndarray], theta: float = JAW_OPEN_RAD) -> np.ndarray | None:
    """(V,3) displacement (file units) of LBS at jaw angle ``theta`` (+ the jaw's pose
    correctives), or None if the file lacks the skinning data. The sign of the rotation is
    chosen so that the lowest point of the face (the chin) moves down."""
    if not all(k in data for k in ("J_regressor", "weights", "kintree_table")):
        return None
    v = data["v_template"].astype(np.float64)
    jreg = data["J_regressor"].astype(np.float64)
    w = data["weights"].astype(np.float64)
    kin = data["kintree_table"].astype(np.int64)
    n_j = jreg.shape[0]
    if n_j < 3 or w.shape != (len(v), n_j) or kin.shape != (2, n_j):
        return None
    joints = jreg @ v
    jaw = 2  # FLAME's joints: global/root, neck, jaw, left eye, right eye
    # the jaw's descendants move with it (none in FLAME, but follow the tree anyway)
    moving = {jaw}
    for j in range(n_j):
        k, seen = j, set()
        while k >= 0 and k not in seen:
            seen.add(k)
            if k == jaw:
                moving.add(j)
            parent = int(kin[0, k])
            if parent == k or parent >= n_j or parent < 0 or parent > 2 ** 31:
                break
            k = parent
    wm = w[:, sorted(moving)].sum(1)
    best = None
    for sign in (1.0, -1.0):
        r = _rot_x(sign * theta)
        posed = v.copy()
        if "posedirs" in data and data["posedirs"].shape[-1] >= 9 * (n_j - 1):
            feat = np.zeros(9 * (n_j - 1))
            feat[9 * (jaw - 1): 9 * jaw] = (r - np.eye(3)).ravel()
            posed = posed + data["posedirs"].astype(np.float64) @ feat
        rotated = (posed - joints[jaw]) @ r.T + joints[jaw]
        out = wm[:, None] * rotated + (1.0 - wm[:, None]) * posed
        delta = out - v
        chin = np.argmin(np.where(wm > 0.5, v[:, 1], np.inf)) if (wm > 0.5).any() else None
        if chin is None:
            return None
        if delta[chin, 1] < 0:
            return delta
        best = delta
    return best


def _components(n_verts: int, tris: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    adj = sp.csr_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_verts, n_verts))
    return connected_components(adj, directed=False)[1]


def _cylinder_uv(v: np.ndarray) -> np.ndarray:
    c = v.mean(0)
    u = (np.arctan2(v[:, 0] - c[0], v[:, 2] - c[2]) + np.pi) / (2 * np.pi)
    y = v[:, 1]
    vv = (y - y.min()) / max(y.max() - y.min(), 1e-9)
    return np.clip(np.stack([u, vv], 1), 0, 1).astype(np.float32)


def load_flame_model(path, *, cache_dir=None, n_id: int = 100, n_exp: int = 50, jaw: bool = True,
                     template_obj: str | None = None, embed_landmarks: bool = True) -> FaceModel:
    """Load FLAME from ``generic_model.pkl``; see the module doc for the conventions."""
    t0 = time.perf_counter()
    data = read_flame_pickle(path)
    v = data["v_template"].astype(np.float64)
    sd = data["shapedirs"].astype(np.float64)
    f = data["f"].astype(np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or sd.ndim != 3 or sd.shape[:2] != v.shape or f.ndim != 2 or f.shape[1] != 3:
        raise MediaError(f"{path}: unexpected FLAME array shapes (v_template {v.shape}, shapedirs {sd.shape}, f {f.shape})")
    if f.min() < 0 or f.max() >= len(v):
        raise MediaError(f"{path}: FLAME faces index past the vertices")
    n_total = sd.shape[2]
    n_shape_file = min(N_SHAPE_TOTAL, n_total)
    n_id = max(0, min(int(n_id), n_shape_file))
    n_exp = max(0, min(int(n_exp), n_total - n_shape_file))
    scale = 100.0  # metres -> cm
    neutral = (v * scale).astype(np.float32)
    id_basis = np.moveaxis(sd[:, :, :n_id], 2, 0) * scale
    exp_basis = np.moveaxis(sd[:, :, n_shape_file:n_shape_file + n_exp], 2, 0) * scale
    exp_names = [f"flameExp{k:03d}" for k in range(n_exp)]
    exp_range = [[-3.0, 3.0]] * n_exp
    jaw_dir = jaw_open_direction(data) if jaw else None
    if jaw_dir is not None:
        exp_basis = np.concatenate([exp_basis, (jaw_dir * scale)[None]], 0)
        exp_names.append("jawOpen")
        exp_range.append([0.0, 1.0])

    # winding: FLAME's faces are outward; guard against a flipped file (face must look +Z)
    comp = _components(len(v), f)
    sizes = np.bincount(comp)
    main = int(np.argmax(sizes))
    main_tri = np.flatnonzero(comp[f[:, 0]] == main)
    tv = neutral[f[main_tri]].astype(np.float64)
    front = tv.mean(1)[:, 2] > np.median(neutral[:, 2])
    if (np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])[front].sum(0)[2]) < 0:
        f = f[:, ::-1].copy()
    region = np.full(len(v), int(Region.HEAD), np.uint8)
    region[comp != main] = int(Region.EYES)
    eye_tri = np.flatnonzero(comp[f[:, 0]] != main)

    if template_obj is not None:
        from engine.face.model_ict import _per_vertex_uv, parse_obj

        obj = parse_obj(Path(template_obj))
        if len(obj["v"]) != len(v):
            raise MediaError(f"{template_obj} has {len(obj['v'])} vertices, FLAME has {len(v)}")
        uv, tile = _per_vertex_uv(len(v), obj["faces"], obj["fvt"], obj["vt"])
    else:
        uv, tile = _cylinder_uv(neutral.astype(np.float64)), np.zeros(len(v), np.int16)

    model = FaceModel(
        name="flame", neutral=neutral, id_basis=np.ascontiguousarray(id_basis, np.float32),
        exp_basis=np.ascontiguousarray(exp_basis, np.float32), id_names=tuple(f"shape{k:03d}" for k in range(n_id)),
        exp_names=tuple(exp_names), exp_range=np.asarray(exp_range, np.float32).reshape(-1, 2),
        id_std=np.ones(n_id, np.float32), triangles=np.ascontiguousarray(f), uv=uv, vertex_region=region,
        landmark_tri=np.full(478, -1, np.int64), landmark_bary=np.zeros((478, 3), np.float32),
        landmark_weight=np.zeros(478, np.float32), source=str(path), uv_tile=tile,
        meta={"loader": "flame", "code_version": FACE_MODEL_CODE_VERSION, "jaw_open_rad": JAW_OPEN_RAD if jaw_dir is not None else None,
              "units": "cm (file metres x100)"},
    )
    if embed_landmarks:
        from engine.face.correspondence import embed_mediapipe

        model = embed_mediapipe(model, face_tri_rows=main_tri, eye_tri_rows=eye_tri, cache_dir=cache_dir,
                                inputs=[str(path)], label_face_skin=True)
    model.meta["load_seconds"] = round(time.perf_counter() - t0, 3)
    validate_face_model(model)
    return model
