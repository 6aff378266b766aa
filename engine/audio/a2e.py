"""Per-actor audio-to-expression model: speech -> mouth/jaw expression coefficients.

Trained on the plate's own audio and its tracked expression coefficients (the mouth/jaw
subset of the face model's expression basis), evaluated on the held-out last 10 % of frames.

Model (small temporal convolution net, CPU-trainable in a few minutes):

* a per-video-frame audio encoder: 1-D convolutions over the frame's CMVN log-mel window
  (``2*context+1`` mel frames x ``n_mels`` bands, :mod:`engine.audio.features`) -> a
  ``hidden``-d embedding (the audio front end of VOCA / FaceFormer-style models, but on
  voice-independent log-mels instead of a speech-recognition network we may not ship);
* optional viseme features from pocketsphinx phones, concatenated to the embedding;
* a temporal convolution network over video frames (non-causal, residual, dilations
  1-2-4: ~+-0.6 s context at 25 fps), which gives coarticulation and smooth motion
  (Bai et al. 2018 show such TCNs match recurrent nets on sequence modelling);
* a linear head to the K mouth coefficients, trained in per-coefficient standardised units
  with an L2 loss plus an L2 loss on frame-to-frame velocity (temporal consistency, as in
  VOCA's and FaceFormer's motion losses).

Voice independence: CMVN features, plus training-time VTLP frequency warping (Jaitly &
Hinton 2013: warping the frequency axis by a random factor ~U(0.85, 1.15) simulates other
vocal tract lengths), random spectral tilt and noise, so that a dub voice (another
speaker, another language) lands inside what the model has seen.

Silence: training windows get spans of silence (digital silence or a low noise floor)
whose target is the actor's closed-mouth rest pose (coefficient-wise median of the plate
frames with the most firmly closed lips), and at inference a voice-activity gate blends the
prediction over pauses of at least ``min_silence_s``: toward the actor's own *pause pose*
(mean coefficients over the plate's short pauses, learnt at training time: many actors
rest with the lips slightly apart between phrases) in short pauses, and toward the closed
rest pose only in silences of at least ``long_silence_s`` (end of a line, digital silence).

Bilabial closures: p, b and m are made with both lips shut, whatever the coarticulation
(the lip-closure rule of the JALI viseme model, Edwards et al. 2016, and of production
lip-sync rigs). A regression net trained with an L2 loss averages the short closures away
(on the primary plate it closed the lips on 1 of 4 held-out p/b/m), so when the phones of
the audio are known (:func:`engine.audio.phones.phone_alignment`) :meth:`A2EModel.predict`
blends the mouth toward a closed-lips pose over each p/b/m phone's frames, with a short
ease in/out so the jaw does not snap. The closure pose is verified through the face model
at training time (it must project to a mouth opening well under the closed threshold).

AV offset: ``train_av_offset_frames`` is the plate's own offset (audio late by that many
frames, see :mod:`engine.audio.sync`): training reads the audio of frame ``t + offset`` for
the face of frame ``t``, so the model learns in-sync mapping. ``av_offset_frames`` at
prediction time shifts the output the same way for a dub whose audio must lead/lag.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from engine import __version__
from engine.audio.features import AudioFeatureConfig, AudioFeatures
from engine.audio.phones import BILABIALS, Phone
from engine.errors import ConfigError, MediaError
from engine.util.atomic import atomic_path

__all__ = ["A2EConfig", "A2ENet", "A2EModel", "mouth_names_of", "apply_dub", "shift_frames", "TrainReport",
           "train_a2e", "lip_gap_jacobian", "mouth_opening_fn", "bilabial_closure_weights", "CHECKPOINT_SCHEMA"]

CHECKPOINT_SCHEMA = "portrait.a2e"
#: 2: adds the pause and closure poses (version-1 files load with both equal to the rest pose)
CHECKPOINT_VERSION = 2


def mouth_names_of(exp_names: Sequence[str]) -> tuple[str, ...]:
    """The mouth/jaw coefficients of a face model: ARKit-style names starting with
    ``jaw`` or ``mouth`` (ICT: 28 of 57; the built-in model: jawOpen, mouthSmile, mouthStretch)."""
    names = tuple(n for n in exp_names if n.lower().startswith(("jaw", "mouth")))
    if not names:
        raise ConfigError("the face model has no expression named jaw*/mouth*: give mouth_names explicitly")
    return names


@dataclass
class A2EConfig:
    """Audio-to-expression model and training (nerfstudio-style config next to its code)."""

    features: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    mouth_names: tuple[str, ...] | None = None   # None: mouth_names_of(face model exp_names)
    use_visemes: bool = False
    hidden: int = 64
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4)
    dropout: float = 0.2
    # training
    steps: int = 1200
    batch: int = 8
    window: int = 40              # video frames per training window
    lr: float = 2e-3
    weight_decay: float = 1e-4
    velocity_weight: float = 1.0
    gap_weight: float = 2.0       # weight of the lip-gap loss when a lip-gap Jacobian is given
    holdout_frac: float = 0.1     # the last 10 % of frames are never trained on
    vtlp_range: tuple[float, float] = (0.85, 1.15)
    tilt_std: float = 0.3         # random spectral tilt, normalised units across the mel range
    noise_std: float = 0.1
    silence_prob: float = 0.3     # chance a training window gets a silence span
    closed_threshold: float = 0.04   # mouth opening (inner-lip gap / inter-ocular) of closed lips
    train_av_offset_frames: float = 0.0   # the plate's audio is late by this much (sync.py sign)
    seed: int = 0
    threads: int | None = 1       # torch CPU threads while training (None: torch default)
    # inference
    av_offset_frames: float = 0.0     # output mouth of frame t from audio at t + offset
    smoothing_sigma: float = 0.8      # Gaussian temporal smoothing of the output, frames (0: off)
    silence_gate: bool = True
    min_silence_s: float = 0.15       # pauses at least this long are gated (shorter gaps keep their motion)
    # Only silences at least this long go to the closed rest pose; shorter gated pauses go to
    # the actor's own pause pose. This actor rests with the lips slightly apart between
    # phrases: gating every pause shut lowered the held-out mouth correlation from 0.607
    # (ungated) to 0.514, while a dub's long pauses and digital silence must still close.
    long_silence_s: float = 0.6
    learn_pause_pose: bool = True     # False: every gated pause goes to the closed rest pose
    min_pause_frames: int = 8         # fewer plate pause frames than this: pause pose = rest pose
    # Bilabial closures (JALI's lip-closure rule): with phones given, p/b/m frames are blended
    # toward the closed-lips pose. The net alone averages short closures away.
    close_bilabials: bool = True
    bilabial_weight: float = 1.0      # blend weight on the phone's frames (1: the closure pose itself)
    bilabial_ease_frames: int = 1     # linear ease in/out over this many frames each side (no snapping jaw)
    # Training: the closure pose must project (through the face model, when given) to at most
    # this mouth opening: half the closed threshold, leaving room for the head pose and the
    # upper face of the frames it is applied on.
    closure_max_open: float = 0.02

    def validate(self) -> None:
        if self.window < 8 or self.steps < 1 or self.batch < 1:
            raise ConfigError("a2e: window >= 8, steps >= 1, batch >= 1")
        if self.min_silence_s <= 0 or self.long_silence_s < self.min_silence_s:
            raise ConfigError("a2e: need 0 < min_silence_s <= long_silence_s")
        if not 0.0 <= self.bilabial_weight <= 1.0 or self.bilabial_ease_frames < 0:
            raise ConfigError("a2e: bilabial_weight must be in [0, 1] and bilabial_ease_frames >= 0")
        if not 0.0 < self.holdout_frac < 0.5:
            raise ConfigError(f"a2e: holdout_frac must be in (0, 0.5), got {self.holdout_frac}")
        if self.kernel % 2 != 1:
            raise ConfigError("a2e: kernel must be odd")
        self.features.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "A2EConfig":
        d = dict(d)
        feats = AudioFeatureConfig(**d.pop("features", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(features=feats, **kw)


# ---------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------
class A2ENet(nn.Module):
    def __init__(self, n_mels: int, window_len: int, n_extra: int, k_out: int, cfg: A2EConfig):
        super().__init__()
        h = cfg.hidden
        # strided from the first layer: 10 ms mel frames carry more time detail than a
        # 40 ms video frame needs, and the encoder dominates the training cost
        self.enc = nn.Sequential(
            nn.Conv1d(n_mels, h, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(h, h, 3, stride=2, padding=1), nn.GELU())
        t_out = window_len
        for _ in range(2):
            t_out = (t_out - 1) // 2 + 1
        self.enc_fc = nn.Linear(h * t_out, h)
        self.inp = nn.Conv1d(h + n_extra, h, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(h, h, cfg.kernel, dilation=d, padding=d * (cfg.kernel - 1) // 2), nn.GELU(),
                          nn.Dropout(cfg.dropout), nn.Conv1d(h, h, 1))
            for d in cfg.dilations)
        self.head = nn.Conv1d(h, k_out, 1)

    def forward(self, mel: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, N, T, M), extra (B, N, E) -> (B, N, K) standardised coefficients."""
        b, n, t, m = mel.shape
        z = self.enc(mel.reshape(b * n, t, m).transpose(1, 2))         # (BN, h, t')
        z = self.enc_fc(z.flatten(1)).reshape(b, n, -1)                 # (B, N, h)
        if extra is not None:
            z = torch.cat([z, extra], dim=-1)
        x = self.inp(z.transpose(1, 2))                                 # (B, h, N)
        for blk in self.blocks:
            x = x + blk(x)
        return self.head(x).transpose(1, 2)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def shift_frames(x: np.ndarray, d: float) -> np.ndarray:
    """``y[t] = x[t + d]`` along axis 0 (linear interpolation for fractional ``d``; the edges
    are held)."""
    if d == 0:
        return x
    n = len(x)
    pos = np.clip(np.arange(n) + float(d), 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x[lo] * (1 - w) + x[hi] * w).astype(x.dtype)


