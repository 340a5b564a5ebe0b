"""The one training loop every Ray Train worker runs, for any Family.

`train_loop_per_worker(config)` is what `TorchTrainer` calls on each worker. It knows nothing of
RNNs, VAEs or GANs: it builds the family named in the config, wraps its modules for DDP with
`ray.train.torch.prepare_model`, streams this worker's shard of the training data, and calls
`family.train_step(batch)`, `family.end_epoch()` and `family.evaluate(batches)`.

Per step every rank agrees (one tiny all-reduce) whether any rank saw a NaN/Inf loss; if so all
ranks report the failure without a checkpoint and return, so Ray Train neither retries it nor
overwrites the last good checkpoint, and the driver raises NonFiniteLossError.

Evaluation runs on rank 0 only. Periodic evaluations (every `train.eval_every` steps, in steps
and epochs mode alike) use the first `train.eval_batches` x `batch_size` rows of the validation
split, read once (pyarrow, bounded) and kept in memory so that every evaluation sees the same
held-out batches; the final evaluation of a run covers the whole split. Every evaluation reports
`val_items` (rows it covered) and `val_split_items` (rows in the split). The other ranks wait at the
next collective; rank 0's metrics are what Ray Train, Tune and the progress printer see.

Batches come from `_EpochFeed`: one thread iterates this worker's shard epoch after epoch into a
queue of up to `train.read_ahead_mb`, so the next epoch's read starts while the current one is still
being trained on. A materialized split (trainer.training_dataset) is this rank's shard taken once
from Ray's object store and shuffled in memory every epoch (`_memory_epochs`), so the next epoch
starts at once; a streamed one is Ray Train's dataset shard (`iter_torch_batches`, local shuffle
buffer). `epoch_gap_s` reports the wait between the last batch of an epoch and the first of the next.

`config` holds only JSON-able values (plus an optional checkpoint object to resume from):
    cfg          ExperimentConfig.model_dump(mode="json")
    spec         DataSpec as a dict;     tokenizer  Tokenizer.to_dict() or None
    total_steps  optimizer steps of the whole run (schedules use it)
    data_path    the prepared data directory (rank 0 reads labelled images from it for FID)
    data_mode    "materialized" (train_shards: one ObjectRef per rank, a dict of numpy columns) or
                 "streaming" (Ray Train's dataset shard "train")
    resume_from  a ray.train/ray.tune Checkpoint to start from when the run has none of its own
    stop         an actor handle with `is_set()` (a Tune trial's TrialChannel), or None: polled at
                 every report, the run ends there (all ranks together) once it is set or gone
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import tempfile
import threading
import time
from typing import Any, Iterable

import ray.train
import ray.train.torch
import numpy as np
import torch
import torch.distributed as dist

from creagen_ray.config import DataSpec, TrainConfig, validate_config
from creagen_ray.families import Family, build_family
from creagen_ray.tokenizer import tokenizer_from_dict
from creagen_ray.training.checkpoint import (
    capture_rng,
    load_newest_readable,
    load_ray_checkpoint,
    restore_rng,
    save_checkpoint,
    seed_everything,
)


# how many labelled training images rank 0 uses to fit the FID feature net, and for how long
FEATURE_NET_IMAGES = 2000
FEATURE_NET_STEPS = 200
# rows each worker keeps in its local shuffle buffer, in batches (Ray Data shuffles within it)
SHUFFLE_BATCHES = 16
# batches the feed thread may always hold ready ahead of the training step (across an epoch boundary);
# beyond them it reads ahead up to train.read_ahead_mb
FEED_AHEAD = 4
# how long rank 0 waits for the stop signal's answer before training on (asked again next report)
STOP_POLL_TIMEOUT_S = 10.0


def torch_threads(cpus_per_worker: float, explicit: int | None = None) -> int:
    """Intra-op threads per worker: `explicit`, else cpus_per_worker rounded half up, at least 1."""
    return explicit or max(1, int(math.floor(cpus_per_worker + 0.5)))


class _EpochFeed:
    """Batches of consecutive epochs, read by one background thread into a queue bounded in bytes.

    `epoch()` yields one epoch's batches. The thread moves on to the next epoch as soon as the
    current one's last batch is queued, and it may hold up to `max_bytes` of batches (always at
    least `min_ahead`) ahead of the training step: for a streamed split, the next epoch's Ray Data
    start-up (seconds: tasks, the local shuffle buffer) then overlaps the training of the current
    epoch's last batches instead of stalling the step after them. It starts an epoch only while the
    training step is in the one before it (never two epochs ahead). `close()` stops the thread.
    """

    _END = object()

    def __init__(
        self,
        make_epoch: Any,
        max_bytes: int = int(TrainConfig.model_fields["read_ahead_mb"].default * 2**20),
        min_ahead: int = FEED_AHEAD,
    ) -> None:
        self._make_epoch = make_epoch
        self._max_bytes = max_bytes
        self._min_ahead = max(1, min_ahead)
        self._items: collections.deque = collections.deque()  # (item, bytes)
        self._bytes = 0
        self._ends = 0  # epochs whose last batch is queued and not yet trained on
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="creagen-epoch-feed", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        size = _nbytes(item)
        with self._cv:
            while len(self._items) >= self._min_ahead and self._bytes + size > self._max_bytes:
                if self._stop.is_set():
                    return False
                self._cv.wait(0.1)
            if self._stop.is_set():
                return False
            self._items.append((item, size))
            self._bytes += size
            self._ends += item is self._END
            self._cv.notify_all()
        return True

    def _get(self) -> Any:
        with self._cv:
            while not self._items:
                self._cv.wait()
            item, size = self._items.popleft()
            self._bytes -= size
            self._ends -= item is self._END
            self._cv.notify_all()
            return item

    def _wait_for_room(self) -> bool:
        """Block while a whole epoch is queued beyond the one being trained on; False once closed."""
        with self._cv:
            while self._ends >= 2 and not self._stop.is_set():
                self._cv.wait(0.1)
        return not self._stop.is_set()

    def _run(self) -> None:
        try:
            while self._wait_for_room():
                for batch in self._make_epoch():
                    if not self._put(batch):
                        return
                if not self._put(self._END):
                    return
        except BaseException as err:  # handed to the training thread, raised there
            self._put(err)

    def epoch(self) -> Iterable[dict[str, torch.Tensor]]:
        """This epoch's batches, in order; raises what the reading thread raised."""
        while True:
            item = self._get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading ahead (the thread is a daemon and ends at its next queue operation)."""
        self._stop.set()
        with self._cv:
            self._items.clear()
            self._bytes = self._ends = 0
            self._cv.notify_all()


def _nbytes(item: Any) -> int:
    """Bytes of a batch's tensors (0 for the end-of-epoch marker or an error)."""
    return sum(v.nbytes for v in item.values() if isinstance(v, torch.Tensor)) if isinstance(item, dict) else 0


