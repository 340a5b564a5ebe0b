"""Distributed training with Ray Train: one generic loop per worker, checkpoints, resume, bundles.

    from creagen_ray.training import train
    result = train(cfg)                      # TrainResult(bundle_path, metrics, run_dir, checkpoint)

Tune reuses `build_trainer(cfg, prepared, run_name=..., storage_path=..., callbacks=[a report relay],
resume_from_checkpoint=donor, stop_signal=...)` and `fit(trainer)` (raises NonFiniteLossError on divergence).
"""

from creagen_ray.training.checkpoint import CheckpointError, load_checkpoint, load_ray_checkpoint, save_checkpoint
from creagen_ray.training.progress import MetricsLogCallback, ProgressCallback
from creagen_ray.training.trainer import (
    NonFiniteLossError,
    TrainResult,
    build_trainer,
    check_result,
    connect_ray,
    default_run_name,
    family_from_checkpoint,
    fit,
    total_steps,
    train,
)

__all__ = [
    "CheckpointError",
    "MetricsLogCallback",
    "NonFiniteLossError",
    "ProgressCallback",
    "TrainResult",
    "build_trainer",
    "check_result",
    "connect_ray",
    "default_run_name",
    "family_from_checkpoint",
    "fit",
    "load_checkpoint",
    "load_ray_checkpoint",
    "save_checkpoint",
    "total_steps",
    "train",
]
