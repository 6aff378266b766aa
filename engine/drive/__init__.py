"""Driving the actor: video-driven expression transfer, the drive file, (audio: engine.audio).

* :mod:`engine.drive.timing`: exact time alignment of a driving clip onto the shot's frames;
* :mod:`engine.drive.geometry`: landmark bases, facial measures, rest-expression estimates;
* :mod:`engine.drive.transfer`: identity-independent expression transfer, head-pose modes,
  no-face handling (:func:`transfer_video`);
* :mod:`engine.drive.drive_file`: the ``portrait.drive/1`` file (:func:`write_drive`,
  :func:`load_drive`);
* :mod:`engine.drive.metrics`: transfer statistics and the re-tracked expression error;
* :mod:`engine.drive.review`: the side-by-side review movie (driver | driven conditioning).
"""
from .drive_file import SCHEMA_LABEL, SUFFIX, DriveFile, load_drive, read_drive_header, write_drive
from .timing import SamplePlan, driver_positions, sample_plan
from .transfer import (FLAG_NAMES, DriveResult, ExpressionMap, VideoDriveConfig, expression_map, frame_status,
                       transfer_video)

__all__ = ["SCHEMA_LABEL", "SUFFIX", "DriveFile", "load_drive", "read_drive_header", "write_drive", "SamplePlan",
           "driver_positions", "sample_plan", "FLAG_NAMES", "DriveResult", "ExpressionMap", "VideoDriveConfig",
           "expression_map", "frame_status", "transfer_video"]