def batch_columns(spec: DataSpec) -> dict[str, torch.dtype]:
    """Columns (and torch dtypes) a family's batches carry; selected before iterating."""
    if spec.modality == "text":
        return {"tokens": torch.int64}
    cols = {"image": torch.uint8}
    if spec.num_classes:
        cols["label"] = torch.int64
    return cols


def _memory_epochs(
    rows: dict[str, np.ndarray], columns: dict[str, torch.dtype], batch_size: int, device: torch.device,
    seed: int, first_epoch: int,
) -> Any:
    """A make_epoch for _EpochFeed over this worker's in-memory shard (a materialized split).

    Each call is the next epoch: a fresh permutation of the shard's rows (seeded by `seed` and the
    epoch, so a restarted or resumed run draws the same order), cut into full batches (drop_last).
    """
    n = len(next(iter(rows.values())))
    epoch = first_epoch

    def make_epoch() -> Iterable[dict[str, torch.Tensor]]:
        nonlocal epoch
        order = np.random.default_rng([seed, epoch]).permutation(n)
        epoch += 1
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield {c: torch.from_numpy(rows[c][idx]).to(device=device, dtype=dt) for c, dt in columns.items()}

    return make_epoch


def batch_items(batch: dict[str, torch.Tensor]) -> int:
    """Work units in a batch for throughput: predicted tokens for text, images for images."""
    if "tokens" in batch:
        t = batch["tokens"]
        return int(t.shape[0] * (t.shape[1] - 1))
    return int(batch["image"].shape[0])


