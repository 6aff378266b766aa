"""ffmpeg: locating the binary, running it, and probing media without ffprobe.

The engine needs exactly one external program, ``ffmpeg``. A system ``ffmpeg`` on PATH is
preferred (studios pin their own builds); otherwise the static build shipped with the
``imageio-ffmpeg`` wheel is used, so a plain ``pip install`` works. ``PORTRAIT_FFMPEG``
overrides both. imageio-ffmpeg ships no ``ffprobe``, so :func:`probe` reads everything from
two sources that plain ``ffmpeg`` provides:

* the input banner on stderr (codec, size, audio rate/channels, container duration), and
* one stream-copy pass through the ``framecrc`` muxer (``-map 0:V:0 -c copy -copyts -f
  framecrc -``), which lists every video packet with its exact integer timestamps, the
  stream time base and the packet flags. No decoding happens, so it runs at disk speed.

From the packet list we get an *exact* frame count (packets the demuxer marks as
DISCARD, e.g. before an MP4 edit list's start, are not frames a decoder outputs and are
not counted), the exact frame rate as a Fraction (1 / (most common pts step x time
base)), whether the stream is variable-frame-rate, and the presentation timestamp of
every frame, which :class:`engine.io.video.VideoSource` uses for frame-exact seeking.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterable, Sequence

import ffmpeg as ffmpeg_python
import numpy as np

from engine.errors import MediaError

log = logging.getLogger(__name__)

__all__ = [
    "MediaInfo",
    "ffmpeg_exe",
    "ffmpeg_cmd",
    "probe",
    "format_fps",
    "StderrTail",
    "NOPTS",
]

# AV_NOPTS_VALUE as framecrc prints it.
NOPTS = -(2**63)
# Packet flags (libavcodec/packet.h): AV_PKT_FLAG_KEY = 1, CORRUPT = 2, DISCARD = 4.
_PKT_FLAG_CORRUPT = 0x2
_PKT_FLAG_DISCARD = 0x4

# Common production rates; a measured rate within 0.1 % of one of these is snapped to it
# when the container's time base is too coarse to state it exactly (e.g. Matroska's 1 ms).
_STANDARD_RATES = tuple(Fraction(x) for x in (
    "24000/1001", "24", "25", "30000/1001", "30", "48000/1001", "48", "50", "60000/1001",
    "60", "120000/1001", "120", "12", "15", "16", "18", "20", "100", "240"))

# stderr lines that mean the file is damaged, even when ffmpeg carries on regardless.
_CORRUPTION_PATTERNS = re.compile(
    r"partial file|packet corrupt|corrupt input packet|invalid nal unit|moov atom not found"
    r"|invalid data found|error reading|truncat|end of file while|unexpected eof", re.IGNORECASE)


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $PORTRAIT_FFMPEG, else ``ffmpeg`` on PATH, else imageio-ffmpeg's."""
    env = os.environ.get("PORTRAIT_FFMPEG")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise MediaError(f"PORTRAIT_FFMPEG={env} is not an executable file")
        return env
    system = shutil.which("ffmpeg")
    bundled = None
    try:
        import imageio_ffmpeg
        bundled = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        pass
    if system:
        version = _ffmpeg_version(system)
        # -fps_mode, showinfo's checksum option and aresample's channel-layout options
        # arrived in ffmpeg 5.1; an older distro ffmpeg would fail on them.
        if version is None or version >= _MIN_VERSION or bundled is None:
            return system
        log.warning("system ffmpeg %s is older than %s; using imageio-ffmpeg's %s",
                    ".".join(map(str, version)), ".".join(map(str, _MIN_VERSION)), bundled)
    if bundled:
        return bundled
    raise MediaError("no ffmpeg found: install ffmpeg (>= 5.1) or the imageio-ffmpeg package")


_MIN_VERSION = (5, 1)


