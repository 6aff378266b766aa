"""The pipeline spine: stages cached by content hash, submitit executors, progress, versions.

See ``stage.py`` (what a stage is and when it is up to date), ``runner.py`` (running one
stage), ``executor.py`` (running a DAG of stages locally, in-process or on SLURM),
``progress.py`` and ``versions.py`` (versioned output folders).
"""
from .executor import EXECUTOR_KINDS, ExecutorConfig, make_executor, run_stages, valid_params
from .progress import Progress, read_progress
from .runner import StageJob, StageResult, execute_stage, run_stage_job
from .stage import (ItemLedger, ItemStage, Stage, StageContext, StageItem, StageStatus, read_manifest,
                    stage_report)
from .versions import DEFAULT_TEMPLATE, VersionDir, allocate_version, validate_template

__all__ = [
    "EXECUTOR_KINDS", "ExecutorConfig", "make_executor", "run_stages", "valid_params",
    "Progress", "read_progress",
    "StageJob", "StageResult", "execute_stage", "run_stage_job",
    "ItemLedger", "ItemStage", "Stage", "StageContext", "StageItem", "StageStatus", "read_manifest",
    "stage_report",
    "DEFAULT_TEMPLATE", "VersionDir", "allocate_version", "validate_template",
]
