"""The search: a Ray Tune `Tuner` over `CreagenTrial`s (each one a Ray Train run), and its outputs.

    result = tune_from_file("jobs/configs/demo-tune.yaml")          # creagen tune CONFIG
    result = tune_from_file("jobs/configs/demo-tune.yaml", resume=True)   # --resume

Flow: parse and check the space (ConfigError before any Ray work) -> join Ray -> prepare the data
once -> Tuner.fit (or Tuner.restore + fit) -> table, best.yaml and best bundle in
`<storage>/tune/<name>/`.

Resources (ray-notes, 2-CPU machine): a trial actor only waits on its Train run, so it asks for
`tune.trial_cpus` (0.01 by default); the Train workers ask for `train.cpus_per_worker` (0.45-0.5)
and, with `train.use_gpu`, `train.gpus_per_worker`; `tune.max_concurrent_trials` caps how many run.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

from creagen_ray import storage as store
from creagen_ray.bundle import write_bundle
from creagen_ray.config import (
    ConfigError,
    ExperimentConfig,
    dump_config,
    read_config,
    resolve_paths,
    validate_config,
)
from creagen_ray.families import family_class
from creagen_ray.training import connect_ray, family_from_checkpoint
from creagen_ray.training.tracking import tune_callbacks
from creagen_ray.training.trainer import ray_storage, storage_uri
from creagen_ray.tuning.results import TuneResult, rank_rows, table, trial_id_of, trial_rows, write_table
from creagen_ray.tuning.space import Dimension, parse_space, pbt_mutations
from creagen_ray.tuning.trial import CreagenTrial, sampled_config

# Tune keeps this many checkpoints per trial (PBT warns at 2 or fewer: exploits may need older ones)
TUNE_CHECKPOINTS_TO_KEEP = 4


def trainable_name(cfg: ExperimentConfig) -> str:
    """The name Tune registers the search's trainable under (and its trial folders start with).

    Tune keys a driver's trainables by name, so two searches in one process that registered the same
    name would run each other's trials; the search's name keeps them apart and stays the same for
    `--resume` (Tuner.restore requires the name the experiment was started with).
    """
    return f"CreagenTrial-{cfg.name}"


_running: set[str] = set()  # trainable names of the searches running in this process (see run_search)
_running_lock = threading.Lock()


def to_domain(dim: Dimension, search: str) -> Any:
    """The Tune sampler for one dimension; `search: grid` turns every choice into a grid."""
    lo, hi = dim.values[0], dim.values[-1]
    if dim.kind == "grid" or (dim.kind == "choice" and search == "grid"):
        return tune.grid_search(list(dim.values))
    if dim.kind == "choice":
        return tune.choice(list(dim.values))
    if dim.kind == "uniform":
        return tune.uniform(lo, hi)
    if dim.kind == "loguniform":
        return tune.loguniform(lo, hi)
    return tune.randint(lo, hi + 1)  # randint bounds are inclusive in our YAML, Tune's upper is exclusive


def clip_to_space(mutations: dict[str, Dimension]) -> Any:
    """PBT's explore multiplies by 0.8/1.2; keep each range inside its checked [low, high]."""

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        for path, dim in mutations.items():
            if dim.is_range and path in config:
                v = min(max(config[path], dim.values[0]), dim.values[1])
                config[path] = int(round(v)) if dim.kind == "randint" else float(v)
        return config

    return explore


def search_metric(cfg: ExperimentConfig, dims: dict[str, Dimension], base: dict[str, Any]) -> str:
    """tune.metric, else the family's validation metric (the same for every family in the space)."""
    if cfg.tune.metric:
        return cfg.tune.metric
    fams = {cfg.model.family}
    for path in ("model.family", "model"):
        if path in dims:
            fams |= {sampled_config(base, {path: v}, {}).model.family for v in dims[path].values}
    metrics = {family_class(f).val_metric for f in fams}
    if len(metrics) > 1:
        raise ConfigError(f"tune.metric: the searched families report different metrics {sorted(metrics)}; set one")
    return metrics.pop()


def make_scheduler(cfg: ExperimentConfig, dims: dict[str, Dimension]) -> Any:
    """ASHA (early stopping), PBT (exploit + explore of hot-swappable fields), or none (FIFO)."""
    t = cfg.tune
    if t.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration", grace_period=t.grace_period, reduction_factor=t.reduction_factor
        )
    if t.scheduler == "pbt":
        mutations = pbt_mutations(dims)
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=t.perturbation_interval,
            hyperparam_mutations={
                p: (list(d.values) if d.kind == "choice" else to_domain(d, "random")) for p, d in mutations.items()
            },
            custom_explore_fn=clip_to_space(mutations),
            synch=True,  # ray-notes: the async mode may never exploit with a small population
        )
    return FIFOScheduler()


