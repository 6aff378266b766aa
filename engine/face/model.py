"""`FaceModel`: Portrait Engine's linear morphable face prior, and `load_face_model`.

A face model is a linear blendshape model (Blanz & Vetter 1999; expression blendshapes as
in ARKit / ICT-FaceKit):

    vertices(id, exp) = neutral + sum_k id_k * id_basis[k] + sum_j exp_j * exp_basis[j]

plus what the rest of the engine needs around it: a triangle mesh with UVs and per-vertex
semantic regions (for rasterised conditioning maps), and an embedding of MediaPipe's 478
landmarks on the surface (for landmark fitting).

Model space (every loader converts to it): +X to the subject's left (image right when the
subject faces the camera), +Y up, +Z out of the face toward the viewer; units centimetres;
origin near the centre of the head. A frontal face in the OpenCV camera of
``engine/face/camera.py`` therefore has rotation axis-angle (pi, 0, 0).

Loaders: ``builtin`` (MediaPipe 468-vertex topology; needs no files; see
``model_builtin.py``), ``ict`` (ICT-FaceKit light, MIT; ``model_ict.py``), ``flame``
(FLAME ``generic_model.pkl``; ``model_flame.py``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from engine.errors import ConfigError, MediaError

N_MP_LANDMARKS = 478  # MediaPipe Face Mesh with refined irises (468 mesh + 2 x 5 iris points)

# Version of the loaders' derived data (regions, correspondence, uv choice). Bump it when
# that code changes: it keys the correspondence cache and enters the content hash.
FACE_MODEL_CODE_VERSION = "1"


class Region(IntEnum):
    """Semantic region of a model vertex (drives region maps and subsets for rendering)."""

    OTHER = 0           # helper geometry: eyelashes, eye occlusion/blend shells, tear film, ...
    SKIN = 1            # facial skin inside the face mask
    LIPS = 2            # vermilion of both lips
    MOUTH_INTERIOR = 3  # teeth, gums, tongue, mouth cavity
    EYES = 4            # eyeballs: sclera, iris, pupil
    HEAD = 5            # skin outside the face mask: scalp, ears, neck


FACE_REGIONS = (Region.SKIN, Region.LIPS, Region.MOUTH_INTERIOR, Region.EYES)


@dataclass(frozen=True, eq=False)
class FaceModel:
    """A linear morphable face model in Portrait Engine's model space (see module doc)."""

    name: str
    neutral: np.ndarray          # (V,3) float32, cm
    id_basis: np.ndarray         # (K_id,V,3) float32
    exp_basis: np.ndarray        # (K_exp,V,3) float32
    id_names: tuple[str, ...]
    exp_names: tuple[str, ...]   # ARKit-style names where the model has semantics
    exp_range: np.ndarray        # (K_exp,2) float32 plausible coefficient range
    id_std: np.ndarray           # (K_id,) float32 prior std of the identity coefficients
    triangles: np.ndarray        # (F,3) int64, consistently oriented, normals out of the face
    uv: np.ndarray               # (V,2) float32 in [0,1] (within the vertex's UDIM tile)
    vertex_region: np.ndarray    # (V,) uint8 Region codes
    landmark_tri: np.ndarray     # (478,) int64 triangle of each MediaPipe landmark (-1: not embedded)
    landmark_bary: np.ndarray    # (478,3) float32 barycentric coordinates in that triangle
    landmark_weight: np.ndarray  # (478,) float32 fitting weight (0: not embedded / unreliable)
    source: str                  # file path, or "builtin"
    uv_tile: np.ndarray | None = None        # (V,) int16 UDIM tile index (0 = the face tile); None = all 0
    parent_index: np.ndarray | None = None   # (V,) int64 vertex index in the full model, for subsets
    meta: dict = field(default_factory=dict)  # provenance / quality figures (JSON-able)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---------------------------------------------------------------- sizes
    @property
    def n_vertices(self) -> int:
        return int(self.neutral.shape[0])

    @property
    def n_id(self) -> int:
        return int(self.id_basis.shape[0])

    @property
    def n_exp(self) -> int:
        return int(self.exp_basis.shape[0])

    def exp_index(self, name: str) -> int:
        """Index of a named expression coefficient (ConfigError if the model lacks it)."""
        try:
            return self.exp_names.index(name)
        except ValueError:
            raise ConfigError(f"face model {self.name!r} has no expression {name!r}") from None

    # ---------------------------------------------------------------- evaluation
    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        key = (str(device), dtype)
        hit = self._cache.get(key)
        if hit is None:
            v = self.n_vertices
            hit = {
                "neutral": torch.as_tensor(self.neutral, device=device, dtype=dtype).reshape(1, v * 3),
                "id": torch.as_tensor(self.id_basis, device=device, dtype=dtype).reshape(self.n_id, v * 3),
                "exp": torch.as_tensor(self.exp_basis, device=device, dtype=dtype).reshape(self.n_exp, v * 3),
                "ltri": torch.as_tensor(self.triangles[np.maximum(self.landmark_tri, 0)], device=device),
                "lbary": torch.as_tensor(self.landmark_bary * (self.landmark_tri >= 0)[:, None],
                                         device=device, dtype=dtype),
            }
            self._cache[key] = hit
        return hit

    def vertices(self, id_coeffs: torch.Tensor | None, exp_coeffs: torch.Tensor | None) -> torch.Tensor:
        """(B,K_id), (B,K_exp) -> (B,V,3) vertices; differentiable; device/dtype of the inputs.

        Either argument may be None (zeros); with K_id == 0 pass a (B,0) tensor or None.
        A batch of 1 broadcasts against the other argument's batch.
        """
        ref = id_coeffs if id_coeffs is not None else exp_coeffs
        if ref is None:
            raise ValueError("vertices() needs id_coeffs or exp_coeffs to know the batch size")
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        t = self._tensors(ref.device, dtype)
        out = t["neutral"]
        if id_coeffs is not None and self.n_id:
            if id_coeffs.shape[-1] != self.n_id:
                raise ValueError(f"id_coeffs has {id_coeffs.shape[-1]} columns, model has {self.n_id}")
            out = out + id_coeffs.to(dtype) @ t["id"]
        if exp_coeffs is not None and self.n_exp:
            if exp_coeffs.shape[-1] != self.n_exp:
                raise ValueError(f"exp_coeffs has {exp_coeffs.shape[-1]} columns, model has {self.n_exp}")
            out = out + exp_coeffs.to(dtype) @ t["exp"]
        b = max(c.shape[0] for c in (id_coeffs, exp_coeffs) if c is not None)
        return out.expand(b, -1).reshape(b, self.n_vertices, 3)

    def landmarks(self, verts: torch.Tensor) -> torch.Tensor:
        """(B,V,3) -> (B,478,3) MediaPipe landmarks via the barycentric embedding.

        Landmarks that are not embedded (landmark_tri == -1) come out as zeros; their
        landmark_weight is 0.
        """
        t = self._tensors(verts.device, verts.dtype)
        tri = t["ltri"]                      # (478,3)
        corners = verts[:, tri]              # (B,478,3,3)
        return (corners * t["lbary"][None, :, :, None]).sum(2)

    # ---------------------------------------------------------------- identity
    def content_hash(self) -> str:
        """sha256 over every array and name that defines the model (cached)."""
        hit = self._cache.get("hash")
        if hit is None:
            h = hashlib.sha256()
            h.update(self.name.encode())
            for arr in (self.neutral, self.id_basis, self.exp_basis, self.exp_range, self.id_std,
                        self.triangles, self.uv, self.vertex_region, self.landmark_tri,
                        self.landmark_bary, self.landmark_weight,
                        self.uv_tile if self.uv_tile is not None else np.zeros(0),
                        self.parent_index if self.parent_index is not None else np.zeros(0)):
                a = np.ascontiguousarray(arr)
                h.update(str(a.dtype).encode() + str(a.shape).encode())
                h.update(a.tobytes())
            h.update("\x1f".join(self.id_names).encode())
            h.update("\x1e".join(self.exp_names).encode())
            hit = h.hexdigest()
            self._cache["hash"] = hit
        return hit

    def model_id(self) -> str:
        """Short, stable identity for provenance: ``<name>-<12 hex of content_hash>``."""
        return f"{self.name}-{self.content_hash()[:12]}"

    # ---------------------------------------------------------------- views
    def region_mask(self, regions: Iterable[int]) -> np.ndarray:
        codes = np.array([int(r) for r in regions], np.uint8)
        return np.isin(self.vertex_region, codes)

    def subset(self, regions: Iterable[int] = FACE_REGIONS, name: str | None = None) -> "FaceModel":
        """Submesh of the vertices in ``regions`` (triangles with all corners kept).

        For rendering: ICT has 26,719 vertices including head, neck, eyelashes and helper
        shells; the face regions alone keep rasterisation fast. ``parent_index`` maps back
        to the full model; landmarks whose triangle is dropped become non-embedded.
        """
        keep = self.region_mask(regions)
        new_index = np.full(self.n_vertices, -1, np.int64)
        new_index[keep] = np.arange(int(keep.sum()))
        tri_keep = keep[self.triangles].all(1)
        tri_new = np.full(len(self.triangles), -1, np.int64)
        tri_new[tri_keep] = np.arange(int(tri_keep.sum()))
        ltri = np.where(self.landmark_tri >= 0, tri_new[np.maximum(self.landmark_tri, 0)], -1)
        parent = np.flatnonzero(keep) if self.parent_index is None else self.parent_index[keep]
        label = "+".join(Region(int(r)).name.lower() for r in regions)
        return replace(
            self,
            name=name or f"{self.name}[{label}]",
            neutral=np.ascontiguousarray(self.neutral[keep]),
            id_basis=np.ascontiguousarray(self.id_basis[:, keep]),
            exp_basis=np.ascontiguousarray(self.exp_basis[:, keep]),
            triangles=new_index[self.triangles[tri_keep]],
            uv=np.ascontiguousarray(self.uv[keep]),
            uv_tile=None if self.uv_tile is None else self.uv_tile[keep],
            vertex_region=self.vertex_region[keep],
            landmark_tri=ltri.astype(np.int64),
            landmark_weight=np.where(ltri >= 0, self.landmark_weight, 0).astype(np.float32),
            parent_index=parent,
            meta=dict(self.meta, subset_of=self.model_id()),
        )

    def face_only(self) -> "FaceModel":
        """The usual rendering view: skin, lips, mouth interior and eyes."""
        return self.subset(FACE_REGIONS)

    def with_expressions(self, names: Iterable[str]) -> "FaceModel":
        """A model restricted to the named expression components (e.g. for a fitter that
        should not explain landmarks with pupil dilation)."""
        idx = [self.exp_index(n) for n in names]
        return replace(self, exp_basis=np.ascontiguousarray(self.exp_basis[idx]),
                       exp_names=tuple(self.exp_names[i] for i in idx),
                       exp_range=np.ascontiguousarray(self.exp_range[idx]),
                       meta=dict(self.meta, expressions_of=self.model_id()))

    def with_identity(self, n_id: int) -> "FaceModel":
        """Keep the first ``n_id`` identity components."""
        n_id = max(0, min(int(n_id), self.n_id))
        return replace(self, id_basis=np.ascontiguousarray(self.id_basis[:n_id]),
                       id_names=self.id_names[:n_id], id_std=self.id_std[:n_id])

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as one .npz (atomically); read back with ``load_face_model('npz', path)``."""
        import json

        from engine import __version__
        from engine.util.atomic import atomic_path

        path = Path(path)
        arrays = {
            "neutral": self.neutral, "id_basis": self.id_basis, "exp_basis": self.exp_basis,
            "exp_range": self.exp_range, "id_std": self.id_std, "triangles": self.triangles,
            "uv": self.uv, "vertex_region": self.vertex_region, "landmark_tri": self.landmark_tri,
            "landmark_bary": self.landmark_bary, "landmark_weight": self.landmark_weight,
            "id_names": np.array(self.id_names, dtype=str), "exp_names": np.array(self.exp_names, dtype=str),
        }
        if self.uv_tile is not None:
            arrays["uv_tile"] = self.uv_tile
        if self.parent_index is not None:
            arrays["parent_index"] = self.parent_index
        header = {"schema": FACE_MODEL_SCHEMA, "schema_version": FACE_MODEL_SCHEMA_VERSION,
                  "code_version": __version__, "name": self.name, "source": self.source,
                  "content_hash": self.content_hash(), "meta": self.meta}
        arrays["header"] = np.array(json.dumps(header, sort_keys=True, default=str))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return path


FACE_MODEL_SCHEMA = "portrait.face_model"
FACE_MODEL_SCHEMA_VERSION = 1


def load_face_model_npz(path: str | os.PathLike) -> FaceModel:
    """Read a model written by :meth:`FaceModel.save`."""
    import json

    p = Path(path)
    if not p.is_file():
        raise MediaError(f"face model file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise MediaError(f"cannot read face model {p}: {exc}") from None
    try:
        header = json.loads(str(data["header"]))
    except (KeyError, ValueError):
        raise MediaError(f"{p} is not a Portrait Engine face model (no header)") from None
    if header.get("schema") != FACE_MODEL_SCHEMA:
        raise MediaError(f"{p} is not a Portrait Engine face model (schema {header.get('schema')!r})")
    if int(header.get("schema_version", 0)) > FACE_MODEL_SCHEMA_VERSION:
        raise MediaError(f"{p} was written by a newer Portrait Engine (face model schema "
                         f"{header['schema_version']} > {FACE_MODEL_SCHEMA_VERSION})")
    model = FaceModel(
        name=header["name"], neutral=data["neutral"].astype(np.float32),
        id_basis=data["id_basis"].astype(np.float32), exp_basis=data["exp_basis"].astype(np.float32),
        id_names=tuple(str(s) for s in data["id_names"]), exp_names=tuple(str(s) for s in data["exp_names"]),
        exp_range=data["exp_range"].astype(np.float32), id_std=data["id_std"].astype(np.float32),
        triangles=data["triangles"].astype(np.int64), uv=data["uv"].astype(np.float32),
        vertex_region=data["vertex_region"].astype(np.uint8), landmark_tri=data["landmark_tri"].astype(np.int64),
        landmark_bary=data["landmark_bary"].astype(np.float32),
        landmark_weight=data["landmark_weight"].astype(np.float32),
        source=str(p), uv_tile=data.get("uv_tile"), parent_index=data.get("parent_index"),
        meta=dict(header.get("meta", {})),
    )
    validate_face_model(model)
    return model


def validate_face_model(m: FaceModel) -> None:
    """Shape/dtype/range checks every loader runs before handing a model out (a broken
    model file should fail here with one line, not deep inside fitting)."""
    v = m.n_vertices
    problems = []
    if m.neutral.shape != (v, 3) or m.neutral.dtype != np.float32:
        problems.append(f"neutral {m.neutral.shape} {m.neutral.dtype}")
    if m.id_basis.ndim != 3 or m.id_basis.shape[1:] != (v, 3):
        problems.append(f"id_basis {m.id_basis.shape}")
    if m.exp_basis.ndim != 3 or m.exp_basis.shape[1:] != (v, 3):
        problems.append(f"exp_basis {m.exp_basis.shape}")
    if len(m.id_names) != m.n_id or m.id_std.shape != (m.n_id,):
        problems.append("id_names/id_std do not match id_basis")
    if len(m.exp_names) != m.n_exp or m.exp_range.shape != (m.n_exp, 2):
        problems.append("exp_names/exp_range do not match exp_basis")
    if m.triangles.ndim != 2 or m.triangles.shape[1] != 3 or m.triangles.dtype != np.int64:
        problems.append(f"triangles {m.triangles.shape} {m.triangles.dtype}")
    elif len(m.triangles) and (m.triangles.min() < 0 or m.triangles.max() >= v):
        problems.append("triangle indices out of range")
    if m.uv.shape != (v, 2):
        problems.append(f"uv {m.uv.shape}")
    elif len(m.uv) and (m.uv.min() < -1e-4 or m.uv.max() > 1 + 1e-4):
        problems.append("uv outside [0,1]")
    if m.vertex_region.shape != (v,):
        problems.append(f"vertex_region {m.vertex_region.shape}")
    if m.landmark_tri.shape != (N_MP_LANDMARKS,) or m.landmark_bary.shape != (N_MP_LANDMARKS, 3) \
            or m.landmark_weight.shape != (N_MP_LANDMARKS,):
        problems.append("landmark embedding is not for 478 landmarks")
    elif m.landmark_tri.max() >= len(m.triangles):
        problems.append("landmark triangle index out of range")
    if not np.isfinite(m.neutral).all() or not np.isfinite(m.exp_basis).all() or not np.isfinite(m.id_basis).all():
        problems.append("non-finite values")
    if problems:
        raise MediaError(f"face model {m.name!r} ({m.source}) is invalid: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------
# loading


@dataclass
class FaceModelConfig:
    """Which face model a shot uses (nerfstudio-style config next to its code).

    kind: ``builtin`` (default; needs no files), ``ict`` or ``flame`` (need ``path``), or
    ``npz`` (a model saved with :meth:`FaceModel.save`, e.g. an actor's builtin model).
    """

    kind: str = "builtin"
    path: str | None = None
    cache_dir: str | None = None
    n_id: int | None = None   # keep this many identity components (None: all)
    n_exp: int | None = None  # FLAME: expression components (None: all in the file)

    def load(self) -> FaceModel:
        kw = {}
        if self.n_id is not None:
            kw["n_id"] = self.n_id
        if self.n_exp is not None:
            kw["n_exp"] = self.n_exp
        return load_face_model(self.kind, self.path, cache_dir=self.cache_dir, **kw)


def default_cache_dir() -> Path:
    """Where derived face-model data (e.g. landmark correspondences) is cached:
    ``$PORTRAIT_CACHE_DIR/face_model`` or ``$XDG_CACHE_HOME/portrait_engine/face_model``."""
    root = os.environ.get("PORTRAIT_CACHE_DIR")
    if root:
        return Path(root) / "face_model"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "portrait_engine" / "face_model"


def load_face_model(kind: str, path: str | os.PathLike | None = None, *, cache_dir=None, **kw) -> FaceModel:
    """Load a face model.

    kind ``builtin``: path None -> the generic built-in model shipped with the engine; a path
    -> a saved built-in/actor model (.npz). ``ict``: path to ``ict_face_model_light_basis.npz``
    (the .obj and vertex-index json are looked up beside it). ``flame``: path to FLAME's
    ``generic_model.pkl``. ``npz``: any model saved with :meth:`FaceModel.save`.
    Extra keyword arguments go to the loader (``n_id``, ``n_exp``, ...).
    """
    kind = str(kind).lower().strip()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if kind == "builtin":
        from engine.face.model_builtin import load_builtin_model

        return load_builtin_model(path, **kw)
    if kind == "npz":
        if path is None:
            raise ConfigError("face model kind 'npz' needs a path")
        return load_face_model_npz(path)
    if kind == "ict":
        if path is None:
            raise ConfigError("face model kind 'ict' needs a path to ict_face_model_light_basis.npz")
        from engine.face.model_ict import load_ict_model

        return load_ict_model(path, cache_dir=cache, **kw)
    if kind == "flame":
        if path is None:
            raise ConfigError("face model kind 'flame' needs a path to FLAME's generic_model.pkl")
        from engine.face.model_flame import load_flame_model

        return load_flame_model(path, cache_dir=cache, **kw)
    raise ConfigError(f"unknown face model kind {kind!r} (expected builtin, ict, flame or npz)")
