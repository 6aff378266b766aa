"""Audio: decode to float32 arrays, map frame numbers to sample ranges exactly, write WAV.

Alignment convention: for a file with video, sample 0 of :func:`extract_audio` is at the
presentation time of the *first video frame* (the audio is padded with silence or trimmed
at the start to make it so, using the container's timestamps), so the samples of plate
frame ``f`` are ``samples_for_frames(f, 1, fps, start_frame, sr)`` with no further offset.
For an audio-only file, sample 0 is the first decoded sample (encoder priming, e.g. AAC's
1024 samples, is already removed by the decoder).

Sample positions come from frame numbers with Fraction arithmetic: at 16 kHz and 30000/1001
fps a frame is 533.866... samples; accumulating floats would drift by whole samples over a
long shot, exact rationals never do.
"""
from __future__ import annotations

import math
import os
import subprocess
import wave
from fractions import Fraction
from pathlib import Path

import ffmpeg as ffmpeg_python
import numpy as np

from engine.errors import MediaError
from engine.io.ffmpeg import MediaInfo, StderrTail, ffmpeg_cmd, probe
from engine.util.atomic import atomic_path

__all__ = ["extract_audio", "samples_for_frames", "frame_for_sample", "write_wav", "read_wav_info"]


def samples_for_frames(first_frame: int, n_frames: int, fps: Fraction, start_frame: int,
                       sample_rate: int) -> tuple[int, int]:
    """Half-open sample range ``[a, b)`` covering frames ``first_frame .. first_frame+n_frames-1``.

    Frame ``k = frame - start_frame`` spans time ``[k/fps, (k+1)/fps)``; a sample belongs to
    the frame its instant ``s/sr`` falls in, so ``a = ceil(k * sr / fps)``. Consecutive
    ranges tile the timeline with no gap and no overlap. Frames before ``start_frame`` give
    negative positions (pre-roll), which callers may pad.
    """
    fps = Fraction(fps)
    if fps <= 0 or sample_rate <= 0:
        raise ValueError(f"fps and sample_rate must be positive ({fps}, {sample_rate})")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    per_frame = Fraction(sample_rate) / fps
    k = first_frame - start_frame
    return math.ceil(k * per_frame), math.ceil((k + n_frames) * per_frame)


def frame_for_sample(sample: int, fps: Fraction, start_frame: int, sample_rate: int) -> int:
    """Plate frame number whose time span contains sample ``sample`` (inverse of the above)."""
    return start_frame + math.floor(Fraction(sample) * Fraction(fps) / sample_rate)


def extract_audio(path: str | os.PathLike, sample_rate: int = 16000, *, channels: int = 1,
                  info: MediaInfo | None = None) -> np.ndarray:
    """Decode the first audio stream of a video or audio file (wav, mp3, m4a, aac, ...).

    Returns float32 samples in [-1, 1] at ``sample_rate``: shape (n,) for ``channels=1``
    (down-mixed), else (n, channels). Raises MediaError when there is no audio stream.
    """
    path = Path(path)
    info = info if info is not None else probe(path)
    if not info.has_audio:
        raise MediaError(f"{path} has no audio stream"
                         + (" (the dialogue may be in a separate .wav)" if info.has_video else ""))
    if channels < 1:
        raise ValueError("channels must be >= 1")
    # Channel mixing happens inside this aresample so that rematrix_maxval applies: 1.0
    # scales the down-mix matrix to a plain average (ffmpeg's default L*0.707 + R*0.707
    # exceeds full scale on correlated stereo).
    # A mono source is decoded as mono and duplicated below (ffmpeg's up-mix puts it at -3 dB).
    decode_ch = 1 if info.channels == 1 else channels
    layout = {1: "mono", 2: "stereo"}.get(decode_ch, f"{decode_ch}c")
    resample: dict = {"osr": sample_rate, "async": 1, "ochl": layout, "rematrix_maxval": 1.0}
    if info.has_video and info.video_start is not None:
        # Keep container timestamps (-copyts) and let aresample pad/trim the start so that
        # output sample 0 sits exactly at the first video frame's presentation time.
        resample["first_pts"] = round(info.video_start * sample_rate)
    src = ffmpeg_python.input(str(path))["a:0"].filter("aresample", **resample)
    out = src.output("pipe:", format="f32le", acodec="pcm_f32le", ac=decode_ch, ar=sample_rate,
                     copyts=None, vn=None, sn=None)
    args = out.compile(cmd=ffmpeg_cmd(loglevel="error"))
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise MediaError(f"cannot run ffmpeg: {exc.strerror}") from exc
    tail = StderrTail(proc.stderr)
    data = proc.stdout.read()
    proc.wait()
    tail.join()
    if proc.returncode != 0:
        raise MediaError(f"cannot decode audio of {path}: {tail.last_error()}")
    samples = np.frombuffer(data, dtype="<f4")
    if channels == 1:
        return samples.copy()   # writable, owns its memory (frombuffer over bytes is read-only)
    samples = samples[: len(samples) // decode_ch * decode_ch].reshape(-1, decode_ch)
    if decode_ch < channels:
        return np.repeat(samples, channels, axis=1)
    return samples.copy()


def write_wav(path: str | os.PathLike, samples: np.ndarray, sr: int, *, overwrite: bool = True) -> Path:
    """Write 16-bit PCM WAV atomically. ``samples``: float in [-1, 1] (clipped) or int16,
    shape (n,) or (n, channels)."""
    path = Path(path)
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"write_wav: samples must be (n,) or (n, channels), got {np.shape(samples)}")
    if x.dtype == np.int16:
        pcm = x
    elif np.issubdtype(x.dtype, np.floating):
        # Round to nearest with symmetric scaling; clip so +1.0 does not wrap to -32768.
        pcm = np.clip(np.rint(x * 32767.0), -32768, 32767).astype(np.int16)
    else:
        raise ValueError(f"write_wav: samples must be float or int16, got {x.dtype}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(pcm.shape[1])
            w.setsampwidth(2)
            w.setframerate(int(sr))
            w.writeframes(np.ascontiguousarray(pcm.astype("<i2", copy=False)).tobytes())
    return path


def read_wav_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample_rate, channels, n_samples) of a PCM WAV, read from its header."""
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getnframes()