def _ffmpeg_version(exe: str) -> tuple[int, int] | None:
    """(major, minor) from ``ffmpeg -version``; None for git builds that print no number."""
    try:
        out = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"ffmpeg version n?(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def ffmpeg_cmd(*global_args: str, loglevel: str = "info") -> list[str]:
    """The command prefix for ffmpeg-python's ``compile``/``run_async(cmd=...)``.

    Global options go *before* the inputs: ffmpeg-python appends ``global_args()`` after the
    output file, where recent ffmpeg versions ignore them ("trailing options").
    """
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", loglevel,
            *global_args]


class StderrTail:
    """Drain a subprocess's stderr on a thread (so the pipe never fills and blocks ffmpeg),
    keeping the last lines for error messages and handing selected lines to a callback."""

    def __init__(self, stream: IO[bytes], *, keep: int = 200, on_line=None) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self._on_line = on_line
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        # ffmpeg ends progress lines with '\r'; treat both as line ends.
        for raw in iter(stream.readline, b""):
            for part in raw.replace(b"\r", b"\n").split(b"\n"):
                line = part.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                self.lines.append(line)
                if self._on_line is not None:
                    self._on_line(line)
        stream.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def last_error(self) -> str:
        return last_error_line(self.lines)


_LOG_PREFIX = re.compile(r"^\s*(\[[^\]]+ @ 0x[0-9a-f]+\]\s*)+")


def _strip_prefix(line: str) -> str:
    return _LOG_PREFIX.sub("", line).strip()


# Lines ffmpeg prints as *consequences* of an earlier failure: never the useful one.
_CASCADE = ("Task finished with error code", "Terminating thread with return code",
            "Error sending frames to consumers", "Could not open encoder before EOF",
            "Nothing was written into output file", "Conversion failed", "Error opening input files",
            "Error opening output files", "Error while filtering", "Error muxing a packet",
            "Error submitting a packet", "Error closing file", "Error writing trailer",
            "Last message repeated", "frame=", "size=")
_ERRORISH = re.compile(r"error|invalid|not found|no such|cannot|could not|unable|failed|corrupt"
                       r"|does not|unknown|permission|broken pipe|no space", re.IGNORECASE)


def last_error_line(lines: Iterable[str]) -> str:
    """The one telling line of an ffmpeg stderr, without ``[muxer @ 0x...]`` prefixes: the
    first error that is not a knock-on message (ffmpeg prints the root cause first, then a
    cascade of "Task finished..."/"Conversion failed!"); else the last line."""
    lines = [_strip_prefix(x) for x in lines if x.strip()]
    for line in lines:
        if line.startswith(_CASCADE):
            continue
        if _ERRORISH.search(line):
            return line
    return lines[-1] if lines else "ffmpeg gave no message"


