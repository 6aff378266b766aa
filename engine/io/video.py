"""Frame-exact, streaming video decoding through an ffmpeg pipe.

Frame index ``i`` is the i-th frame the decoder outputs (presentation order, no frames
dropped or duplicated: ``-fps_mode passthrough``). :func:`engine.io.ffmpeg.probe` lists the
presentation timestamp (pts) of every frame, so frame ``i`` is known to be the frame with
timestamp ``frame_pts[i]``.

Seeking (``iter_frames(start_index=i)``) is *fast and exact*:

1. ``-ss`` before ``-i`` makes ffmpeg jump to the key frame at or before the target and
   decode from there (cost: at most one GOP); with accurate seeking (ffmpeg's default when
   transcoding) it then discards decoded frames earlier than the seek time. We seek to the
   *midpoint* between frame ``i-1``'s and frame ``i``'s timestamps, so the microsecond
   rounding of the seek time can never land on the wrong side of a frame.
2. Verification, not trust: a ``showinfo`` filter reports each output frame's pts on
   stderr (``-copyts`` keeps the container's timestamps), and every frame handed out is
   checked against ``frame_pts[i]``, ``frame_pts[i+1]``, ... exactly (integers). A frame
   earlier than expected is skipped; one later than expected (a seek overshoot, a dropped
   frame) makes the reader retry from the start of the file once, then raise MediaError.

Files whose timestamps are unusable (missing/duplicate pts) fall back to decoding from the
first frame and selecting by output frame number (``select=gte(n,i)``): slow for deep
seeks, still exact.

Memory is constant: one frame buffer at a time (plus the OS pipe), whatever the length.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import ffmpeg as ffmpeg_python
import numpy as np

from engine.errors import MediaError
from engine.io.ffmpeg import MediaInfo, StderrTail, ffmpeg_cmd, probe

__all__ = ["VideoSource"]

_SHOWINFO_RE = re.compile(r"Parsed_showinfo.*\bn:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)")
_F_SETPIPE_SZ = 1031  # Linux fcntl: grow the pipe so ffmpeg blocks less on big frames
# Untagged streams: HD and larger are Rec.709 by convention (what players assume), SD is 601.
_HD_LINES = 720


class _SeekMissed(Exception):
    """The first decoded frame came after the requested one; retry without seeking."""


def _grow_pipe(fd: int, want: int) -> None:
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, _F_SETPIPE_SZ, min(want, limit))
    except (OSError, ValueError):
        pass  # best effort: only a throughput nicety


def _read_exact(stream, buf: bytearray) -> int:
    """Fill ``buf`` from ``stream``; returns the number of bytes read (< len at EOF)."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class VideoSource:
    """A video file read as RGB uint8 frames (H x W x 3), by 0-based frame index."""

    def __init__(self, path: str | os.PathLike, info: MediaInfo | None = None) -> None:
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        if not self.info.has_video:
            raise MediaError(f"{self.path} has no video stream")
        if not self.info.fps:
            raise MediaError(f"{self.path}: cannot determine the video frame rate")

    def __repr__(self) -> str:
        i = self.info
        return f"VideoSource({str(self.path)!r}, {i.width}x{i.height}, {i.frame_count} frames @ {i.fps})"

    def __len__(self) -> int:
        return self.info.frame_count

    @property
    def frame_count(self) -> int:
        return self.info.frame_count

    @property
    def fps(self) -> Fraction:
        return self.info.fps  # type: ignore[return-value]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return (self.info.height, self.info.width, 3)

    def read(self, index: int) -> np.ndarray:
        """One frame by index (starts a decoder: for runs of frames use iter_frames)."""
        with contextlib.closing(self.iter_frames(index, 1)) as frames:
            return next(frames)

    def iter_frames(self, start_index: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
        """Frames ``start_index .. start_index+count-1`` (to the end when count is None)."""
        n = self.info.frame_count
        if count is None:
            count = n - start_index
        if start_index < 0 or count < 0 or start_index + count > n:
            raise MediaError(f"{self.path}: frame indices {start_index}..{start_index + count - 1} "
                             f"are outside the video (indices 0..{n - 1}, {n} frames)")
        return self._iter(start_index, count)

    # -----------------------------------------------------------------------------------

    def _iter(self, start: int, count: int) -> Iterator[np.ndarray]:
        if count == 0:
            return
        if not self.info.pts_reliable:
            yield from self._decode(start, count, seek=False, verify=False)
            return
        try:
            yield from self._decode(start, count, seek=start > 0, verify=True)
        except _SeekMissed:
            # Demuxer seek landed after the target (rare: broken index). Exact but slow path.
            yield from self._decode(start, count, seek=False, verify=True)

    def _scale_filter(self) -> dict:
        """Colour matrix for YUV -> RGB. Tagged streams use their tag ('auto'); untagged ones
        get the convention for their size, not swscale's blanket BT.601."""
        if self.info.color_matrix:
            return {"in_color_matrix": "auto"}
        return {"in_color_matrix": "bt709" if self.info.height >= _HD_LINES else "bt601"}

    def _command(self, start: int, count: int, seek: bool, verify: bool) -> list[str]:
        in_opts: dict = {}
        info = self.info
        if seek:
            tb = info.time_base
            pts = info.frame_pts
            mid = Fraction(int(pts[start - 1]) + int(pts[start]), 2) * tb
            # -ss counts from the file's start_time (min over streams, microseconds).
            ss = mid - Fraction(info.start_time).limit_denominator(1_000_000)
            in_opts["ss"] = f"{float(ss):.6f}"
        src = ffmpeg_python.input(str(self.path), **in_opts)["V:0"]
        if verify:
            src = src.filter("showinfo", checksum=0)
        else:
            src = src.filter("select", f"gte(n,{start})")
        src = src.filter("scale", **self._scale_filter()).filter("format", "rgb24")
        opts = {"fps_mode": "passthrough", "an": None, "sn": None, "dn": None}
        if not verify:
            # With verification a few early frames may be dropped here in Python, so ffmpeg
            # must not stop after `count`; the reader ends the process when it has enough.
            opts["frames:v"] = count
        out = src.output("pipe:", format="rawvideo", pix_fmt="rgb24", copyts=None, **opts)
        return out.compile(cmd=ffmpeg_cmd(loglevel="info"))

    def _decode(self, start: int, count: int, *, seek: bool, verify: bool) -> Iterator[np.ndarray]:
        info = self.info
        h, w = info.height, info.width
        frame_bytes = h * w * 3
        args = self._command(start, count, seek, verify)
        pts_queue: queue.Queue[int | None] = queue.Queue()

        def on_line(line: str) -> None:
            m = _SHOWINFO_RE.search(line)
            if m:
                pts_queue.put(None if m.group(2) == "NOPTS" else int(m.group(2)))

        try:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise MediaError(f"cannot run ffmpeg: {exc.strerror}") from exc
        tail = StderrTail(proc.stderr, keep=50, on_line=on_line if verify else None)
        _grow_pipe(proc.stdout.fileno(), frame_bytes)
        expected = info.frame_pts[start:start + count] if verify else None
        produced = 0
        try:
            while produced < count:
                buf = bytearray(frame_bytes)
                got = _read_exact(proc.stdout, buf)
                if got < frame_bytes:
                    proc.wait()
                    tail.join(5)
                    raise MediaError(
                        f"{self.path}: decoding stopped at frame index {start + produced} "
                        f"(wanted {start}..{start + count - 1}): {tail.last_error()}")
                if verify:
                    try:
                        pts = pts_queue.get(timeout=60)
                    except queue.Empty:
                        raise MediaError(f"{self.path}: ffmpeg reported no timestamp for a frame") from None
                    want = int(expected[produced])
                    if pts is None:
                        raise MediaError(f"{self.path}: decoded frame has no timestamp")
                    if pts < want:
                        continue  # before the target (inexact seek): drop it
                    if pts > want:
                        if produced == 0 and seek:
                            raise _SeekMissed()
                        raise MediaError(
                            f"{self.path}: frame index {start + produced} missing from the decoded "
                            f"stream (got pts {pts}, expected {want}): the file is damaged")
                produced += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()
            tail.join(5)
