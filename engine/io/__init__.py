"""Media I/O: probing, frame-exact video decoding, image sequences, audio, EXR, review movies.

Frames are numpy arrays throughout (no torch here): RGB uint8 for video/PNG/JPEG, float32
scene-linear RGB for EXR. Every file written here is written atomically. ffmpeg is the only
external program (see :mod:`engine.io.ffmpeg` for how it is found).
"""
from engine.io.audio import extract_audio, frame_for_sample, samples_for_frames, write_wav
from engine.io.exr import Layer, exr_frame_metadata, read_exr, read_exr_header, sync_files, write_exr
from engine.io.ffmpeg import MediaInfo, ffmpeg_exe, format_fps, probe
from engine.io.movie import ReviewMovieWriter
from engine.io.plate import FrameSource, SequencePlate, VideoPlate, open_plate
from engine.io.sequence import ImageSequenceSource, format_ranges, is_sequence_pattern, sequence_path
from engine.io.timecode import frames_to_timecode, timecode_for_frame, timecode_to_frames
from engine.io.video import VideoSource

__all__ = [
    "MediaInfo", "probe", "ffmpeg_exe", "format_fps",
    "VideoSource", "ImageSequenceSource", "FrameSource", "VideoPlate", "SequencePlate", "open_plate",
    "is_sequence_pattern", "sequence_path", "format_ranges",
    "extract_audio", "samples_for_frames", "frame_for_sample", "write_wav",
    "Layer", "write_exr", "read_exr", "read_exr_header", "sync_files", "exr_frame_metadata",
    "frames_to_timecode", "timecode_to_frames", "timecode_for_frame",
    "ReviewMovieWriter",
]
