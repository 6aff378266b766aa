"""Phone segmentation of speech with pocketsphinx's US-English models (they ship in its wheel).

Two decoders, chosen by :class:`PhoneAlignConfig.method`:

* ``"words"`` (default): large-vocabulary recognition with the bundled trigram LM and CMU
  dictionary, then a second, *forced* alignment pass of the recognised word string at phone
  level (pocketsphinx 5's ``set_align_text`` + ``set_alignment`` + ``get_alignment``). Word
  context makes the phone boundaries of English speech much cleaner than free phone
  recognition; recognition errors mostly swap words with acoustically similar ones, whose
  phones (what lip-sync QC needs) are still close to what was said.
* ``"allphone"``: phone-loop decoding with the bundled phone bigram LM (``en-us-phone.lm.bin``),
  beams and language weight as CMU recommends for phoneme recognition. It does not need the
  speech to be English words, so it is the choice for a dub in another language (English
  phone models still separate closures such as p/b/m from vowels reasonably).

Times are seconds from the first sample of the array given (pocketsphinx works at 100
feature frames per second, so boundaries are quantised to 10 ms). Labels are ARPAbet
upper-case (``P``, ``B``, ``M``, ``AA``, ...) plus ``SIL`` and pocketsphinx's fillers
(``+SPN+``, ``+NSN+``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, PortraitError

__all__ = ["Phone", "PhoneAlignConfig", "phone_alignment", "pocketsphinx_version", "BILABIALS"]

#: Phones produced with both lips closed (stops p, b and the nasal m).
BILABIALS = frozenset({"P", "B", "M"})
#: pocketsphinx's models are 16 kHz; other rates are resampled (exact rational polyphase).
MODEL_RATE = 16000


@dataclass(frozen=True)
class Phone:
    label: str       # ARPAbet, upper case, no stress digits; "SIL" for silence
    start_s: float   # from the first sample of the analysed array
    end_s: float     # exclusive

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class PhoneAlignConfig:
    """How phones are found (nerfstudio-style config next to its code)."""

    method: str = "words"            # "words" (recognise + forced phone alignment) or "allphone"
    fallback_to_allphone: bool = True  # "words" found no speech / alignment failed -> allphone
    allphone_lw: float = 2.0         # language weight of the phone bigram (CMU: 2-10 for phones)
    beam: float = 1e-20              # allphone beams (CMU's recommendation for phone decoding)
    pbeam: float = 1e-20

    def validate(self) -> None:
        if self.method not in ("words", "allphone"):
            raise ConfigError(f"phone alignment method must be 'words' or 'allphone', not {self.method!r}")


def _pocketsphinx():
    try:
        import pocketsphinx
    except ImportError as exc:  # a packaging problem the user can fix
        raise PortraitError("phone alignment needs the 'pocketsphinx' package (pip install pocketsphinx)") from exc
    return pocketsphinx


def pocketsphinx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pocketsphinx")
    except PackageNotFoundError:
        return "missing"


def _model_dir() -> Path:
    ps = _pocketsphinx()
    root = Path(ps.get_model_path()) / "en-us"
    if not (root / "en-us").is_dir():
        raise PortraitError(f"pocketsphinx's English model is missing under {root}")
    return root


def _to_pcm16(samples: np.ndarray, sr: int) -> bytes:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise ValueError(f"samples must be (n,) or (n, channels), got {np.shape(samples)}")
    if sr != MODEL_RATE:
        from scipy.signal import resample_poly
        g = math.gcd(int(sr), MODEL_RATE)
        x = resample_poly(x, MODEL_RATE // g, int(sr) // g)
    return np.clip(np.rint(x * 32767.0), -32768, 32767).astype("<i2").tobytes()


def _decode(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def _clean(label: str) -> str:
    return label.split("(")[0].strip().upper().rstrip("0123456789")


def _allphone(pcm: bytes, cfg: PhoneAlignConfig, frate: int) -> list[Phone]:
    ps = _pocketsphinx()
    root = _model_dir()
    dec = ps.Decoder(ps.Config(hmm=str(root / "en-us"), allphone=str(root / "en-us-phone.lm.bin"),
                               lm=None, dict=None, lw=cfg.allphone_lw, beam=cfg.beam, pbeam=cfg.pbeam,
                               samprate=MODEL_RATE, loglevel="FATAL"))
    _decode(dec, pcm)
    # seg() end frames are inclusive.
    return [Phone(_clean(s.word), s.start_frame / frate, (s.end_frame + 1) / frate) for s in dec.seg()]


def _words_then_align(pcm: bytes, frate: int) -> list[Phone]:
    ps = _pocketsphinx()
    root = _model_dir()
    dec = ps.Decoder(ps.Config(hmm=str(root / "en-us"), lm=str(root / "en-us.lm.bin"),
                               dict=str(root / "cmudict-en-us.dict"), samprate=MODEL_RATE, loglevel="FATAL"))
    _decode(dec, pcm)
    words = [_clean(s.word).lower() for s in dec.seg()]
    # Fillers (<s>, <sil>, [NOISE], +SPN+) are not dictionary words; the aligner inserts
    # optional silences between words by itself.
    words = [w for w in words if w and w[0] not in "<[+"]
    if not words:
        return []
    dec.set_align_text(" ".join(words))
    _decode(dec, pcm)
    dec.set_alignment()
    _decode(dec, pcm)
    al = dec.get_alignment()
    if al is None:
        raise RuntimeError("no alignment")
    return [Phone(_clean(p.name), p.start / frate, (p.start + p.duration) / frate) for p in al.phones()]


def phone_alignment(samples: np.ndarray, sr: int, config: PhoneAlignConfig | None = None) -> list[Phone]:
    """Phones of the speech in ``samples`` (float in [-1, 1], (n,) or (n, ch)), time-ordered.

    Returns [] for an array with no recognisable speech. Raises PortraitError when
    pocketsphinx is not installed.
    """
    cfg = config or PhoneAlignConfig()
    cfg.validate()
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    pcm = _to_pcm16(samples, sr)
    if len(pcm) < 2 * MODEL_RATE // 10:      # < 0.1 s: nothing to decode
        return []
    frate = 100  # pocketsphinx's default feature frame rate (frames per second)
    if cfg.method == "allphone":
        return _allphone(pcm, cfg, frate)
    try:
        phones = _words_then_align(pcm, frate)
    except RuntimeError:
        # pocketsphinx raises RuntimeError when the forced alignment cannot reach the end
        # of the utterance; phone-loop decoding always gives a segmentation.
        if not cfg.fallback_to_allphone:
            raise
        phones = []
    if not phones and cfg.fallback_to_allphone:
        return _allphone(pcm, cfg, frate)
    return phones


def model_paths() -> dict[str, str]:
    """The model files used (for provenance)."""
    root = _model_dir()
    return {"hmm": str(root / "en-us"), "lm": str(root / "en-us.lm.bin"),
            "dict": str(root / "cmudict-en-us.dict"), "phone_lm": str(root / "en-us-phone.lm.bin"),
            "pocketsphinx": pocketsphinx_version()}
