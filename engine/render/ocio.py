"""Colour management of the final render through OpenColorIO's built-in ACES config.

One module owns every colour conversion the render and the review movie make, all through
OCIO processors of a *pinned* built-in config (``cg-config-v2.1.0_aces-v1.3_ocio-v2.3``,
shipped inside the OpenColorIO wheel: no file to install, and the same transforms on every
node; ``ocio://cg-config-latest`` would change with the library version and so would the
pictures). The engine's colourspace names (the shot's ``plate.colourspace``) map onto the
config's colour spaces:

=================  ==================================  =================================
engine name        OCIO colour space                   kind
=================  ==================================  =================================
``sRGB``           ``sRGB - Texture``                  display-referred (8-bit video/PNG)
``Rec.709``        ``Gamma 2.4 Rec.709 - Texture``     display-referred (BT.1886 video)
``Linear Rec.709`` ``Linear Rec.709 (sRGB)``           scene-linear
``ACEScg``         ``ACEScg``                          scene-linear (AP1)
``ACES2065-1``     ``ACES2065-1``                      scene-linear (AP0)
=================  ==================================  =================================

The three encodings a frame passes through (DESIGN.md: networks see display-referred [0, 1],
EXRs are scene-linear in the plate's colourspace):

* :func:`plate_to_linear`: plate pixels -> the EXR's scene-linear space
  (:func:`engine.io.colour.linear_space_of`): an EXR plate is already there and is returned
  untouched (so pass-through pixels stay bit-identical); a video plate is linearised.
* :func:`plate_to_network` / :func:`network_to_linear`: the network's display-referred
  encoding is the plate's own for video plates, and ``sRGB - Texture`` (Rec.709 primaries,
  sRGB curve) for linear plates -- the same encoding the training data used
  (:func:`engine.io.colour.to_display`), clipped to [0, 1]; the inverse takes the network's
  output back into the EXR's space.
* :func:`view_transform`: EXR scene-linear -> a display through a view (review movies):
  ``ACES 1.0 - SDR Video`` (the ACES RRT + ODT) on the ``sRGB - Display`` for scene-linear
  plates; ``Un-tone-mapped`` for video plates, whose pixels were already graded for display,
  on the display they were encoded for (``Rec.1886 Rec.709 - Display`` for Rec.709,
  ``sRGB - Display`` for sRGB), so an untouched frame reproduces the plate.
"""
from __future__ import annotations

import functools

import numpy as np

from engine.errors import ConfigError
from engine.io import colour

__all__ = ["CONFIG_NAME", "OCIO_NAMES", "ocio_config", "ocio_name", "processor", "convert",
           "plate_to_linear", "plate_to_network", "network_to_linear", "view_transform",
           "default_view", "default_display", "DEFAULT_DISPLAY", "ocio_version"]

CONFIG_NAME = "cg-config-v2.1.0_aces-v1.3_ocio-v2.3"
DEFAULT_DISPLAY = "sRGB - Display"
OCIO_NAMES = {
    "sRGB": "sRGB - Texture",
    "Rec.709": "Gamma 2.4 Rec.709 - Texture",
    "Linear Rec.709": "Linear Rec.709 (sRGB)",
    "ACEScg": "ACEScg",
    "ACES2065-1": "ACES2065-1",
}
NETWORK_SPACE_FOR_LINEAR = "sRGB - Texture"


def _ocio():
    try:
        import PyOpenColorIO as OCIO
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ConfigError("OpenColorIO is not installed (pip install opencolorio)") from exc
    return OCIO


def ocio_version() -> str:
    return str(_ocio().__version__)


@functools.lru_cache(maxsize=1)
def ocio_config():
    """The pinned built-in ACES config (created once per process)."""
    OCIO = _ocio()
    return OCIO.Config.CreateFromBuiltinConfig(CONFIG_NAME)


def ocio_name(space: str) -> str:
    """The OCIO colour space of an engine colourspace name (OCIO names pass through)."""
    if space in OCIO_NAMES:
        return OCIO_NAMES[space]
    names = {cs.getName() for cs in ocio_config().getColorSpaces()}
    if space in names:
        return space
    raise ConfigError(f"unknown colourspace {space!r}; valid: {', '.join(OCIO_NAMES)} "
                      f"or a colour space of OCIO's {CONFIG_NAME}")


@functools.lru_cache(maxsize=64)
def processor(src: str, dst: str | None = None, *, display: str | None = None, view: str | None = None):
    """A cached CPU processor: colour space ``src`` -> ``dst``, or ``src`` -> (display, view)."""
    OCIO = _ocio()
    cfg = ocio_config()
    src_name = ocio_name(src)
    try:
        if dst is not None:
            proc = cfg.getProcessor(src_name, ocio_name(dst))
        else:
            if display not in list(cfg.getDisplays()):
                raise ConfigError(f"unknown OCIO display {display!r}; valid: {', '.join(cfg.getDisplays())}")
            if view not in list(cfg.getViews(display)):
                raise ConfigError(f"unknown OCIO view {view!r} for {display!r}; valid: "
                                  f"{', '.join(cfg.getViews(display))}")
            proc = cfg.getProcessor(OCIO.DisplayViewTransform(src=src_name, display=display, view=view))
    except OCIO.Exception as exc:
        raise ConfigError(f"OpenColorIO cannot convert {src} -> {dst or (display, view)}: {exc}") from None
    # Lossless optimisation: OCIO's default CPU path approximates pow() (errors ~3e-5);
    # lossless keeps the exact curves at a small cost.
    return proc.getOptimizedCPUProcessor(OCIO.OPTIMIZATION_LOSSLESS)


