"""Loader of the ICT Face Model light (ICT-FaceKit, USC ICT, MIT licence).

Files (the user configures the path of the first; the others are looked up beside it):

* ``ict_face_model_light_basis.npz``: ``neutral`` (26719,3), ``faces_quad`` (26384,4; 0-based,
  -1 in the 4th column for the 548 triangles), ``identity_deltas`` (100,V,3),
  ``expression_deltas`` (57,V,3), ``identity_names``, ``expression_names``;
* ``*generic_neutral_mesh.obj``: the same vertices with UVs (``vt``) and materials
  (``usemtl M_Face``, ``M_BackHead``, ``M_Teeth``, ...), which give the regions;
* ``*vertex_indices.json`` (optional): ``idx_to_landmark_verts``, the 68 Multi-PIE landmarks
  on the mesh, used only as sparse semantic pairs to initialise the MediaPipe registration.

What was checked on the real files (and is asserted by the loader where cheap):
units are centimetres (head 24.8 cm wide), +X is the subject's left (``eyeBlink_L`` and
``M_ScleraLeft`` live at x > 0), +Y up, +Z toward the viewer (nose tip has the largest z),
so ICT already is in Portrait Engine's model space. The identity deltas are scaled to unit
variance (ICT's sample identities have N(0,1) coefficients), so ``id_std`` is 1. Expression
weights are ARKit-like in [0,1]; names are converted to ARKit spelling
(``eyeBlink_L`` -> ``eyeBlinkLeft``).

UVs: ICT uses UDIM tiles (the face, eyes and occlusion shell in tile 0, back of the head in
1, gums 2, teeth 3, tear film 4-5, eyelashes 6). ``uv`` is the position inside the tile and
``uv_tile`` the tile. 2,099 vertices sit on UV seams (several ``vt`` per vertex): we keep the
``vt`` used by most of the vertex's face corners (ties: the lowest ``vt`` index), which
keeps every face-tile vertex in the face tile.

Regions: from the materials (M_Face -> SKIN, M_BackHead -> HEAD, M_Teeth/M_GumsTongue ->
MOUTH_INTERIOR, M_Sclera*/M_Iris* -> EYES, eyelashes / occlusion / blend / tear-film shells
-> OTHER). ICT has no lip material: LIPS is transferred from MediaPipe's lip contours
through the computed landmark correspondence (see ``correspondence.embed_mediapipe``).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from engine.errors import MediaError
from engine.face.model import FACE_MODEL_CODE_VERSION, FaceModel, Region, validate_face_model

MATERIAL_REGIONS = {
    "M_Face": Region.SKIN,
    "M_BackHead": Region.HEAD,
    "M_Teeth": Region.MOUTH_INTERIOR,
    "M_GumsTongue": Region.MOUTH_INTERIOR,
    "M_ScleraLeft": Region.EYES,
    "M_ScleraRight": Region.EYES,
    "M_IrisLeft": Region.EYES,
    "M_IrisRight": Region.EYES,
    "M_LacrimalFluid": Region.OTHER,
    "M_EyeBlend": Region.OTHER,
    "M_EyeOcclusion": Region.OTHER,
    "M_EyeLashes": Region.OTHER,
}
# When a vertex belongs to several materials the more specific region wins (M_Face's
# border with M_BackHead is face skin).
_REGION_PRIORITY = [Region.LIPS, Region.SKIN, Region.MOUTH_INTERIOR, Region.EYES, Region.HEAD, Region.OTHER]


def arkit_name(ict_name: str) -> str:
    """ICT expression name -> ARKit spelling: ``eyeBlink_L`` -> ``eyeBlinkLeft``,
    ``PupilDilate_R`` -> ``pupilDilateRight``."""
    n = ict_name
    if n.endswith("_L"):
        n = n[:-2] + "Left"
    elif n.endswith("_R"):
        n = n[:-2] + "Right"
    return n[:1].lower() + n[1:]


def _find_beside(npz: Path, pattern: str) -> Path | None:
    hits = sorted(npz.parent.glob(pattern))
    return hits[0] if hits else None


def parse_obj(path: Path) -> dict:
    """Minimal OBJ reader: vertices, vt, polygon faces (vertex and vt indices, 0-based) and
    the material of each face."""
    verts, vts, faces, fvts, mats = [], [], [], [], []
    cur = ""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("v "):
                    verts.append(line.split()[1:4])
                elif line.startswith("vt "):
                    vts.append(line.split()[1:3])
                elif line.startswith("f "):
                    corners = [c.split("/") for c in line.split()[1:]]
                    faces.append([int(c[0]) - 1 for c in corners])
                    fvts.append([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners])
                    mats.append(cur)
                elif line.startswith("usemtl"):
                    parts = line.split()
                    cur = parts[1] if len(parts) > 1 else ""
    except (OSError, ValueError, IndexError) as exc:
        raise MediaError(f"cannot parse OBJ {path}: {exc}") from None
    return {"v": np.asarray(verts, np.float64), "vt": np.asarray(vts, np.float64), "faces": faces,
            "fvt": fvts, "mats": mats}


def _per_vertex_uv(n_verts: int, faces: list, fvts: list, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    votes: list[Counter] = [Counter() for _ in range(n_verts)]
    for f, t in zip(faces, fvts):
        for vi, ti in zip(f, t):
            if ti >= 0:
                votes[vi][ti] += 1
    uv = np.zeros((n_verts, 2), np.float64)
    for vi, c in enumerate(votes):
        if c:
            best = max(c.items(), key=lambda kv: (kv[1], -kv[0]))[0]
            uv[vi] = vt[best]
    tile = np.floor(np.clip(uv[:, 0], 0, None)).astype(np.int16)
    # A u exactly on a tile's right edge (1.0, 2.0, ...) belongs to the tile on its left.
    on_edge = (uv[:, 0] == tile) & (tile > 0)
    tile[on_edge] -= 1
    local = np.stack([uv[:, 0] - tile, uv[:, 1]], 1)
    return np.clip(local, 0.0, 1.0).astype(np.float32), tile


def _split_quads(faces_quad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quads (a,b,c,d) -> (a,b,c), (a,c,d); rows with d == -1 are triangles. Returns the
    triangles and, per triangle, the row of the polygon it came from."""
    fq = np.asarray(faces_quad, np.int64)
    is_quad = fq[:, 3] >= 0
    t1 = fq[:, [0, 1, 2]]
    t2 = fq[is_quad][:, [0, 2, 3]]
    tris = np.concatenate([t1, t2])
    src = np.concatenate([np.arange(len(fq)), np.flatnonzero(is_quad)])
    order = np.argsort(src, kind="stable")  # keep each polygon's triangles together
    return tris[order], src[order]