def _gauss_smooth(y: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(y) < 2:
        return y
    from scipy.ndimage import gaussian_filter1d
    return gaussian_filter1d(y, sigma, axis=0, mode="nearest")


def _pause_masks(speech: np.ndarray, fps: float, min_silence_s: float,
                 long_silence_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(short, long) bool masks of the frames inside pauses of at least ``min_silence_s``:
    ``long`` for pauses of at least ``long_silence_s``, ``short`` for the others. The
    first/last frame next to speech is left out, so onsets and releases keep their motion."""
    sil = ~np.asarray(speech, bool)
    n = len(sil)
    short, long_ = np.zeros(n, bool), np.zeros(n, bool)
    min_len = max(int(round(min_silence_s * fps)), 1)
    long_len = max(int(round(long_silence_s * fps)), min_len)
    i = 0
    while i < n:
        if not sil[i]:
            i += 1
            continue
        j = i
        while j < n and sil[j]:
            j += 1
        if j - i >= min_len:
            (long_ if j - i >= long_len else short)[i + (1 if i > 0 else 0): j - (1 if j < n else 0)] = True
        i = j
    return short, long_


def _silence_weights(speech: np.ndarray, fps: float, min_silence_s: float,
                     long_silence_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft blend weights (short pauses, long silences) of :func:`_pause_masks`; each is
    Gaussian-softened (sigma 1 frame) and, the masks being disjoint, they sum to <= 1."""
    short, long_ = _pause_masks(speech, fps, min_silence_s, long_silence_s)
    ws = np.clip(_gauss_smooth(short.astype(np.float64), 1.0), 0.0, 1.0)
    wl = np.clip(_gauss_smooth(long_.astype(np.float64), 1.0), 0.0, 1.0)
    return ws, wl


def bilabial_closure_weights(phones: Sequence[Phone], n_frames: int, fps: float, *, offset_frames: float = 0.0,
                             t0_s: float = 0.0, ease_frames: int = 1) -> tuple[np.ndarray, int]:
    """(n_frames,) weight toward the closed-lips pose for the p/b/m phones, and how many
    phones landed on at least one frame.

    Phone times are seconds from the phones' time origin; video frame ``k`` covers
    ``[t0_s + k/fps, t0_s + (k+1)/fps)`` of the audio read by the features, and the output
    frame ``t`` shows the audio frame ``t + offset_frames`` (the shift ``predict`` applies to
    the mel features). Weight 1 on the frames whose centre lies inside the phone (a phone
    shorter than a frame: the frame holding its middle), easing linearly to 0 over
    ``ease_frames`` frames each side (1 frame: 0.5 on each neighbour).
    """
    w = np.zeros(int(n_frames), np.float64)
    n_done = 0
    fps = float(fps)
    for ph in phones:
        if ph.label not in BILABIALS:
            continue
        a = (ph.start_s - t0_s) * fps - offset_frames
        z = (ph.end_s - t0_s) * fps - offset_frames
        # frame k's centre k + 0.5 in [a, z)  <=>  ceil(a - 0.5) <= k <= ceil(z - 0.5) - 1
        f0 = int(math.ceil(a - 0.5 - 1e-9))
        f1 = int(math.ceil(z - 0.5 - 1e-9)) - 1
        if f1 < f0:
            f0 = f1 = int(math.floor(0.5 * (a + z)))
        if f1 < 0 or f0 >= n_frames:
            continue
        n_done += 1
        w[max(f0, 0): min(f1, n_frames - 1) + 1] = 1.0
        for e in range(1, int(ease_frames) + 1):
            v = 1.0 - e / (ease_frames + 1.0)
            for k in (f0 - e, f1 + e):
                if 0 <= k < n_frames:
                    w[k] = max(w[k], v)
    return w, n_done


def _vtlp(mel: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Warp the mel axis of (B, N, T, M) by per-item factors ``alpha`` (B,): out[m] = in[m*alpha]."""
    b, n, t, m = mel.shape
    src = torch.arange(m, dtype=mel.dtype)[None, :] * alpha[:, None]          # (B, M)
    src = src.clamp(0, m - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=m - 1)
    w = (src - lo.to(mel.dtype))[:, None, None, :]
    idx_lo = lo[:, None, None, :].expand(b, n, t, m)
    idx_hi = hi[:, None, None, :].expand(b, n, t, m)
    return mel.gather(3, idx_lo) * (1 - w) + mel.gather(3, idx_hi) * w


# ---------------------------------------------------------------------------------------
# the trained model
# ---------------------------------------------------------------------------------------
@dataclass
class TrainReport:
    steps: int
    seconds: float
    train_loss: float
    holdout_rmse: float            # standardised units, mean over coefficients
    holdout_corr: dict[str, float]  # per coefficient Pearson r on the held-out frames
    split_index: int               # first held-out frame index (0-based)


class A2EModel:
    """A trained audio-to-expression model with its normalisation, poses and provenance.

    Poses (K_mouth coefficients each): ``rest``, the closed-mouth rest pose (long silences);
    ``pause``, the actor's own pose in short pauses (default: ``rest``); ``closure``, the
    closed-lips pose that p/b/m are blended to (default: ``rest``)."""

    def __init__(self, net: A2ENet, config: A2EConfig, mouth_names: tuple[str, ...], exp_names: tuple[str, ...],
                 mean: np.ndarray, std: np.ndarray, rest: np.ndarray, fps: float, provenance: dict[str, Any],
                 *, pause: np.ndarray | None = None, closure: np.ndarray | None = None):
        self.net = net.eval()
        self.config = config
        self.mouth_names = tuple(mouth_names)
        self.exp_names = tuple(exp_names)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.rest = np.asarray(rest, np.float32)
        self.pause = self.rest.copy() if pause is None else np.asarray(pause, np.float32)
        self.closure = self.rest.copy() if closure is None else np.asarray(closure, np.float32)
        for name in ("rest", "pause", "closure"):
            if getattr(self, name).shape != (len(self.mouth_names),):
                raise ConfigError(f"a2e: {name} pose has shape {getattr(self, name).shape} for "
                                  f"{len(self.mouth_names)} mouth coefficients")
        self.fps = float(fps)
        self.provenance = dict(provenance)

    # -- inference ------------------------------------------------------------------------
    def predict(self, features: AudioFeatures, *, av_offset_frames: float | None = None,
                smoothing_sigma: float | None = None, silence_gate: bool | None = None,
                phones: Sequence[Phone] | None = None, phones_t0_s: float = 0.0,
                close_bilabials: bool | None = None) -> np.ndarray:
        """(N, K_mouth) coefficients (``self.mouth_names`` order) for the frames of ``features``.

        ``phones`` (:func:`engine.audio.phones.phone_alignment` of the same audio; times in
        seconds from its sample 0, and ``phones_t0_s`` is where feature frame 0 starts, i.e.
        ``start_sample / sr`` of :func:`engine.audio.features.audio_features`) switch on the
        bilabial closure rule (``config.close_bilabials``; ``close_bilabials`` overrides it):
        p/b/m frames, shifted by the same AV offset as the audio, are blended to
        ``self.closure``. Without phones the output is the network's (gated, smoothed) own."""
        cfg = self.config
        off = cfg.av_offset_frames if av_offset_frames is None else float(av_offset_frames)
        sigma = cfg.smoothing_sigma if smoothing_sigma is None else float(smoothing_sigma)
        gate = cfg.silence_gate if silence_gate is None else bool(silence_gate)
        close = cfg.close_bilabials if close_bilabials is None else bool(close_bilabials)
        self._check_features(features)
        mel = shift_frames(features.mel, off)
        extra = None
        if cfg.use_visemes:
            extra = torch.from_numpy(shift_frames(features.visemes, off))[None]
        with torch.no_grad():
            z = self.net(torch.from_numpy(np.ascontiguousarray(mel))[None], extra)[0].numpy()
        y = z * self.std + self.mean
        y = _gauss_smooth(y, sigma)
        if gate:
            speech = shift_frames(features.speech.astype(np.float32), off) > 0.5
            ws, wl = _silence_weights(speech, self.fps, cfg.min_silence_s, cfg.long_silence_s)
            ws, wl = ws[:, None], wl[:, None]
            y = y * (1 - ws - wl) + self.pause[None] * ws + self.rest[None] * wl
        if close and phones is not None:
            # after smoothing and the gate: the closure must hold exactly on the phone's frames
            w, _ = self.closure_weights(len(features), phones, av_offset_frames=off, phones_t0_s=phones_t0_s)
            w = (cfg.bilabial_weight * w)[:, None]
            y = y * (1 - w) + self.closure[None] * w
        return y.astype(np.float32)

    def closure_weights(self, n_frames: int, phones: Sequence[Phone], *, av_offset_frames: float | None = None,
                        phones_t0_s: float = 0.0) -> tuple[np.ndarray, int]:
        """:func:`bilabial_closure_weights` with this model's fps, ease and AV offset: the
        per-frame closure weights ``predict`` uses and the number of closures enforced."""
        off = self.config.av_offset_frames if av_offset_frames is None else float(av_offset_frames)
        return bilabial_closure_weights(phones, n_frames, self.fps, offset_frames=off, t0_s=phones_t0_s,
                                        ease_frames=self.config.bilabial_ease_frames)

    def _check_features(self, f: AudioFeatures) -> None:
        fc = self.config.features
        if f.mel.ndim != 3 or f.mel.shape[1:] != (fc.window_len, fc.n_mels):
            raise ConfigError(f"a2e: features {f.mel.shape[1:]} do not match the model "
                              f"({fc.window_len}, {fc.n_mels}): compute them with the model's config.features")
        if self.config.use_visemes and f.visemes is None:
            raise ConfigError("a2e: this model uses viseme features: compute features with phones")

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        path = Path(path)
        state = {"schema": CHECKPOINT_SCHEMA, "schema_version": CHECKPOINT_VERSION,
                 "engine_version": __version__, "config": self.config.to_dict(),
                 "mouth_names": list(self.mouth_names), "exp_names": list(self.exp_names),
                 "mean": self.mean, "std": self.std, "rest": self.rest, "pause": self.pause,
                 "closure": self.closure, "fps": self.fps,
                 "dims": self._dims, "provenance": self.provenance,
                 "state_dict": self.net.state_dict()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(state, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "A2EModel":
        path = Path(path)
        try:
            st = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError, ImportError,
                pickle.UnpicklingError) as exc:   # what torch.load raises on a file that is not a checkpoint
            raise MediaError(f"cannot read a2e checkpoint {path}: {exc}") from None
        if not isinstance(st, dict) or st.get("schema") != CHECKPOINT_SCHEMA:
            raise MediaError(f"{path} is not an audio-to-expression checkpoint")
        if int(st.get("schema_version", 0)) > CHECKPOINT_VERSION:
            raise MediaError(f"{path}: a2e checkpoint version {st['schema_version']} is newer than this engine")
        cfg = A2EConfig.from_dict(st["config"])
        n_mels, win, n_extra, k = st["dims"]
        net = A2ENet(n_mels, win, n_extra, k, cfg)
        net.load_state_dict(st["state_dict"])
        # version 1 had no pause/closure poses: both fall back to the rest pose
        m = cls(net, cfg, tuple(st["mouth_names"]), tuple(st["exp_names"]), st["mean"], st["std"], st["rest"],
                st["fps"], st["provenance"], pause=st.get("pause"), closure=st.get("closure"))
        return m

    @property
    def _dims(self) -> tuple[int, int, int, int]:
        fc = self.config.features
        n_extra = self.net.inp.in_channels - self.config.hidden
        return (fc.n_mels, fc.window_len, n_extra, len(self.mouth_names))


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def train_a2e(features: AudioFeatures, expression: np.ndarray, exp_names: Sequence[str], usable: np.ndarray,
              mouth_open: np.ndarray, fps: float, config: A2EConfig | None = None,
              provenance: dict[str, Any] | None = None, log=None,
              lip_gap_jacobian: np.ndarray | None = None,
              lip_gap_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[A2EModel, TrainReport]:
    """Train on the first ``1 - holdout_frac`` of the frames; report on the rest.

    features: of the plate's own audio, one per plate frame. expression: (N, K_exp) tracked
    coefficients; usable: (N,) frames with a fitted face; mouth_open: (N,) mouth opening
    (:func:`engine.audio.sync.mouth_opening`; best of the fitted model's projected landmarks,
    so that "closed" means closed in the face model), used to find the closed-mouth rest pose.
    lip_gap_jacobian: optional (K_mouth,) derivative of that mouth opening with respect to each
    mouth coefficient (:func:`lip_gap_jacobian`); adds a loss on the lip-gap error, which the
    coefficient loss alone under-weights (many coefficients move the lips a little; the gap
    is what the viewer and the bilabial check see).
    lip_gap_fn: optional ``(M, K_mouth) -> (M,)`` mouth opening of mouth-coefficient sets
    through the face model (:func:`mouth_opening_fn`); verifies that the closure pose really
    shuts the lips (``config.closure_max_open``), else picks a tighter one from the frames
    with the smallest model lip gap. Without it the closure pose is the rest pose, unverified.

    Besides the network the model stores three poses: rest (closed), the actor's pause pose
    (mean over the training frames inside short pauses of the plate's audio) and closure.
    """
    cfg = config or A2EConfig()
    cfg.validate()
    exp_names = tuple(exp_names)
    mouth = tuple(cfg.mouth_names) if cfg.mouth_names else mouth_names_of(exp_names)
    missing = [n for n in mouth if n not in exp_names]
    if missing:
        raise ConfigError(f"a2e: mouth coefficients {missing} are not in the face model")
    cols = [exp_names.index(n) for n in mouth]
    n = len(features)
    expression = np.asarray(expression, np.float32)
    if expression.shape[0] != n or len(usable) != n or len(mouth_open) != n:
        raise ConfigError(f"a2e: {n} feature frames but expression {expression.shape}, usable {len(usable)}, "
                          f"mouth_open {len(mouth_open)}")
    if cfg.use_visemes and features.visemes is None:
        raise ConfigError("a2e: use_visemes needs features computed with phones")
    y_all = expression[:, cols]
    ok = np.asarray(usable, bool) & np.isfinite(y_all).all(axis=1)
    split = int(round(n * (1.0 - cfg.holdout_frac)))
    if split < cfg.window + 1 or ok[:split].sum() < cfg.window:
        raise ConfigError(f"a2e: too few usable training frames ({int(ok[:split].sum())})")
    mean = y_all[:split][ok[:split]].mean(axis=0)
    std = np.maximum(y_all[:split][ok[:split]].std(axis=0), 1e-3)
    # Rest pose: the coefficient-wise median of the most firmly closed training frames (the
    # closed quarter of the frames under the threshold). A mean over all closed frames
    # mixes press/roll/lower-down variants whose average parts the lips again.
    mo_train = np.where(ok, np.asarray(mouth_open, np.float64), np.nan)[:split]
    closed = np.flatnonzero(np.isfinite(mo_train) & (mo_train <= cfg.closed_threshold))
    if closed.size < 3:
        closed = np.argsort(np.where(np.isfinite(mo_train), mo_train, np.inf))[:max(3, split // 20)]
    closed = closed[np.argsort(mo_train[closed])][:max(3, closed.size // 4)]
    rest = np.median(y_all[closed], axis=0)
    closure, pose_info = _closure_pose(rest, y_all[:split], ok[:split], lip_gap_fn, cfg.closure_max_open)
    # The actor's pause pose: mean coefficients over the training frames inside short pauses
    # (the face of frame t goes with the audio of t + train offset, as below).
    speech_face = shift_frames(features.speech.astype(np.float32), cfg.train_av_offset_frames)[:split] > 0.5
    short, _ = _pause_masks(speech_face, float(fps), cfg.min_silence_s, cfg.long_silence_s)
    in_pause = short & ok[:split]
    pose_info["pause_frames"] = int(in_pause.sum())
    if cfg.learn_pause_pose and in_pause.sum() >= cfg.min_pause_frames:
        pause = y_all[:split][in_pause].mean(axis=0)
        pose_info["pause_source"] = "mean over plate pause frames"
        mo_p = np.asarray(mouth_open, np.float64)[:split][in_pause]
        if np.isfinite(mo_p).any():
            pose_info["pause_mouth_open_measured"] = float(np.nanmean(mo_p))
    else:
        pause = rest.copy()
        pose_info["pause_source"] = "rest"
    if lip_gap_fn is not None:
        pose_info["pause_mouth_open_model"] = float(np.asarray(lip_gap_fn(pause[None]), np.float64)[0])
    y_std = np.where(ok[:, None], (y_all - mean) / std, 0.0).astype(np.float32)
    rest_std = ((rest - mean) / std).astype(np.float32)

    # The plate's own offset: the face of frame t goes with the audio of frame t + offset.
    mel_all = shift_frames(features.mel, cfg.train_av_offset_frames)
    vis_all = shift_frames(features.visemes, cfg.train_av_offset_frames) if cfg.use_visemes else None
    silence_vec = mel_all[~features.speech].mean(axis=(0, 1)) if (~features.speech).sum() else mel_all.min(axis=(0, 1))
    digital = features.mel.min(axis=(0, 1))   # the padding value of digital silence (per band)

    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    n_extra = vis_all.shape[1] if vis_all is not None else 0
    fc = cfg.features
    net = A2ENet(fc.n_mels, fc.window_len, n_extra, len(mouth), cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    mel_t = torch.from_numpy(np.ascontiguousarray(mel_all))
    y_t = torch.from_numpy(y_std)
    ok_t = torch.from_numpy(ok.astype(np.float32))
    vis_t = torch.from_numpy(vis_all) if vis_all is not None else None
    sil_t = torch.from_numpy(np.stack([silence_vec, digital]).astype(np.float32))
    rest_t = torch.from_numpy(rest_std)
    gap_t = None
    if lip_gap_jacobian is not None:
        jac = np.asarray(lip_gap_jacobian, np.float64).ravel()
        if jac.shape != (len(mouth),):
            raise ConfigError(f"a2e: lip_gap_jacobian has {jac.size} entries for {len(mouth)} mouth coefficients")
        j_std = jac * std                                   # per standardised unit
        gap_sd = float(np.std(y_std[:split][ok[:split]] @ j_std))
        if gap_sd > 1e-9:
            gap_t = torch.from_numpy((j_std / gap_sd).astype(np.float32))
    W = cfg.window
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    losses = []
    try:
        net.train()
        for step in range(cfg.steps):
            starts = torch.randint(0, split - W + 1, (cfg.batch,), generator=g)
            idx = starts[:, None] + torch.arange(W)[None]
            mel = mel_t[idx]                                   # (B, W, T, M)
            y, w = y_t[idx].clone(), ok_t[idx].clone()
            extra = vis_t[idx].clone() if vis_t is not None else None
            # voice-independence augmentation
            a = torch.empty(cfg.batch).uniform_(*cfg.vtlp_range, generator=g)
            mel = _vtlp(mel, a)
            tilt = torch.randn(cfg.batch, generator=g) * cfg.tilt_std
            mel = mel + tilt[:, None, None, None] * torch.linspace(-1, 1, fc.n_mels)
            mel = mel + torch.randn(mel.shape, generator=g) * cfg.noise_std
            # silence spans: target the closed rest pose
            for b in range(cfg.batch):
                if torch.rand(1, generator=g).item() < cfg.silence_prob:
                    ln = int(torch.randint(W // 6, W // 2, (1,), generator=g))
                    s0 = int(torch.randint(0, W - ln + 1, (1,), generator=g))
                    kind = int(torch.randint(0, 2, (1,), generator=g))
                    mel[b, s0:s0 + ln] = sil_t[kind] + torch.randn(ln, fc.window_len, fc.n_mels, generator=g) * 0.1
                    y[b, s0:s0 + ln] = rest_t
                    w[b, s0:s0 + ln] = 1.0
                    if extra is not None:
                        extra[b, s0:s0 + ln] = 0.0
                        extra[b, s0:s0 + ln, 0] = 1.0
            pred = net(mel, extra)
            wk = w[..., None]
            err = ((pred - y) ** 2 * wk).sum() / (wk.sum() * y.shape[-1]).clamp(min=1)
            vw = wk[:, 1:] * wk[:, :-1]
            dv = (pred[:, 1:] - pred[:, :-1]) - (y[:, 1:] - y[:, :-1])
            verr = (dv ** 2 * vw).sum() / (vw.sum() * y.shape[-1]).clamp(min=1)
            loss = err + cfg.velocity_weight * verr
            if gap_t is not None:
                gerr = (((pred - y) @ gap_t) ** 2 * w).sum() / w.sum().clamp(min=1)
                loss = loss + cfg.gap_weight * gerr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log is not None and (step % 250 == 0 or step == cfg.steps - 1):
                log(f"a2e step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.4f}")
    finally:
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - t0
    net.eval()
    prov = {"trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "engine_version": __version__, "torch": torch.__version__, "n_frames": n, "split_index": split,
            "train_seconds": round(seconds, 1), "lip_gap_loss": gap_t is not None, "poses": pose_info,
            **(provenance or {})}
    model = A2EModel(net, cfg, mouth, exp_names, mean, std, rest, fps, prov, pause=pause, closure=closure)
    # held-out evaluation, raw network output (no gate/smoothing) in standardised units
    pred = model.predict(features, av_offset_frames=cfg.train_av_offset_frames, smoothing_sigma=0.0,
                         silence_gate=False)
    ph, th, okh = (pred[split:] - mean) / std, y_std[split:], ok[split:]
    rmse = float(np.sqrt(np.mean((ph[okh] - th[okh]) ** 2))) if okh.any() else math.nan
    corr = {}
    for j, name in enumerate(mouth):
        a, b = ph[okh, j], th[okh, j]
        corr[name] = float(np.corrcoef(a, b)[0, 1]) if a.std() > 1e-6 and b.std() > 1e-6 else math.nan
    model.provenance["holdout_rmse_std_units"] = rmse
    return model, TrainReport(cfg.steps, seconds, float(np.mean(losses[-50:])), rmse, corr, split)


def _closure_pose(rest: np.ndarray, y_train: np.ndarray, ok_train: np.ndarray,
                  lip_gap_fn: Callable[[np.ndarray], np.ndarray] | None,
                  max_open: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The closed-lips pose bilabials are blended to, and how it was chosen.

    The rest pose when it projects through the face model to at most ``max_open``; else the
    median of the training frames with the smallest model lip gap (the lowest 10, 5, 2, 1 %
    in turn, the first that closes), else the single most closed training frame. The rest
    pose comes from the *measured* mouth opening (MediaPipe in the drive stage), which
    need not agree with the fitted model's lips: the model is what gets rendered."""
    info: dict[str, Any] = {"closure_source": "rest", "closure_verified": False}
    if lip_gap_fn is None:
        return rest, info

    def gap(c: np.ndarray) -> np.ndarray:
        return np.asarray(lip_gap_fn(np.atleast_2d(c)), np.float64).ravel()

    g_rest = float(gap(rest)[0])
    info["rest_mouth_open_model"] = g_rest
    if np.isfinite(g_rest) and g_rest <= max_open:
        info.update(closure_verified=True, closure_mouth_open_model=g_rest)
        return rest, info
    cand = y_train[np.asarray(ok_train, bool)]
    g = gap(cand) if len(cand) else np.empty(0)
    fin = np.isfinite(g)
    if not fin.any():                      # the face model has no lip landmarks: cannot verify
        return rest, info
    cand, g = cand[fin], g[fin]
    order = np.argsort(g)
    best, best_g, src = rest, (g_rest if np.isfinite(g_rest) else np.inf), "rest"
    for q in (0.10, 0.05, 0.02, 0.01):
        k = min(len(g), max(3, int(round(q * len(g)))))
        c = np.median(cand[order[:k]], axis=0)
        gc = float(gap(c)[0])
        if gc < best_g:
            best, best_g, src = c, gc, f"median of the {q:.0%} training frames with the smallest model lip gap"
        if gc <= max_open:
            break
    if best_g > max_open and g[order[0]] < best_g:
        best, best_g, src = cand[order[0]], float(g[order[0]]), "the training frame with the smallest model lip gap"
    info.update(closure_source=src, closure_verified=bool(best_g <= max_open), closure_mouth_open_model=best_g)
    return np.asarray(best, np.float32), info


def mouth_opening_fn(face_model, params, exp_names: Sequence[str], mouth_names: Sequence[str],
                     index: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``f(mouth_coeffs (M, K_mouth)) -> (M,)`` mouth opening
    (:func:`engine.audio.sync.mouth_opening` of the face model's projected landmarks) at one
    plate frame's head pose (default: the middle usable frame) with the plate's mean
    expression on the other coefficients: how open a mouth pose renders on this actor."""
    from engine.audio.sync import mouth_opening
    from engine.face.fit import project_landmarks
    exp_names = tuple(exp_names)
    usable = np.flatnonzero(np.asarray(params.usable, bool))
    if usable.size == 0:
        raise ConfigError("a2e: no usable frame to evaluate the lip gap at")
    i = int(usable[len(usable) // 2]) if index is None else int(index)
    base = np.nanmean(np.asarray(params.expression, np.float64)[usable], axis=0)
    cols = [exp_names.index(m) for m in mouth_names]
    rot, trans = params.rotation[i:i + 1], params.translation[i:i + 1]

    def f(mouth_coeffs: np.ndarray) -> np.ndarray:
        y = np.atleast_2d(np.asarray(mouth_coeffs, np.float64))
        e = np.repeat(base[None], len(y), axis=0)
        e[:, cols] = y
        lm = project_landmarks(face_model, params.identity, e.astype(np.float32), np.repeat(rot, len(y), 0),
                               np.repeat(trans, len(y), 0), params.focal, params.principal_point)
        return mouth_opening(lm)

    return f


def lip_gap_jacobian(face_model, params, exp_names: Sequence[str], mouth_names: Sequence[str],
                     index: int | None = None, delta: float = 0.05) -> np.ndarray:
    """(K_mouth,) d(mouth opening)/d(coefficient) of the face model, by central differences
    at one frame's pose with the mean expression of ``params`` (FrameParams of the plate)."""
    exp_names = tuple(exp_names)
    usable = np.flatnonzero(np.asarray(params.usable, bool))
    if usable.size == 0:
        raise ConfigError("a2e: no usable frame to linearise the lip gap at")
    f = mouth_opening_fn(face_model, params, exp_names, mouth_names, index)
    base = np.nanmean(np.asarray(params.expression, np.float64)[usable], axis=0)
    m0 = base[[exp_names.index(m) for m in mouth_names]]
    k = len(mouth_names)
    rows = np.repeat(m0[None], 2 * k, axis=0)
    rows[np.arange(k) * 2, np.arange(k)] += delta
    rows[np.arange(k) * 2 + 1, np.arange(k)] -= delta
    mo = f(rows).reshape(k, 2)
    return ((mo[:, 0] - mo[:, 1]) / (2 * delta)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# dubbing
# ---------------------------------------------------------------------------------------
def apply_dub(params, mouth_coeffs: np.ndarray, exp_names: Sequence[str], mouth_names: Sequence[str]):
    """``params`` (:class:`engine.face.params.FrameParams`) with only the mouth/jaw
    coefficients replaced by ``mouth_coeffs`` (N, len(mouth_names)); upper face, blinks,
    gaze, head pose, identity and crops are untouched (``region: mouth`` dubbing)."""
    exp_names, mouth_names = tuple(exp_names), tuple(mouth_names)
    y = np.asarray(mouth_coeffs, np.float32)
    if y.ndim != 2 or y.shape != (len(params), len(mouth_names)):
        raise ConfigError(f"dub: mouth coefficients {y.shape} do not match {len(params)} frames x "
                          f"{len(mouth_names)} mouth names")
    if params.expression.shape[1] != len(exp_names):
        raise ConfigError(f"dub: {len(exp_names)} expression names for {params.expression.shape[1]} coefficients")
    missing = [m for m in mouth_names if m not in exp_names]
    if missing:
        raise ConfigError(f"dub: mouth coefficients {missing} are not in the face model")
    cols = [exp_names.index(m) for m in mouth_names]
    exp = np.array(params.expression, np.float32, copy=True)
    exp[:, cols] = y
    return params.with_(expression=exp)