def forced_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """Settings every trial gets: PBT needs a checkpoint at every evaluation (what a donor hands over)."""
    if cfg.tune.scheduler == "pbt":
        return {"train.checkpoint_every": cfg.train.eval_every}
    return {}


def _check_population(cfg: ExperimentConfig, dims: dict[str, Dimension]) -> None:
    t = cfg.tune
    if t.scheduler != "pbt":
        return
    population = expected_trials(cfg, dims)
    if population > t.max_concurrent_trials:
        raise ConfigError(
            f"tune.num_samples: PBT (synch) needs the whole population running at once; "
            f"{population} trials > tune.max_concurrent_trials={t.max_concurrent_trials}"
        )


def run_search(
    raw: dict[str, Any],
    *,
    resume: bool = False,
    address: str | None = None,
    callbacks: list[Any] | None = None,
    stop: Any = None,
    verbose: int = 1,
) -> TuneResult:
    """Run (or resume) the search a raw config describes and write its outputs; see module doc.

    `callbacks` / `stop` go to Tune's RunConfig.
    """
    raw = resolve_paths(raw)  # no-op for tune_from_file's (already resolved) raw; library dicts: cwd
    base, dims, cfg = parse_space(raw)
    _check_population(cfg, dims)
    metric, mode = search_metric(cfg, dims, base), cfg.tune.mode
    storage = storage_uri(cfg.train.storage_path)
    store.check_writable(storage)  # a bad bucket or credential: fail before any Ray work
    tune_root = store.join(storage, "tune")
    exp_dir = store.join(tune_root, cfg.name)  # a local folder or a URI
    exp_at = ray_storage(exp_dir)  # {"storage_path": path inside its filesystem, + "storage_filesystem"}
    if resume and not tune.Tuner.can_restore(exp_at["storage_path"], exp_at.get("storage_filesystem")):
        raise ConfigError(f"--resume: no search to resume at {exp_dir}")

    connect_ray(address)
    from creagen_ray.data import prepare_data

    prepared_path = None
    if not any(p == "data" or p.startswith("data.") for p in dims):
        prepared_path = str(prepare_data(validate_config(base).data, storage_path=storage).path)  # once, here

    trainable = tune.with_resources(
        tune.with_parameters(
            CreagenTrial,
            base=base,
            forced=forced_settings(cfg),
            metric=metric,
            storage_path=storage,
            runs_dir=store.join(exp_dir, "trial_runs"),
            prepared_path=prepared_path,
        ),
        {"cpu": cfg.tune.trial_cpus},
    )
    name = trainable_name(cfg)
    with _running_lock:  # Tune's registry of trainables is not thread-safe: register here, one at a time
        if name in _running:
            raise ConfigError(f"name: a search named {cfg.name!r} is already running in this process")
        _running.add(name)
        tune.register_trainable(name, trainable)
    try:
        t0 = time.perf_counter()
        if resume:
            # unfinished trials continue from their last checkpoint; finished ones are not re-run;
            # errored ones stay errored (a diverged trial would diverge again)
            tuner = tune.Tuner.restore(
                exp_at["storage_path"],
                trainable=name,  # registered above: Tune registers nothing itself (no race with another search)
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
                storage_filesystem=exp_at.get("storage_filesystem"),
            )
        else:
            tuner = tune.Tuner(
                name,
                param_space={p: to_domain(d, cfg.tune.search) for p, d in dims.items()},
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    scheduler=make_scheduler(cfg, dims),
                    num_samples=cfg.tune.num_samples,
                    max_concurrent_trials=cfg.tune.max_concurrent_trials,
                    reuse_actors=False,  # a fresh actor per run: its cleanup() always releases the Train workers
                ),
                run_config=tune.RunConfig(
                    name=cfg.name,
                    **ray_storage(tune_root),
                    stop=stop,
                    callbacks=[*(callbacks or []), *tune_callbacks(cfg)],  # train.tracking: Ray's MLflow / TBX loggers
                    verbose=verbose,
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=TUNE_CHECKPOINTS_TO_KEEP, checkpoint_frequency=1, checkpoint_at_end=True
                    ),
                    failure_config=tune.FailureConfig(max_failures=0),  # an error is a result: record it, go on
                ),
            )
        grid = tuner.fit()
    finally:
        with _running_lock:
            _running.discard(name)
    seconds = time.perf_counter() - t0
    return write_outputs(grid, cfg, base, dims, metric, exp_dir, seconds)


def expected_trials(cfg: ExperimentConfig, dims: dict[str, Dimension]) -> int:
    """Trials a complete search runs: num_samples x the product of the grid dimensions' sizes."""
    n = cfg.tune.num_samples
    for d in dims.values():
        if d.kind == "grid" or (d.kind == "choice" and cfg.tune.search == "grid"):
            n *= len(d.values)
    return n