def format_fps(fps: Fraction | None) -> str:
    """``25`` for integral rates, ``23.976 (24000/1001)`` otherwise: what a user reads."""
    if fps is None:
        return "unknown"
    if fps.denominator == 1:
        return str(fps.numerator)
    return f"{float(fps):.3f}".rstrip("0").rstrip(".") + f" ({fps.numerator}/{fps.denominator})"


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learned about a media file.

    Video figures describe the first non-cover-art video stream *as decoded*: ``width`` and
    ``height`` already account for a rotation the decoder applies (phone footage).
    ``frame_count`` is exact (counted packets, not estimated from duration). ``fps`` is the
    stream's exact frame rate (what ffprobe calls r_frame_rate) and ``avg_fps`` the count
    divided by the span of the timestamps. ``frame_pts`` holds every frame's presentation
    timestamp in ``time_base`` units, in presentation (= decode output) order.
    """

    path: Path
    container: str
    duration: float | None
    start_time: float
    has_video: bool = False
    width: int = 0
    height: int = 0
    fps: Fraction | None = None
    avg_fps: Fraction | None = None
    frame_count: int = 0
    video_codec: str | None = None
    pix_fmt: str | None = None
    color_range: str | None = None     # "tv" / "pc" when the stream says so
    color_matrix: str | None = None    # e.g. "bt709", "smpte170m"; None when untagged
    sar: Fraction = Fraction(1)        # sample (pixel) aspect ratio; frames are not resampled
    rotation: float = 0.0
    vfr: bool = False
    time_base: Fraction | None = None
    video_start: Fraction | None = None
    has_audio: bool = False
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    frame_pts: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def video_duration(self) -> Fraction | None:
        """Exact duration of the video as frame_count / fps (constant-rate interpretation)."""
        if not self.has_video or not self.fps:
            return None
        return Fraction(self.frame_count) / self.fps

    @property
    def pts_reliable(self) -> bool:
        """Every frame has its own timestamp: seeking can be verified timestamp by timestamp."""
        return self.frame_pts is not None and len(self.frame_pts) == self.frame_count > 0


# ---------------------------------------------------------------------------------------
# Banner parsing
# ---------------------------------------------------------------------------------------

_INPUT_RE = re.compile(r"^Input #0, ([^,]+(?:,[^,\s]+)*), from ")
_DURATION_RE = re.compile(r"Duration: (?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)(?:, start: (-?[\d.]+))?")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)(?:\[0x[0-9a-fA-F]+\])?(?:\([^)]*\))?: (\w+): (.*)$")
_SIZE_RE = re.compile(r", (\d{1,5})x(\d{1,5})(?=[ ,\[]|$)")
_RATE_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_AUDIO_RE = re.compile(r", (\d+) Hz, ([^,]+)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees")
_PIXFMT_RE = re.compile(r"^[^,]+, (\w+)(?:\(([^)]*)\))?(?:,|$)")
_SAR_RE = re.compile(r"\[SAR (\d+):(\d+) ")
_RANGES = ("tv", "pc")
_NOT_MATRIX = ("progressive", "top first", "bottom first", "top coded first (swapped)",
               "bottom coded first (swapped)", "unknown")

_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "downmix": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3,
                    "4.0": 4, "quad": 4, "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5,
                    "4.1": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6, "6.1": 7, "7.0": 7, "7.1": 8,
                    "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8, "hexadecagonal": 16}


@dataclass
class _Banner:
    container: str = "?"
    duration: float | None = None
    start: float = 0.0
    video: str | None = None      # the rest of the first video stream line
    video_rotation: float = 0.0
    audio: str | None = None


def _parse_banner(lines: Sequence[str]) -> _Banner:
    b = _Banner()
    in_input = False
    current = None
    for line in lines:
        m = _INPUT_RE.match(line)
        if m:
            in_input, b.container = True, m.group(1)
            continue
        if line.startswith(("Output #", "Stream mapping:")):
            break
        if not in_input:
            continue
        m = _DURATION_RE.search(line)
        if m and line.lstrip().startswith("Duration:"):
            if m.group(1) is not None:
                b.duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            if m.group(4):
                b.start = float(m.group(4))
            continue
        m = _STREAM_RE.match(line)
        if m:
            kind, rest = m.group(2), m.group(3)
            current = None
            if kind == "Video" and "(attached pic)" not in rest and b.video is None:
                b.video, current = rest, "video"
            elif kind == "Audio" and b.audio is None:
                b.audio = rest
            continue
        m = _ROTATION_RE.search(line)
        if m and current == "video":
            b.video_rotation = float(m.group(1))
    return b


def _parse_rate(text: str, which: str) -> float | None:
    for m in _RATE_RE.finditer(text):
        if m.group(3) == which:
            return float(m.group(1)) * (1000 if m.group(2) else 1)
    return None


def _snap_rate(rate: float, rel_tol: float = 1e-3) -> Fraction | None:
    best = min(_STANDARD_RATES, key=lambda r: abs(float(r) - rate))
    return best if abs(float(best) - rate) <= rel_tol * rate else None


def _is_plain_rate(rate: Fraction) -> bool:
    """Integral or NTSC-style (N*1000/1001) rates are what cameras and encoders produce."""
    return rate.denominator == 1 or (rate.denominator == 1001 and rate.numerator % 1000 == 0)


# ---------------------------------------------------------------------------------------
# Packet listing (framecrc)
# ---------------------------------------------------------------------------------------

_TB_RE = re.compile(r"^#tb (\d+): (\d+)/(\d+)")


@dataclass
class _Packets:
    time_base: Fraction | None = None
    pts: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    corrupt: int = 0


def _parse_framecrc(stdout: IO[bytes]) -> _Packets:
    pk = _Packets()
    for raw in stdout:
        if raw.startswith(b"#"):
            m = _TB_RE.match(raw.decode("ascii", "replace"))
            if m and m.group(1) == "0":
                pk.time_base = Fraction(int(m.group(2)), int(m.group(3)))
            continue
        parts = raw.split(b",")
        if len(parts) < 6 or parts[0].strip() != b"0":
            continue
        flags = 0
        if len(parts) > 6 and parts[6].strip().startswith(b"F=0x"):
            flags = int(parts[6].strip()[4:], 16)
        if flags & _PKT_FLAG_DISCARD:
            continue  # dropped by the demuxer/decoder (edit list): not an output frame
        if flags & _PKT_FLAG_CORRUPT:
            pk.corrupt += 1
        pk.pts.append(int(parts[2]))
        pk.durations.append(int(parts[3]))
    return pk


def _frame_rate(pts: np.ndarray, durations: list[int], tb: Fraction,
                banner_tbr: float | None, banner_fps: float | None) -> tuple[Fraction | None, Fraction | None, bool]:
    """(fps, avg_fps, vfr) from sorted frame timestamps."""
    n = len(pts)
    step: int | None = None
    vfr = False
    avg = None
    if n >= 2:
        deltas = np.diff(pts)
        step = int(Counter(deltas.tolist()).most_common(1)[0][0])
        # One tick of slack absorbs coarse time bases (1 ms Matroska: 41/42 ms at 23.976).
        vfr = bool(np.any(np.abs(deltas - step) > max(1, step // 100)))
        span = int(pts[-1] - pts[0])
        if span > 0:
            avg = Fraction(n - 1) / (span * tb)
    elif durations and durations[0] > 0:
        step = durations[0]
    fps = None
    if step and step > 0:
        exact = 1 / (step * tb)
        if _is_plain_rate(exact):
            fps = exact
        else:
            measured = float(avg) if (avg and not vfr) else float(exact)
            fps = _snap_rate(measured)
    if fps is None:
        for guess in (banner_tbr, banner_fps):
            if guess:
                fps = _snap_rate(guess) or Fraction(guess).limit_denominator(1001)
                break
    if fps is None and avg:
        fps = avg.limit_denominator(1001)
    return fps, avg, vfr


_probe_memo: dict[tuple[str, int, int], MediaInfo] = {}


def probe(path: str | os.PathLike) -> MediaInfo:
    """Describe a media file (video and/or audio). Raises MediaError with one line when the
    file is missing, not media, truncated or corrupt.

    Results are memoised per process on (path, size, mtime): the packet listing reads the
    whole file, and a plate is typically probed by several stages in one process.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"media file not found: {path}")
    if not path.is_file():
        raise MediaError(f"not a media file (a {'folder' if path.is_dir() else 'special file'}): {path}")
    st = path.stat()
    if st.st_size == 0:
        raise MediaError(f"cannot read {path}: the file is empty")
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    hit = _probe_memo.get(key)
    if hit is not None:
        return dataclasses.replace(hit, path=path)
    info = _probe(path)
    if info.frame_pts is not None:
        info.frame_pts.flags.writeable = False   # shared through the memo
    _probe_memo[key] = info
    return info