def _apply(proc, image: np.ndarray) -> np.ndarray:
    img = np.array(image, dtype=np.float32, order="C", copy=True)
    if img.shape[-1] != 3:
        raise ValueError(f"colour conversion needs RGB (..., 3) pixels, got {img.shape}")
    flat = img.reshape(-1, 3) if img.ndim != 3 else img
    proc.applyRGB(flat)
    return img


def convert(image: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Pixels (..., 3) from colour space ``src`` to ``dst`` (float32 copy)."""
    if ocio_name(src) == ocio_name(dst):
        return np.array(image, dtype=np.float32, copy=True)
    return _apply(processor(src, dst), colour.as_float(np.asarray(image)))


@functools.lru_cache(maxsize=8)
def _code_value_lut(space: str, bits: int) -> np.ndarray:
    """(2**bits, 3) float32: OCIO's ``space`` -> its linear counterpart for every code value."""
    n = 1 << bits
    ramp = np.repeat((np.arange(n, dtype=np.float32) / (n - 1))[:, None], 3, axis=1)
    return convert(ramp, space, colour.linear_space_of(space))


def plate_to_linear(image: np.ndarray, space: str) -> np.ndarray:
    """Plate pixels (H, W, 3; uint8/uint16/float) -> float32 scene-linear in
    ``colour.linear_space_of(space)``. Linear plates are returned as they are (float32).

    Integer video plates go through a per-code-value table made by OCIO once: a display
    space and its linear counterpart share primaries, so the transform is a per-channel
    curve and a lookup gives OCIO's values (grey exactly, colours within 1e-6) for a tenth
    of the cost of running OCIO on two million pixels per frame."""
    lin = colour.linear_space_of(space)
    arr = np.asarray(image)[..., :3]
    if lin != space and arr.dtype in (np.uint8, np.uint16):
        lut = _code_value_lut(space, 8 if arr.dtype == np.uint8 else 16)
        out = np.empty(arr.shape, np.float32)
        for c in range(3):
            out[..., c] = lut[arr[..., c], c]
        return out
    img = colour.as_float(arr)
    if lin == space:
        return np.ascontiguousarray(img, dtype=np.float32)
    return convert(img, space, lin)


def plate_to_network(image: np.ndarray, space: str) -> np.ndarray:
    """Plate pixels -> what the network sees: display-referred float32 RGB in [0, 1]."""
    img = colour.as_float(np.asarray(image)[..., :3])
    if space in colour.DISPLAY_SPACES:
        return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
    return np.clip(convert(img, space, NETWORK_SPACE_FOR_LINEAR), 0.0, 1.0)


def network_space(space: str) -> str:
    """The display-referred encoding the network works in for a plate in ``space``."""
    return space if space in colour.DISPLAY_SPACES else NETWORK_SPACE_FOR_LINEAR


def network_to_linear(display: np.ndarray, space: str) -> np.ndarray:
    """The network's display-referred RGB (for a plate in ``space``) -> the EXR's scene-linear."""
    return convert(np.clip(np.asarray(display, np.float32), 0.0, 1.0), network_space(space),
                   colour.linear_space_of(space))


def default_display(space: str) -> str:
    """The review display for a plate in ``space``: Rec.1886 (BT.1886 2.4 gamma) for Rec.709
    video plates, whose pixels were encoded for it (an untouched frame then comes back
    exactly), sRGB otherwise."""
    return "Rec.1886 Rec.709 - Display" if space == "Rec.709" else DEFAULT_DISPLAY


def default_view(space: str) -> str:
    """The review view for a plate in ``space``: the ACES output transform for scene-linear
    ACES plates, no tone mapping for display-referred (video) plates."""
    return "Un-tone-mapped" if space in colour.DISPLAY_SPACES else "ACES 1.0 - SDR Video"


def view_transform(linear: np.ndarray, linear_space: str, *, display: str = "auto",
                   view: str = "auto", plate_space: str | None = None) -> np.ndarray:
    """Scene-linear pixels in ``linear_space`` -> display-referred float32 in [0, 1] through
    OCIO's (display, view). ``"auto"``: :func:`default_display` / :func:`default_view` of
    ``plate_space`` (or of ``linear_space``)."""
    if display == "auto":
        display = default_display(plate_space or linear_space)
    if view == "auto":
        view = default_view(plate_space or linear_space)
    out = _apply(processor(linear_space, display=display, view=view), np.asarray(linear)[..., :3])
    return np.clip(out, 0.0, 1.0)