def _obj_derived(obj_path: Path, neutral: np.ndarray, n_poly: int, cache_dir) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """Per-polygon material names and per-vertex uv / UDIM tile from the OBJ (parsing it
    takes ~1.5 s, so the result is cached under cache_dir keyed by the OBJ's content hash)."""
    from engine.util.hashing import file_sha256

    cache_file = None
    if cache_dir is not None:
        key = file_sha256(obj_path)[:24]
        cache_file = Path(cache_dir) / f"ict_obj_{key}_v{FACE_MODEL_CODE_VERSION}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    if len(z["poly_mats"]) == n_poly and len(z["uv"]) == len(neutral):
                        return z["poly_mats"], z["uv"], z["uv_tile"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache entry: parse again
    obj = parse_obj(obj_path)
    v = len(neutral)
    if len(obj["v"]) != v or len(obj["faces"]) != n_poly:
        raise MediaError(f"{obj_path} does not match the basis file ({len(obj['v'])} vs {v} vertices)")
    if np.abs(obj["v"] - neutral).max() > 1e-3:
        raise MediaError(f"{obj_path} vertices differ from the neutral of the basis file")
    uv, uv_tile = _per_vertex_uv(v, obj["faces"], obj["fvt"], obj["vt"])
    poly_mats = np.asarray(obj["mats"], dtype=str)
    if cache_file is not None:
        try:
            from engine.util.atomic import atomic_path

            with atomic_path(cache_file) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, poly_mats=poly_mats, uv=uv, uv_tile=uv_tile)
        except OSError:
            pass  # read-only cache: parse again next time
    return poly_mats, uv, uv_tile