def _probe(path: Path) -> MediaInfo:
    cmd = ffmpeg_cmd(loglevel="info")
    stream = ffmpeg_python.input(str(path))["V:0?"].output("pipe:", c="copy", f="framecrc", copyts=None)
    args = stream.compile(cmd=cmd)
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise MediaError(f"cannot run ffmpeg ({cmd[0]}): {exc.strerror}") from exc
    tail = StderrTail(proc.stderr, keep=100_000)
    packets = _parse_framecrc(proc.stdout)
    proc.wait()
    tail.join()
    lines = list(tail.lines)
    banner = _parse_banner(lines)
    # Only log lines ("[demuxer @ 0x...] ..."), never banner text: a title or file name that
    # contains "truncated" is not damage.
    problems = [_strip_prefix(x) for x in lines
                if x.startswith("[") and _CORRUPTION_PATTERNS.search(_strip_prefix(x))]
    if banner.video is None and banner.audio is None:
        # ffmpeg could not open it at all, or found nothing playable inside.
        reason = problems[0] if problems else last_error_line(lines)
        if "output file does not contain any stream" in reason.lower() or banner.container != "?":
            reason = "no video or audio stream in it"
        raise MediaError(f"cannot read {path}: {_friendly(reason)}")
    if problems or packets.corrupt:
        what = problems[0] if problems else f"{packets.corrupt} corrupt packet(s)"
        raise MediaError(f"{path} is truncated or corrupt: {what} "
                         f"({len(packets.pts)} readable video frames)")
    if proc.returncode != 0 and banner.video is not None:
        raise MediaError(f"cannot read {path}: {last_error_line(lines)}")

    info: dict = dict(path=path, container=banner.container, duration=banner.duration,
                      start_time=banner.start)
    if banner.video is not None:
        v = banner.video
        size = _SIZE_RE.search(v)
        if not size:
            raise MediaError(f"cannot read {path}: video stream has no frame size ({v[:60]})")
        w, h = int(size.group(1)), int(size.group(2))
        rot = banner.video_rotation
        if round(abs(rot)) % 180 == 90:  # the decoder auto-rotates: frames come out transposed
            w, h = h, w
        pm = _PIXFMT_RE.match(v)
        crange = cmatrix = None
        if pm and pm.group(2):
            for tok in (t.strip() for t in pm.group(2).split(",")):
                if tok in _RANGES:
                    crange = tok
                elif tok not in _NOT_MATRIX and cmatrix is None:
                    cmatrix = tok.split("/")[0]   # "bt709/bt709/bt709": matrix comes first
        sm = _SAR_RE.search(v)
        sar = Fraction(int(sm.group(1)), int(sm.group(2))) if sm and int(sm.group(2)) else Fraction(1)
        pts_list = [p for p in packets.pts if p != NOPTS]
        pts = np.sort(np.asarray(pts_list, dtype=np.int64))
        reliable = len(pts) == len(packets.pts) and (len(pts) < 2 or bool(np.all(np.diff(pts) > 0)))
        tb = packets.time_base
        if tb is None or not packets.pts:
            raise MediaError(f"cannot read {path}: video stream has no frames")
        fps, avg, vfr = _frame_rate(pts, packets.durations, tb,
                                    _parse_rate(v, "tbr"), _parse_rate(v, "fps"))
        info.update(has_video=True, width=w, height=h, fps=fps, avg_fps=avg,
                    frame_count=len(packets.pts), video_codec=v.split(" ", 1)[0].rstrip(","),
                    pix_fmt=pm.group(1) if pm else None, color_range=crange,
                    color_matrix=cmatrix, sar=sar, rotation=rot, vfr=vfr, time_base=tb,
                    video_start=int(pts[0]) * tb if len(pts) else None,
                    frame_pts=pts if reliable else None)
    if banner.audio is not None:
        a = banner.audio
        m = _AUDIO_RE.search(a)
        sr = ch = None
        if m:
            sr = int(m.group(1))
            layout = m.group(2).strip()
            cm = re.match(r"(\d+) channels", layout)
            ch = int(cm.group(1)) if cm else _LAYOUT_CHANNELS.get(layout.split(" ")[0])
        info.update(has_audio=True, audio_codec=a.split(" ", 1)[0].rstrip(","), sample_rate=sr,
                    channels=ch)
    return MediaInfo(**info)


def _friendly(reason: str) -> str:
    low = reason.lower()
    if "moov atom not found" in low:
        return "moov atom not found (truncated file, or not a video)"
    if "invalid data found" in low:
        return "not a media file ffmpeg can read (invalid data)"
    if "permission denied" in low:
        return "permission denied"
    return reason