def param_hash(family: Family) -> str:
    """sha256 (16 hex chars) of every parameter's bytes: equal on bit-identical DDP replicas.

    Parameters only: BatchNorm running statistics are buffers that each rank updates from its own
    batch after DDP broadcast rank 0's at the start of the forward pass, so they differ by design.
    """
    h = hashlib.sha256()
    for name in sorted(family.modules):
        for k, v in family.raw(name).named_parameters():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def params_finite(family: Family) -> bool:
    """True when no parameter holds a NaN or Inf (checked before every checkpoint)."""
    return all(bool(torch.isfinite(p).all()) for p in family.parameters())


def _prepare_model(module: torch.nn.Module) -> torch.nn.Module:
    """Ray Train's DDP wrapper without the per-forward buffer broadcast.

    DDP's default `broadcast_buffers=True` copies rank 0's buffers (BatchNorm running statistics)
    to every rank before each wrapped forward: one more collective per forward, every step. Only
    rank 0's buffers are ever used (it evaluates and checkpoints) and rank 0 never receives any,
    so its statistics, and the run's results, are the same without it.
    """
    return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"broadcast_buffers": False})


def _finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(float(v)) for v in metrics.values())


class _Dist:
    """The few collectives the loop needs, as no-ops when there is one worker."""

    def __init__(self, device: torch.device) -> None:
        self.on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.device = device

    def any(self, *flags: bool) -> bool | list[bool]:
        """Each flag, true on every rank when it is true on any rank (one all-reduce for all of them).

        One flag gives a bool, several a list (the loop asks "NaN anywhere?" and "budget spent
        anywhere?" in one collective per step).
        """
        if self.on:
            t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flags = tuple(v > 0 for v in t.tolist())
        return bool(flags[0]) if len(flags) == 1 else [bool(f) for f in flags]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, indexed by rank."""
        if not self.on:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out


class _Window:
    """Running sums of step metrics, items and data-wait time between two reports."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.items = 0
        self.wait_s = 0.0
        self.t0 = time.perf_counter()

    def add(self, metrics: dict[str, float], items: int, wait_s: float) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.steps += 1
        self.items += items
        self.wait_s += wait_s

    def summary(self) -> dict[str, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        out["items_per_s"] = self.items / dt
        out["steps_per_s"] = self.steps / dt
        out["data_wait_share"] = self.wait_s / dt
        return out


def _restore(family: Family, config: dict[str, Any], rank: int, world: int) -> tuple[dict[str, Any] | None, str]:
    """Load Ray Train's own latest checkpoint, else the explicit resume_from one; (None, "") = fresh.

    The string is a warning when the latest checkpoint was unreadable and an older one was used
    (it names both; the loop reports it so the driver shows it).

    The run's own checkpoint wins when it descends from the same explicit seed (a worker-failure
    restart or a plain re-run); an explicit checkpoint that this run has not started from yet
    (a PBT donor) wins over an older own checkpoint.
    """
    explicit = config.get("resume_from")
    seed_path = str(explicit.path) if explicit is not None else None
    own = ray.train.get_checkpoint()
    state, warning = None, ""
    if own is not None:
        state, used = load_newest_readable(own)  # a corrupt latest: the newest readable older one
        if used is not own:
            warning = f"the latest checkpoint {own.path} is unreadable; resumed from {used.path} (step {state.get('step')})"
    if state is not None and explicit is not None and state.get("seeded_from") != seed_path:
        state = None  # our own checkpoint predates the explicit one we were given now
    source = "own"
    if state is None and explicit is not None:
        state, source = load_ray_checkpoint(explicit), "explicit"
    if state is None:
        return None, ""
    family.load_state_dict(state["family"])
    rngs = state.get("rng") or []
    if len(rngs) == world:
        restore_rng(rngs[rank])
    else:  # a different world size: fresh per-rank streams, still deterministic
        seed_everything(family.cfg.train.seed + 1000 * (family.step + 1) + rank)
    if source == "explicit":
        # a donor's checkpoint carries the donor's optimizer settings: apply this run's own
        family.set_optimizer_hyperparameters(family.cfg)
    return state, warning if source == "own" else ""


def _attach_feature_net(family: Family, data_path: str | None, spec: DataSpec) -> None:
    """GAN-style families: fit the FID feature classifier on labelled train images (rank 0), cached with the data.

    The net depends only on the prepared data and the seed, so it is kept next to the data
    (`<data>/feature_net/<key>.safetensors`, key: the manifest's source checksum and config, the
    image count, steps and seed): later runs and every Tune trial on the same data load it instead
    of training it again (seconds of one CPU each). An unreadable cache file is trained anew and
    replaced; a data folder that cannot be written to only means no cache.
    """
    if not hasattr(family, "feature_net") or not spec.num_classes or not data_path:
        return
    from creagen_ray.data import load_prepared
    from creagen_ray.metrics import feature_net_bytes, feature_net_from_bytes, train_feature_net

    prepared = load_prepared(data_path)
    seed = family.cfg.train.seed
    n_images = min(FEATURE_NET_IMAGES, prepared.num_rows("train"))

    def build() -> tuple[Any, bytes]:
        rows = prepared.read_numpy("train", ["image", "label"])  # pyarrow, no Ray tasks
        images = torch.as_tensor(rows["image"][:FEATURE_NET_IMAGES])
        labels = torch.as_tensor(rows["label"][:FEATURE_NET_IMAGES]).long()
        net = train_feature_net(images, labels, num_classes=spec.num_classes, steps=FEATURE_NET_STEPS, seed=seed)
        return net, feature_net_bytes(net)

    net = prepared.cached("feature_net", [FEATURE_NET_IMAGES, FEATURE_NET_STEPS, seed], feature_net_from_bytes, build)
    family.feature_net = net.to(family.device)
    family.feature_extractor = feature_extractor_name(n_images)


def feature_extractor_name(n_images: int, steps: int = FEATURE_NET_STEPS) -> str:
    """What the image metrics (fcd, precision, recall, coverage) were computed with, for metrics.json."""
    return (
        f"creagen FeatureNet classifier ({steps} steps on {n_images} labelled training images); "
        "fcd is a Frechet classifier distance, not Inception FID"
    )


def _val_batches(
    data_path: str, spec: DataSpec, n_batches: int | None, batch_size: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """The first n_batches x batch_size validation rows (None: all of them) as batches, read once (rank 0).

    A bounded read with pyarrow straight from the prepared shards: starting a Ray Data pipeline
    for a few hundred rows costs seconds of start-up, this costs milliseconds.
    """
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (registers the tensor extension types of the shards)

    from creagen_ray.data import load_prepared

    prepared = load_prepared(data_path)
    columns = batch_columns(spec)
    want = prepared.num_rows("val") if n_batches is None else n_batches * batch_size
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    have = 0
    for f in prepared.files("val"):
        for rb in pq.ParquetFile(str(f), filesystem=prepared.filesystem).iter_batches(batch_size=max(1, min(want, 4096)), columns=list(columns)):
            for c in columns:
                parts[c].append(rb.column(c).to_numpy(zero_copy_only=False))
            have += rb.num_rows
            if have >= want:
                break
        if have >= want:
            break
    if have == 0:
        return []
    rows = {c: torch.as_tensor(np.concatenate(v)[:want]).to(dt) for (c, v), dt in zip(parts.items(), columns.values())}
    return [
        {c: v[i : i + batch_size].to(device) for c, v in rows.items()}
        for i in range(0, min(have, want), batch_size)
    ]


def _evaluate(family: Family, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """family.evaluate under no_grad, then back to train mode; prefixes nothing (families name val_*)."""
    with torch.no_grad():
        metrics = family.evaluate(batches)
    family.train(True)
    return {k: float(v) for k, v in metrics.items()}


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train one Family on this worker's data shard with DDP; report, checkpoint, evaluate.

    Returns (rank 0's is Result.return_value) {"step", "nonfinite": bool, "what", "metrics"}: in
    Train V2 Result.metrics are those of the last *checkpoint*, so a divergence that wrote none
    must travel in the return value.
    """
    cfg = validate_config(config["cfg"])
    spec = DataSpec.model_validate(config["spec"])
    tokenizer = tokenizer_from_dict(config["tokenizer"]) if config.get("tokenizer") else None
    total_steps = int(config["total_steps"])
    stop = config.get("stop")
    t = cfg.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(torch_threads(t.cpus_per_worker, t.torch_threads))
    device = ray.train.torch.get_device()
    seed_everything(t.seed + rank)

    family = build_family(cfg, spec, device=device, total_steps=total_steps, tokenizer=tokenizer)
    restored, resume_warning = _restore(family, config, rank, world)
    seeded_from = str(config["resume_from"].path) if config.get("resume_from") is not None else None
    family.wrap_modules(_prepare_model)
    family.train(True)
    comm = _Dist(device)

    start_step = family.step
    epoch = int(restored["epoch"]) if restored else 0
    columns = batch_columns(spec)
    shards = config.get("train_shards")  # a materialized split: this rank's rows, once (trainer.training_dataset)
    shard = None if shards is not None else ray.train.get_dataset_shard("train")
    val: list[dict[str, torch.Tensor]] | None = None
    val_full: list[dict[str, torch.Tensor]] | None = None
    last_val: dict[str, float] = {}
    gaps: list[float] = []  # seconds between the last batch of an epoch and the first of the next
    window = _Window()
    t_start = time.perf_counter()

    def done() -> bool:
        return family.step >= total_steps if t.epochs is None else epoch >= t.epochs

    def evaluate(final: bool = False) -> dict[str, float]:
        """Periodic: the fixed eval_batches subset; final: the whole validation split."""
        nonlocal val, val_full, last_val
        if rank == 0:
            if val is None:
                _attach_feature_net(family, config.get("data_path"), spec)
                val = _val_batches(config["data_path"], spec, t.eval_batches, t.batch_size, device)
            if final and val_full is None:
                val_full = _val_batches(config["data_path"], spec, None, t.batch_size, device)
            batches = val_full if final else val
            if batches:
                last_val = _evaluate(family, batches)
                last_val["val_step"] = family.step
                last_val["val_items"] = sum(int(next(iter(b.values())).shape[0]) for b in batches)
                last_val["val_split_items"] = int(config.get("val_rows") or last_val["val_items"])
                last_val["val_final"] = float(final)
                if getattr(family, "feature_extractor", None):
                    last_val["feature_extractor"] = family.feature_extractor  # type: ignore[assignment]
        return last_val

    def report(checkpoint: bool) -> bool:
        """Every rank reports; rank 0 attaches a checkpoint. False when the weights went NaN/Inf."""
        metrics = {
            **window.summary(),
            **last_val,
            "step": family.step,
            "epoch": epoch,
            "total_steps": total_steps,
            "start_step": start_step,
            "time_s": time.perf_counter() - t_start,
            "lr": next(iter(family.steppers.values())).lr,
            "world_size": world,
            "data_mode": str(config.get("data_mode", "streaming")),
        }
        if resume_warning:
            metrics["resume_warning"] = resume_warning
        if gaps:
            metrics["epoch_gap_s"] = gaps[-1]
            metrics["epoch_gap_max_s"] = max(gaps)
        window.reset()
        if not checkpoint:
            ray.train.report(metrics)
            return True
        if comm.any(not params_finite(family)):
            stop_nonfinite(metrics, f"parameters hold NaN/Inf at step {family.step}")
            return False
        hashes_rngs = comm.gather((param_hash(family), capture_rng()))
        hashes = [h for h, _ in hashes_rngs]
        metrics["replicas_in_sync"] = float(len(set(hashes)) == 1)
        metrics["param_hash"] = hashes[rank]
        metrics["param_hashes"] = ",".join(hashes)
        if rank != 0:
            ray.train.report(metrics)
            return True
        state = {
            "step": family.step,
            "epoch": epoch,
            "family": family.state_dict(),
            "rng": [r for _, r in hashes_rngs],
            "config": cfg.model_dump(mode="json"),
            "spec": spec.model_dump(mode="json"),
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
            "seeded_from": seeded_from,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        with tempfile.TemporaryDirectory(prefix="creagen-ckpt-") as d:
            save_checkpoint(d, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        return True

    outcome: dict[str, Any] = {"nonfinite": False, "what": "", "metrics": {}}

    def stop_nonfinite(metrics: dict[str, Any], what: str) -> None:
        """Every rank reports the failure (no checkpoint); the driver turns it into an error."""
        metrics = {**metrics, "nonfinite": 1.0, "nonfinite_step": family.step, "nonfinite_what": what}
        outcome.update(nonfinite=True, what=what, metrics=metrics)
        ray.train.report(metrics)

    def stop_requested() -> bool:
        """True on every rank once the run's stop signal is set (rank 0 asks it; one all-reduce)."""
        if stop is None:
            return False
        asked = False
        if rank == 0:
            try:
                asked = bool(ray.get(stop.is_set.remote(), timeout=STOP_POLL_TIMEOUT_S))
            except ray.exceptions.GetTimeoutError:
                asked = False  # busy: ask again at the next report
            except ray.exceptions.RayActorError:
                asked = True  # the trial that holds the signal is gone: nobody waits for this run
        return comm.any(asked)

    def read_epoch() -> Iterable[dict[str, torch.Tensor]]:
        return shard.iter_torch_batches(
            batch_size=t.batch_size,
            dtypes=columns,
            device=device,
            drop_last=True,
            prefetch_batches=2,
            local_shuffle_buffer_size=SHUFFLE_BATCHES * t.batch_size,
        )

    ok = not done()
    if ok and shards is not None:
        make_epoch = _memory_epochs(ray.get(shards[rank]), columns, t.batch_size, device, t.seed + rank, epoch)
    else:
        make_epoch = read_epoch
    feed = _EpochFeed(make_epoch, max_bytes=int(t.read_ahead_mb * 2**20)) if ok else None
    t_epoch_end: float | None = None  # when the last batch of the previous epoch was done with
    try:
        while ok:
            batches = 0
            t_wait = time.perf_counter()
            for batch in feed.epoch():
                now = time.perf_counter()
                wait_s = now - t_wait
                if batches == 0 and t_epoch_end is not None:
                    gaps.append(now - t_epoch_end)
                metrics = family.train_step(batch)
                batches += 1
                window.add(metrics, batch_items(batch), wait_s)
                spent = t.time_budget_s is not None and time.perf_counter() - t_start >= t.time_budget_s
                nonfinite, spent = comm.any(not _finite(metrics), spent)
                if nonfinite:
                    bad = ", ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
                    stop_nonfinite({**window.summary(), **metrics}, f"loss is NaN/Inf at step {family.step}: {bad}")
                    ok = False
                    break
                step = family.step
                is_last = (t.epochs is None and step >= total_steps) or spent
                do_eval = step % t.eval_every == 0 or is_last
                do_ckpt = step % t.checkpoint_every == 0 or is_last
                if do_eval:
                    evaluate(final=is_last)
                if do_eval or do_ckpt or step % t.log_every == 0:
                    ok = report(checkpoint=do_ckpt) and not stop_requested()
                if is_last or not ok:
                    ok = False  # a steps-run ends mid-epoch: no end_epoch (gd would step on a partial epoch)
                    break
                t_wait = time.perf_counter()
            if not ok:
                break
            if batches == 0:
                raise RuntimeError(
                    f"worker {rank} got no full batch of {t.batch_size} rows from its training shard: "
                    "lower train.batch_size or use more data"
                )
            family.end_epoch()  # full-batch `gd` takes its one step here
            epoch += 1
            t_epoch_end = time.perf_counter()
            if done():  # epochs mode: the final evaluation (whole split) and checkpoint
                evaluate(final=True)
                report(checkpoint=True)
                ok = False
    finally:
        if feed is not None:
            feed.close()

    if family.step == start_step and done():
        # resumed a run that had already finished: report once so it ends with metrics and a checkpoint
        evaluate(final=True)
        report(checkpoint=True)
    return {**outcome, "step": family.step}