def load_ict_model(path, *, cache_dir=None, n_id: int | None = None, expressions=None,
                   embed_landmarks: bool = True) -> FaceModel:
    """Load ICT-FaceKit light from ``path`` (the .npz; .obj / .json beside it).

    n_id: keep the first n identity components (default all 100). expressions: optional list
    of (ICT or ARKit) names to keep. embed_landmarks=False skips the MediaPipe correspondence
    (used only to build the generic built-in model from ICT renders).
    """
    t0 = time.perf_counter()
    npz_path = Path(path)
    if not npz_path.is_file():
        raise MediaError(f"ICT face model not found: {npz_path}")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("neutral", "faces_quad", "identity_deltas", "expression_deltas",
                                       "expression_names") if k in z.files}
            id_names_raw = z["identity_names"] if "identity_names" in z.files else None
    except (OSError, ValueError) as exc:
        raise MediaError(f"cannot read ICT face model {npz_path}: {exc}") from None
    missing = {"neutral", "faces_quad", "identity_deltas", "expression_deltas", "expression_names"} - set(data)
    if missing:
        raise MediaError(f"{npz_path} is not an ICT light basis file (missing {', '.join(sorted(missing))})")
    neutral = data["neutral"].astype(np.float32)
    v = len(neutral)
    if neutral.ndim != 2 or neutral.shape[1] != 3 or data["identity_deltas"].shape[1:] != (v, 3) \
            or data["expression_deltas"].shape[1:] != (v, 3) or data["faces_quad"].shape[1] != 4:
        raise MediaError(f"{npz_path}: inconsistent ICT array shapes")
    obj_path = _find_beside(npz_path, "*generic_neutral_mesh.obj")
    if obj_path is None:
        raise MediaError(f"ICT model needs generic_neutral_mesh.obj beside {npz_path} (UVs and regions)")
    json_path = _find_beside(npz_path, "*vertex_indices.json")

    poly_mats, uv, uv_tile = _obj_derived(obj_path, neutral, len(data["faces_quad"]), cache_dir)

    tris, poly = _split_quads(data["faces_quad"])
    if tris.min() < 0 or tris.max() >= v:
        raise MediaError(f"{npz_path}: face indices out of range")
    mats = poly_mats[poly]
    # The file's winding is used as is (outward); guard against a flipped export.
    face_tris = tris[mats == "M_Face"]
    if len(face_tris):
        tv = neutral[face_tris].astype(np.float64)
        if np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0]).sum(0)[2] < 0:
            tris = tris[:, ::-1].copy()

    region = np.full(v, 255, np.uint8)
    rank = {r: i for i, r in enumerate(_REGION_PRIORITY)}
    best = np.full(v, len(_REGION_PRIORITY), np.int64)
    for mat in np.unique(mats):
        reg = MATERIAL_REGIONS.get(str(mat), Region.OTHER)
        idx = np.unique(tris[mats == mat])
        better = rank[reg] < best[idx]
        best[idx[better]] = rank[reg]
        region[idx[better]] = int(reg)
    region[region == 255] = int(Region.OTHER)

    ict_names = [str(s) for s in data["expression_names"]]
    exp = np.asarray(data["expression_deltas"], np.float32)
    names = [arkit_name(n) for n in ict_names]
    if expressions is not None:
        want = [arkit_name(n) if "_" in n else n for n in expressions]
        unknown = [n for n in want if n not in names]
        if unknown:
            from engine.errors import ConfigError
            raise ConfigError(f"ICT model has no expression(s) {', '.join(unknown)}")
        keep = [names.index(n) for n in want]
        exp = exp[keep]
        names = [names[i] for i in keep]
    ident = np.asarray(data["identity_deltas"], np.float32)
    if n_id is not None:
        ident = ident[: max(0, int(n_id))]
    id_names = tuple(str(s) for s in id_names_raw[: len(ident)]) if id_names_raw is not None \
        else tuple(f"identity{k:03d}" for k in range(len(ident)))

    sparse = None
    if json_path is not None:
        try:
            idx68 = json.loads(json_path.read_text())["idx_to_landmark_verts"]
            if len(idx68) == 68:
                sparse = np.asarray(idx68, np.int64)
        except (OSError, ValueError, KeyError):
            sparse = None  # optional input: registration falls back to the nose-tip init

    model = FaceModel(
        name="ict-light",
        neutral=neutral,
        id_basis=ident,
        exp_basis=exp,
        id_names=id_names,
        exp_names=tuple(names),
        exp_range=np.tile(np.array([[0.0, 1.0]], np.float32), (len(names), 1)),
        id_std=np.ones(len(ident), np.float32),
        triangles=np.ascontiguousarray(tris, np.int64),
        uv=uv,
        vertex_region=region,
        landmark_tri=np.full(478, -1, np.int64),
        landmark_bary=np.zeros((478, 3), np.float32),
        landmark_weight=np.zeros(478, np.float32),
        source=str(npz_path),
        uv_tile=uv_tile,
        meta={"loader": "ict", "code_version": FACE_MODEL_CODE_VERSION, "obj": str(obj_path),
              "vertex_indices": str(json_path) if json_path else None},
    )
    if embed_landmarks:
        from engine.face.correspondence import embed_mediapipe, multipie68_sparse_pairs

        face_tri = np.flatnonzero(np.isin(mats, ["M_Face"]))
        iris_tri = np.flatnonzero(np.isin(mats, ["M_IrisLeft", "M_IrisRight"]))
        pairs = multipie68_sparse_pairs(neutral, sparse) if sparse is not None else None
        model = embed_mediapipe(model, face_tri_rows=face_tri, eye_tri_rows=iris_tri, sparse_pairs=pairs,
                                cache_dir=cache_dir, inputs=[npz_path, obj_path] + ([json_path] if json_path else []))
    model.meta["load_seconds"] = round(time.perf_counter() - t0, 3)
    validate_face_model(model)
    return model
