"""The public training API: `train()` for the CLI and jobs, `build_trainer()` for Tune.

    result = train(load_config("jobs/configs/demo-rnn.yaml"))
    print(result.bundle_path, result.metrics["val_loss"])

`train` = connect/start Ray -> prepare the data (a no-op when already prepared) -> build a
`TorchTrainer` around `loop.train_loop_per_worker` -> fit -> export a verified bundle from the
last checkpoint into `<storage_path>/<run_name>/bundle`.

Resume: Ray Train V2 keeps a checkpoint-manager snapshot under `<storage_path>/<run_name>`; a
new `TorchTrainer` with the same RunConfig name and storage path restores it and the loop gets
the latest checkpoint from `ray.train.get_checkpoint()`. So running `train` again with the same
`train.run_name` continues (step, optimizer and schedule state); without a run_name every run
gets a fresh timestamped name. `TorchTrainer(resume_from_checkpoint=...)` is deprecated in V2
(it raises), so an explicit checkpoint (a PBT donor) travels in `train_loop_config` instead.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.data
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from creagen_ray import storage
from creagen_ray.bundle import write_bundle
from creagen_ray.cluster import connect_ray
from creagen_ray.console import train_log_level
from creagen_ray.config import ExperimentConfig, resolve_path, with_resolved_paths
from creagen_ray.families import Family, build_family, family_class
from creagen_ray.metrics.report import quality_section
from creagen_ray.training.checkpoint import load_ray_checkpoint, one_torch_thread
from creagen_ray.training.loop import batch_columns, train_loop_per_worker
from creagen_ray.training.progress import ProgressCallback, ProgressDisplay
from creagen_ray.training.tracking import Tracker


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss (or the weights) became NaN/Inf; no checkpoint was written for it."""

    def __init__(self, step: int, what: str, metrics: dict[str, Any], checkpoint: Any = None) -> None:
        shown = {k: v for k, v in metrics.items() if k in ("loss", "loss_d", "loss_g", "lr", "step")}
        last = f"; the last good checkpoint is {checkpoint.path}" if checkpoint is not None else ""
        super().__init__(f"training diverged at step {step}: {what} (metrics {shown}){last}")
        self.step = step
        self.metrics = metrics
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    """What a finished training run left behind."""

    bundle_path: Path | str | None  # a local folder, or a storage URI (s3://.../<run>/bundle)
    metrics: dict[str, Any]
    run_dir: str
    checkpoint: Any  # ray.train.Checkpoint of the last checkpoint
    family: Family | None = field(default=None, repr=False)


def default_run_name(cfg: ExperimentConfig) -> str:
    """cfg.train.run_name, else `<name>-<family>-<UTC timestamp>` (a fresh run)."""
    if cfg.train.run_name:
        return cfg.train.run_name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.name}-{cfg.model.family}-{stamp}"


def storage_uri(path: str) -> str:
    """Local storage paths made absolute (Ray Train wants that); URIs (s3://, gs://) unchanged."""
    return resolve_path(path, Path.cwd())


def ray_storage(path: str) -> dict[str, Any]:
    """RunConfig's storage_path (+ storage_filesystem for a URI: endpoint from the environment, no secrets)."""
    path = storage_uri(path)
    if not storage.is_uri(path):
        return {"storage_path": path}
    fs, inner = storage.resolve(path)
    return {"storage_path": inner, "storage_filesystem": fs}