def write_outputs(
    grid: Any,
    cfg: ExperimentConfig,
    base: dict[str, Any],
    dims: dict[str, Dimension],
    metric: str,
    exp_dir: Path | str,
    seconds: float,
) -> TuneResult:
    """Results table, best.yaml and the best trial's bundle, from a Tune ResultGrid.

    `exp_dir` may be a storage URI: the table and best.yaml are written in a local staging folder
    and uploaded; Tune's experiment state is read back from there.
    """
    if not store.is_uri(str(exp_dir)):
        return _write_outputs(grid, cfg, base, dims, metric, Path(exp_dir), Path(exp_dir), seconds)
    with tempfile.TemporaryDirectory(prefix="creagen-tune-") as tmp:
        state, out = Path(tmp) / "state", Path(tmp) / "out"
        fs, inner = store.resolve(str(exp_dir))
        state.mkdir()
        for info in fs.get_file_info(pafs.FileSelector(inner)):
            if info.base_name.startswith("experiment_state-"):
                pafs.copy_files(info.path, str(state / info.base_name), source_filesystem=fs)
        result = _write_outputs(grid, cfg, base, dims, metric, state, out, seconds, bundle_at=str(exp_dir))
        store.upload_dir(out, str(exp_dir))

    def at(p: Path | str | None) -> str | None:
        return None if p is None or store.is_uri(str(p)) else store.join(str(exp_dir), Path(p).name)

    result.experiment_dir, result.results_parquet, result.results_csv = exp_dir, at(result.results_parquet), at(result.results_csv)
    result.best_config_path = at(result.best_config_path)
    return result


def _write_outputs(
    grid: Any,
    cfg: ExperimentConfig,
    base: dict[str, Any],
    dims: dict[str, Dimension],
    metric: str,
    state_dir: Path,
    exp_dir: Path,
    seconds: float,
    bundle_at: str | None = None,
) -> TuneResult:
    from creagen_ray.data import prepare_data

    mode = cfg.tune.mode
    rows = rank_rows(trial_rows(grid, metric, mode, list(dims), state_dir), mode)
    df = table(rows, metric)
    pq, csv = write_table(df, exp_dir)
    # finished as the saved experiment state says (after Ctrl-C Tune marks the trials it stops TERMINATED
    # in memory only: with every trial started, the grid's counts would call the search complete)
    finished = sum(r.status in ("TERMINATED", "STOPPED", "ERROR") for r in rows)
    interrupted = finished < expected_trials(cfg, dims)
    best_row = rows[0] if rows and rows[0].final is not None and rows[0].status != "ERROR" else None
    best_cfg_path = bundle = None
    if interrupted:  # a best of a partial search is no answer; drop one a previous run left
        best_row = None
        (exp_dir / "best.yaml").unlink(missing_ok=True)
        shutil.rmtree(exp_dir / "best_bundle", ignore_errors=True)
    if best_row is not None:
        best_result = next(r for r in grid if trial_id_of(grid, r) == best_row.trial_id)
        best_cfg = sampled_config(base, {k: best_result.config[k] for k in dims}, forced_settings(cfg))
        best_cfg_path = exp_dir / "best.yaml"
        best_cfg_path.write_text(dump_config(best_cfg), encoding="utf-8")
        if best_result.checkpoint is not None:
            prepared = prepare_data(best_cfg.data, storage_path=storage_uri(cfg.train.storage_path))  # cached
            family = family_from_checkpoint(best_result.checkpoint, best_cfg, prepared)
            metrics = {metric: best_row.final, "trial_id": best_row.trial_id, "search": cfg.name}
            bundle = write_bundle(family, store.join(bundle_at or str(exp_dir), "best_bundle"), metrics, prepared.manifest)
    return TuneResult(
        name=cfg.name,
        experiment_dir=exp_dir,
        metric=metric,
        mode=mode,
        table=df,
        results_parquet=pq,
        results_csv=csv,
        best_config_path=best_cfg_path,
        bundle_path=bundle if bundle is None or store.is_uri(str(bundle)) else Path(bundle),
        best_trial_id=best_row.trial_id if best_row else None,
        seconds=seconds,
        dims={p: d.describe() for p, d in dims.items()},
        interrupted=interrupted,
    )


def tune_from_file(
    path: str | Path, overrides: list[str] | None = None, *, resume: bool = False, address: str | None = None
) -> TuneResult:
    """`creagen tune CONFIG [--set k=v] [--resume]`: read the YAML (with its search space) and search."""
    return run_search(read_config(path, overrides), resume=resume, address=address)


__all__ = ["run_search", "to_domain", "tune_from_file", "write_outputs"]
