"""Shot configs: the YAML schema ``portrait.shot/1``, its loader, versions and reference docs.

    from engine.shot import load_shot
    shot = load_shot("shot_configs/dubbing.yaml")    # raises ShotConfigError listing all problems
    shot.fps, shot.frames.render_frames(), shot.plate.path, shot.drive.mode, shot.config_hash()

The reference of every key is ``docs/shot_reference.md`` (``python -m engine.shot.docs``).
"""
from engine.shot.loader import load_shot, parse_shot, shot_to_dict, validate_shot
from engine.shot.problems import Problem, ShotConfigError
from engine.shot.schema import (CURRENT_VERSION, SCHEMA_LABEL, SCHEMA_NAME, ActorConfig,
                                DriveConfig, ExecutorConfig, FaceModelConfig, FramesConfig,
                                HandlesConfig, OutputConfig, PlateConfig, QcConfig, QcThresholds,
                                RenderConfig, ReviewMovieConfig, Shot, SlurmConfig, TrainConfig)
from engine.shot.upgrade import register_upgrade, unregister_upgrade
from engine.shot.values import timecode_to_frames, version_label

__all__ = [
    "load_shot", "parse_shot", "shot_to_dict", "validate_shot", "Problem", "ShotConfigError",
    "CURRENT_VERSION", "SCHEMA_LABEL", "SCHEMA_NAME", "Shot", "ActorConfig", "DriveConfig",
    "ExecutorConfig", "FaceModelConfig", "FramesConfig", "HandlesConfig", "OutputConfig",
    "PlateConfig", "QcConfig", "QcThresholds", "RenderConfig", "ReviewMovieConfig", "SlurmConfig",
    "TrainConfig", "register_upgrade", "unregister_upgrade", "timecode_to_frames", "version_label",
]