def steps_per_epoch(cfg: ExperimentConfig, train_rows: int) -> int:
    """Optimizer-step calls per epoch per worker: equal shards, full batches only (drop_last)."""
    return (train_rows // cfg.train.num_workers) // cfg.train.batch_size


def total_steps(cfg: ExperimentConfig, train_rows: int) -> int:
    """Steps of the whole run: train.steps, or epochs x steps per epoch."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    per_epoch = steps_per_epoch(cfg, train_rows)
    if per_epoch == 0:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} x num_workers={cfg.train.num_workers} exceeds the "
            f"{train_rows} training rows: no full batch per epoch"
        )
    return cfg.train.epochs * per_epoch


def item_unit(cfg: ExperimentConfig, prepared: Any) -> str:
    """What throughput counts: tokens for text, images for images."""
    return "tokens" if prepared.spec.modality == "text" else "images"


def training_dataset(
    prepared: Any, columns: list[str], materialize_mb: float, num_workers: int = 1
) -> tuple[Any, str]:
    """The training split as fed to the workers, and how: ("materialized", one shard per worker) or
    ("streaming", a Ray Dataset).

    A split whose uncompressed columns fit `materialize_mb` MiB is read once on the driver (pyarrow,
    through pyarrow.fs, so a URI works) and cut into `num_workers` equal contiguous shards of
    `rows // num_workers` rows (what an equal split gives; the remainder is dropped), each put in
    Ray's object store as a dict of numpy columns: a list of ObjectRefs, one per rank. Each worker
    gets its own shard once and draws every epoch's batches from memory (loop._memory_epochs), so an
    epoch starts at once, and the run executes no Ray Data pipeline: no split coordinator actor and
    no streaming executor per worker (2-4 CPU-seconds of every run on 2 CPUs; Ray Train still starts
    its DatasetManager actor). The driver holds at most `materialize_mb` MiB while it puts the shards. Larger splits stream
    (`ray.data.read_parquet`, split by Ray Train); the loop's prefetch thread then starts the next
    epoch's read before the current one has been consumed. Only the columns the loop iterates are kept.
    """
    if prepared.nbytes("train", columns) <= materialize_mb * 2**20:
        connect_ray()
        rows = prepared.read_numpy("train", columns)
        per_worker = len(rows[columns[0]]) // num_workers
        shards = [
            ray.put({c: v[r * per_worker : (r + 1) * per_worker] for c, v in rows.items()}) for r in range(num_workers)
        ]
        return shards, "materialized"
    return prepared.train_dataset(columns), "streaming"


def build_trainer(
    cfg: ExperimentConfig,
    prepared: Any,
    *,
    run_name: str,
    storage_path: str | None = None,
    callbacks: list[Any] | None = None,
    resume_from_checkpoint: Any = None,
    progress: bool = False,
    stop_signal: Any = None,
    progress_events: str | None = None,
) -> TorchTrainer:
    """A TorchTrainer running the generic loop on `prepared` data (Tune builds one per trial).

    Same `run_name` + `storage_path` as an earlier run = resume from its latest checkpoint.
    `resume_from_checkpoint` (a ray.train or ray.tune Checkpoint, or a path) seeds a run that has
    no checkpoint of its own descending from it (PBT: the donor); after loading it, the loop
    re-applies this cfg's optimizer settings (family.set_optimizer_hyperparameters).
    `stop_signal` (a Tune trial's TrialChannel actor) ends the run at its next report once set.
    """
    t = cfg.train
    spec = prepared.spec
    tokenizer = prepared.tokenizer
    if isinstance(resume_from_checkpoint, (str, os.PathLike)):
        resume_from_checkpoint = ray.train.Checkpoint(str(resume_from_checkpoint))
    elif resume_from_checkpoint is not None and not isinstance(resume_from_checkpoint, ray.train.Checkpoint):
        # ray.tune.Checkpoint and ray.train.Checkpoint are different classes in 2.60
        resume_from_checkpoint = ray.train.Checkpoint(
            resume_from_checkpoint.path, filesystem=resume_from_checkpoint.filesystem
        )
    rows = prepared.num_rows("train")
    if steps_per_epoch(cfg, rows) == 0:
        raise ValueError(
            f"train.batch_size={t.batch_size} x num_workers={t.num_workers} exceeds the {rows} training rows: "
            "no full batch per worker"
        )
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json"),
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "total_steps": total_steps(cfg, rows),
        "val_rows": prepared.num_rows("val") if "val" in prepared.manifest["splits"] else 0,
        "data_path": resolve_path(str(prepared.path), Path.cwd()),  # workers run in another directory
        "resume_from": resume_from_checkpoint,
        "stop": stop_signal,
    }
    train_data, data_mode = training_dataset(prepared, list(batch_columns(spec)), t.materialize_mb, t.num_workers)
    loop_config["data_mode"] = data_mode
    if data_mode == "materialized":
        loop_config["train_shards"] = train_data  # one ObjectRef per rank; no Ray Data in the run
        datasets = None
    else:
        datasets = {"train": train_data}
    resources = {"CPU": t.cpus_per_worker, **t.worker_resources}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    cbs = list(callbacks or [])
    if progress:
        shown = family_class(cfg.model.family).progress_metrics
        cbs.append(ProgressCallback(run_name, item_unit(cfg, prepared), shown, events=progress_events))
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            **ray_storage(storage_path or t.storage_path),
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=cbs,
            logging_config=ray.train.LoggingConfig(log_level=train_log_level()),  # Train's INFO lines: --verbose
        ),
        datasets=datasets,
    )


def fit(trainer: TorchTrainer) -> ray.train.Result:
    """trainer.fit(), raising NonFiniteLossError when the run stopped on a NaN/Inf loss.

    Ctrl-C: in the main thread, Ray Train's fit() installs its own SIGINT handler, which aborts
    the run and then exits with SystemExit(0). Here that becomes KeyboardInterrupt (the CLI exits
    130, not 0, and a caller's cleanup runs), and the handler that was there before comes back
    (Ray's would otherwise answer a later Ctrl-C by aborting a run that is long gone).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        result = trainer.fit()
    except SystemExit:
        if main:
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    check_result(result)
    return result


def check_result(result: Any) -> None:
    """Raise NonFiniteLossError if rank 0's loop returned a divergence (Tune calls this too)."""
    outcome = result.return_value or {}
    if outcome.get("nonfinite"):
        raise NonFiniteLossError(int(outcome["step"]), str(outcome["what"]), outcome["metrics"], result.checkpoint)


def family_from_checkpoint(checkpoint: Any, cfg: ExperimentConfig, prepared: Any) -> Family:
    """Rebuild the family on the CPU from a training checkpoint (driver side, for the bundle)."""
    state = load_ray_checkpoint(checkpoint)
    steps = total_steps(cfg, prepared.num_rows("train"))
    family = build_family(cfg, prepared.spec, device="cpu", total_steps=steps, tokenizer=prepared.tokenizer,
                          trainable=False)
    family.load_state_dict(state["family"])
    family.train(False)
    return family


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The finite numbers and short strings of a report (what a bundle's metrics.json keeps)."""
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or isinstance(v, int):
            out[k] = v
        elif isinstance(v, float) and math.isfinite(v):
            out[k] = v
        elif isinstance(v, str) and len(v) < 200:
            out[k] = v
    return out


def bundle_location(storage_path: str, run_name: str) -> str:
    """Where the bundle goes: `<storage_path>/<run>/bundle`, next to the run's checkpoints (a path or a URI)."""
    return storage.join(storage_uri(storage_path), run_name, "bundle")


def train(
    cfg: ExperimentConfig,
    address: str | None = None,
    *,
    progress: bool = True,
    run_name: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Prepare data, train with Ray Train (DDP), and export a verified bundle; see the module doc."""
    from creagen_ray.data import prepare_data

    cfg = with_resolved_paths(cfg)  # no-op for load_config's configs; library callers' relative paths: cwd
    storage.check_writable(storage_uri(cfg.train.storage_path))  # bad credentials/bucket: fail before any work
    connect_ray(address)
    if progress:  # our progress lines replace Ray Data's bars (the context travels to the workers)
        ray.data.DataContext.get_current().enable_progress_bars = False
    prepared = prepare_data(cfg.data, storage_path=cfg.train.storage_path)
    name = run_name or default_run_name(cfg)
    tracker = Tracker(cfg, name, storage.join(storage_uri(cfg.train.storage_path), name)).start()  # train.tracking
    display = ProgressDisplay(name) if progress else contextlib.nullcontext()
    trainer = build_trainer(
        cfg, prepared, run_name=name, callbacks=[*(callbacks or []), *tracker.callbacks()], progress=progress,
        progress_events=display.path if progress else None,
    )
    try:
        with display:  # the one progress display of the run (training/progress.py)
            result = fit(trainer)
        if result.checkpoint is None:
            raise RuntimeError(f"run {name} finished without a checkpoint; nothing to export")
    except BaseException:
        tracker.fail()
        raise
    with one_torch_thread():  # small models on the driver: a second thread only spins (checkpoint.py)
        family = family_from_checkpoint(result.checkpoint, cfg, prepared)
        metrics = {**scalar_metrics(result.metrics), "run_name": name}
        if cfg.train.sample_metrics and prepared.spec.modality == "text":
            from creagen_ray.training.sample_metrics import text_sample_metrics

            metrics.update(text_sample_metrics(family, prepared, lm_steps=cfg.train.sample_lm_steps))
        metrics["quality"] = quality_section(family, metrics, prepared)
        from creagen_ray.memorization import index_files  # the memorization check's n-gram index (text)

        bundle = write_bundle(
            family, bundle_location(cfg.train.storage_path, name), metrics, prepared.manifest,
            extra_files=index_files(prepared),
        )
        tracker.finish(family, str(bundle), metrics, prepared.spec.modality)
    return TrainResult(bundle, metrics, str(result.path), result.checkpoint, family)
