"""Review movies: H.264 MP4 with the shot's audio muxed in sync, written atomically.

Frames are piped to ffmpeg as they come (a render never holds the whole shot in memory).
The movie is built in two steps:

1. while frames arrive: RGB -> Rec.709 limited-range YUV 4:2:0, libx264, into a temporary
   video-only file (odd sizes padded to even with black: 4:2:0 needs even dimensions);
2. on close, when there is audio: the audio is cut in numpy to *exactly* the movie's
   duration (sample positions from frame numbers with Fraction arithmetic, see
   :func:`engine.io.audio.samples_for_frames`), delayed or advanced by
   ``audio_offset_frames``, encoded to AAC and muxed with the video stream copied.
   MP4's edit list carries the AAC encoder delay, so decoders start the audio at exactly
   sample 0 of what we wrote. ``+faststart`` puts the index first (plays while loading).

Only a complete movie appears under the final name; ffmpeg failures raise MediaError with
ffmpeg's own last error line.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg as ffmpeg_python
import numpy as np

from engine.errors import MediaError, OutputExistsError
from engine.io.audio import extract_audio, samples_for_frames
from engine.io.ffmpeg import StderrTail, ffmpeg_cmd
from engine.util.atomic import atomic_path

__all__ = ["ReviewMovieWriter"]

_AUDIO_RATE = 48000  # the rate of picture-post audio


class ReviewMovieWriter:
    """``with ReviewMovieWriter(path, fps, (w, h), audio=...) as mov: mov.write(rgb_uint8)``.

    ``audio``: a media file (its first audio stream; aligned to its first video frame when
    it is a video) or ``(samples, sample_rate)`` with samples (n,) or (n, channels).
    ``audio_offset_frames``: the movie frame at which audio sample 0 plays (negative skips
    the start of the audio). The audio always ends with the picture.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction, size: tuple[int, int], *,
                 audio: str | os.PathLike | tuple[np.ndarray, int] | None = None,
                 audio_offset_frames: int = 0, crf: int = 18, preset: str = "medium",
                 overwrite: bool = False, metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.width, self.height = int(size[0]), int(size[1])
        if self.width < 2 or self.height < 2:
            raise ValueError(f"movie size must be at least 2x2, got {size}")
        self.audio = audio
        self.audio_offset_frames = int(audio_offset_frames)
        self.crf, self.preset = int(crf), preset
        self.overwrite = overwrite
        self.metadata = dict(metadata or {})
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._tail: StderrTail | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._video_tmp: Path | None = None
        self._closed = False

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> "ReviewMovieWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        if self._proc is not None:
            return
        if self.path.exists() and not self.overwrite:
            raise OutputExistsError(f"refusing to overwrite existing movie {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = tempfile.TemporaryDirectory(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._video_tmp = Path(self._tmpdir.name) / "video.mp4"
        pad_w, pad_h = self.width + self.width % 2, self.height + self.height % 2
        stream = ffmpeg_python.input("pipe:", format="rawvideo", pix_fmt="rgb24",
                                     s=f"{self.width}x{self.height}",
                                     framerate=f"{self.fps.numerator}/{self.fps.denominator}")
        if (pad_w, pad_h) != (self.width, self.height):
            stream = stream.filter("pad", pad_w, pad_h, 0, 0, color="black")
        # Display-referred frames -> Rec.709 matrix, limited range, tagged, so players and
        # our own decoder (which honours the tags) agree on the colours.
        stream = (stream.filter("scale", out_color_matrix="bt709", out_range="tv")
                  .filter("format", "yuv420p")
                  .filter("setparams", color_primaries="bt709", color_trc="bt709",
                          colorspace="bt709", range="tv"))
        out = stream.output(str(self._video_tmp), vcodec="libx264", crf=self.crf, preset=self.preset,
                            pix_fmt="yuv420p", color_primaries="bt709", color_trc="bt709",
                            colorspace="bt709", color_range="tv",
                            **{"fps_mode": "passthrough", "tag:v": "avc1"})
        args = out.overwrite_output().compile(cmd=ffmpeg_cmd(loglevel="error"))
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
        except OSError as exc:
            self._cleanup()
            raise MediaError(f"cannot run ffmpeg: {exc.strerror}") from exc
        self._tail = StderrTail(self._proc.stderr)

    # -- frames ---------------------------------------------------------------------------

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 frame (height x width x 3)."""
        if self._closed:
            raise MediaError(f"{self.path}: write() after close()")
        if self._proc is None:
            self.open()
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"review movie frame must be uint8 {self.height}x{self.width}x3, "
                             f"got {frame.dtype} {frame.shape}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except (BrokenPipeError, OSError):
            self._proc.wait()
            self._tail.join(5)
            msg = self._tail.last_error()
            self.abort()
            raise MediaError(f"ffmpeg failed writing {self.path}: {msg}") from None
        self.frames_written += 1

    # -- finish ---------------------------------------------------------------------------

    def close(self) -> Path:
        if self._closed:
            return self.path
        if self._proc is None:
            self.open()
        try:
            self._finish_video()
            if self.frames_written == 0:
                raise MediaError(f"{self.path}: no frames were written")
            with atomic_path(self.path, overwrite=self.overwrite) as tmp:
                self._mux(tmp)
        finally:
            self._closed = True
            self._cleanup()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove temporary files; no movie is written."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._closed = True
        self._cleanup()

    def _finish_video(self) -> None:
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        rc = self._proc.wait()
        self._tail.join(10)
        if rc != 0:
            raise MediaError(f"ffmpeg failed writing {self.path}: {self._tail.last_error()}")

    def _audio_samples(self) -> tuple[np.ndarray, int] | None:
        if self.audio is None:
            return None
        if isinstance(self.audio, tuple):
            samples, sr = self.audio
            samples = np.asarray(samples, dtype=np.float32)
            sr = int(sr)
        else:
            samples = extract_audio(self.audio, _AUDIO_RATE, channels=2)
            sr = _AUDIO_RATE
        if samples.ndim == 1:
            samples = samples[:, None]
        # The movie's audio: sample j of the output plays at movie time j/sr; movie frame f
        # starts at samples_for_frames(f, ...). Audio sample 0 belongs at the start of
        # movie frame `audio_offset_frames`.
        total = samples_for_frames(0, self.frames_written, self.fps, 0, sr)[1]
        offset = samples_for_frames(self.audio_offset_frames, 0, self.fps, 0, sr)[0]
        out = np.zeros((total, samples.shape[1]), dtype=np.float32)
        src0 = max(0, -offset)
        dst0 = max(0, offset)
        n = max(0, min(len(samples) - src0, total - dst0))
        if n:
            out[dst0:dst0 + n] = samples[src0:src0 + n]
        return out, sr

    def _mux(self, target: Path) -> None:
        audio = self._audio_samples()
        video = ffmpeg_python.input(str(self._video_tmp))
        common: dict[str, Any] = {"movflags": "+faststart", "vcodec": "copy"}
        if audio is None:
            out = ffmpeg_python.output(video["v:0"], str(target), format="mp4", **common)
            self._run(out, None)
            return
        samples, sr = audio
        ch = samples.shape[1]
        aud = ffmpeg_python.input("pipe:", format="f32le", ar=sr, ac=ch)
        out = ffmpeg_python.output(video["v:0"], aud["a:0"], str(target), format="mp4",
                                   acodec="aac", audio_bitrate=f"{96 * ch}k", ar=sr, **common)
        self._run(out, samples)

    def _run(self, out, samples: np.ndarray | None) -> None:
        args = out.compile(cmd=ffmpeg_cmd(loglevel="error", *("-y",)))
        # ffmpeg-python cannot repeat an option: the -metadata pairs go in by hand, just
        # before the output name (the last argument).
        for k, v in self.metadata.items():
            args[-1:-1] = ["-metadata", f"{k}={v}"]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if samples is not None else subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        tail = StderrTail(proc.stderr)
        if samples is not None:
            try:
                data = np.ascontiguousarray(samples, dtype="<f4")
                view = memoryview(data).cast("B")
                step = 1 << 20
                for i in range(0, len(view), step):
                    proc.stdin.write(view[i:i + step])
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        rc = proc.wait()
        tail.join(10)
        if rc != 0:
            raise MediaError(f"ffmpeg failed writing {self.path}: {tail.last_error()}")

    def _cleanup(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
