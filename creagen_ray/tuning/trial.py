"""One Tune trial = one Ray Train run of the generic training loop (Train V2 inside Tune).

`CreagenTrial` is a class Trainable that builds a `TorchTrainer` with `training.build_trainer`
and fits it in a background thread; a Train `UserCallback` relays every report (metrics + the
persisted checkpoint's path) to the trial through its `TrialChannel` actor, and `step()` hands Tune one result
per evaluation (the family's validation metric at a new step).

Why not a function trainable with `TuneReportCallback` (ray/tune/integration/ray_train.py):
that callback forwards metrics only (the checkpoint path as a metric), so Tune holds no
checkpoint: PBT cannot exploit and `Tuner.restore` cannot resume a trial. And when Tune stops a
function trial (ASHA, a PBT pause) it kills the trial actor without a hook, so the Train run's
placement group outlives it (https://github.com/ray-project/ray/issues/54305; Ray's placement
group cleaner needs the dashboard's state API) and the next runs wait for CPUs. A class Trainable
has `save_checkpoint` / `load_checkpoint` (the Train checkpoint directory, copied) and
`cleanup()`, where the trial sets the stop flag of the run's `TrialChannel` (tuning/channel.py):
the training loop polls it at every report and returns, so the Train run finishes normally and Ray
Train releases its workers and placement group itself. Only public Ray APIs: `ray.train.UserCallback`
and an actor.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray import tune
from ray.train import UserCallback

from creagen_ray import storage
from creagen_ray.config import ExperimentConfig, validate_config
from creagen_ray.training import NonFiniteLossError, build_trainer, fit
from creagen_ray.tuning.channel import TrialChannel
from creagen_ray.tuning.space import resolve

STOP_TIMEOUT_S = 60.0  # a stopped run ends at its next report (train.log_every steps at most)
FINISH_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)


class _ReportRelay(UserCallback):
    """Train controller side: send each report (rank 0 metrics, checkpoint path) to the trial."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel  # the trial's TrialChannel actor

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Blocking put (queue of one): Train runs at most one report ahead of Tune."""
        ray.get(self.channel.put.remote(("report", (dict(metrics[0]), checkpoint.path if checkpoint else None))))


class TrialDiverged(RuntimeError):
    """A trial's training run stopped on a NaN/Inf loss (the message is NonFiniteLossError's)."""


def sampled_config(base: dict[str, Any], sample: dict[str, Any], forced: dict[str, Any]) -> ExperimentConfig:
    """The trial's config: base raw config + Tune's sample (+ settings the search forces)."""
    return validate_config(resolve(resolve(base, sample), forced))


class CreagenTrial(tune.Trainable):
    """A Tune trial running the Ray Train loop; one Tune result per evaluation."""

    def setup(
        self,
        config: dict[str, Any],
        base: dict[str, Any] | None = None,
        forced: dict[str, Any] | None = None,
        metric: str = "val_loss",
        storage_path: str = "",
        runs_dir: str = "",
        prepared_path: str | None = None,
    ) -> None:
        """Validate the sampled config and load (or prepare) its data; the run starts at the first step."""
        from creagen_ray.data import load_prepared, prepare_data

        self.base, self.forced, self.metric = base or {}, forced or {}, metric
        self.cfg = sampled_config(self.base, config, self.forced)
        if prepared_path:  # the driver prepared the one dataset of the search
            self.prepared = load_prepared(prepared_path)
        else:  # the space searches data fields: each trial prepares (or finds) its own
            self.prepared = prepare_data(self.cfg.data, storage_path=storage_path)
        self.runs_dir = runs_dir  # a local folder or a storage URI (the trials' Train runs)
        self._start_from: ray.train.Checkpoint | str | None = None  # PBT donor or restore, copied next to the runs
        self._restored_from = ""  # the Tune checkpoint it came from (reported, so tests can see the donor)
        self._reset_run()

    def _reset_run(self) -> None:
        self._channel: Any = None  # the run's TrialChannel actor: its reports and its stop flag
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._finished = False  # the run reported its last step
        self._last_checkpoint: str | None = None
        self._latest: dict[str, Any] = {}
        self._last_val_step = -1

    def _start(self) -> None:
        """Build the TorchTrainer for this trial and fit it in a background thread."""
        channel = TrialChannel.remote()
        run_name = f"{self.trial_id}-{time.time_ns()}"
        trainer = build_trainer(
            self.cfg,
            self.prepared,
            run_name=run_name,
            storage_path=self.runs_dir,
            callbacks=[_ReportRelay(channel)],
            resume_from_checkpoint=self._start_from,
            stop_signal=channel,
        )

        def run() -> None:
            try:
                fit(trainer)  # raises NonFiniteLossError on divergence
            except BaseException as e:  # noqa: BLE001 - re-raised in step()
                self._error = e
            finally:
                try:
                    ray.get(channel.put.remote(("end", None), FINISH_TIMEOUT_S))
                except Exception:  # noqa: BLE001 - the channel is gone: the trial is stopping
                    pass

        self._channel = channel
        self._thread = threading.Thread(target=run, name=f"fit-{run_name}", daemon=True)
        self._thread.start()

    def _is_last(self, m: dict[str, Any]) -> bool:
        t = self.cfg.train
        if t.epochs is not None:
            return int(m.get("epoch", 0)) >= t.epochs
        return int(m.get("step", 0)) >= int(m.get("total_steps", t.steps or 0))

    def step(self) -> dict[str, Any]:
        """Wait for the run's next evaluation and return it (done=True at the last step)."""
        if self._thread is None:
            self._start()
        assert self._channel is not None and self._thread is not None
        while True:
            kind, item = ray.get(self._channel.get.remote())[1]
            if kind == "end":
                self._thread.join()
                if self._latest.get("nonfinite") and self._error is None:
                    # Train V2's Result carries the last *checkpoint's* metrics, so fit() may not see
                    # the run's final NaN report; it reached us, so fail here
                    m = self._latest
                    self._error = NonFiniteLossError(int(m.get("nonfinite_step", -1)), str(m.get("nonfinite_what")), m)
                if isinstance(self._error, NonFiniteLossError):
                    # Tune copies the exception it records; this one's __init__ does not take its message
                    raise TrialDiverged(str(self._error)) from None
                if self._error is not None:
                    raise self._error
                self._finished = True
                return {**self._latest, "done": True}
            metrics, checkpoint = item
            if checkpoint:
                self._last_checkpoint = checkpoint
            self._latest.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
            self._latest["restored_from"] = self._restored_from
            step = int(metrics.get("step", -1))
            if metrics.get("nonfinite") or self.metric not in metrics:
                continue  # a diverged run ends; fit() raises and "end" carries the error
            if int(metrics.get("val_step", step)) != step or step <= self._last_val_step:
                continue  # a log/checkpoint report between evaluations
            self._last_val_step = step
            done = self._is_last(metrics)
            self._finished = done
            return {**self._latest, "done": done}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Copy the run's latest Train checkpoint (state.pt + meta.json) into Tune's directory."""
        if self._last_checkpoint:  # a path inside the runs' filesystem (local or object storage)
            fs = storage.resolve(self.runs_dir)[0]
            pafs.copy_files(self._last_checkpoint, checkpoint_dir, source_filesystem=fs)

    def load_checkpoint(self, checkpoint: str) -> None:
        """Start the next run from this checkpoint (a PBT donor's, or this trial's own on restore)."""
        if not (Path(checkpoint) / "state.pt").is_file():
            return  # saved before the run's first checkpoint: start fresh
        self._stop_run()
        keep = storage.join(self.runs_dir, f"{self.trial_id}-from-{time.time_ns()}")
        fs, inner = storage.resolve(keep)  # Tune may delete or rotate its copy: keep ours next to the runs
        fs.create_dir(inner, recursive=True)  # copy_files does not create the target folder on a local disk
        pafs.copy_files(str(checkpoint), inner, destination_filesystem=fs)
        # a local copy is handed over as its path (as before); object storage as a Checkpoint on its filesystem
        self._start_from = ray.train.Checkpoint(inner, filesystem=fs) if storage.is_uri(keep) else inner
        self._restored_from = str(checkpoint)
        self._reset_run()

    def cleanup(self) -> None:
        """Stop the Train run (it ends at its next report and releases its workers), then its channel."""
        self._stop_run()

    def _stop_run(self) -> None:
        if self._thread is None:
            return
        assert self._channel is not None
        if not self._finished:
            self._channel.set.remote()
        timeout = FINISH_TIMEOUT_S if self._finished else STOP_TIMEOUT_S
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            ray.get(self._channel.get.remote(0.2))  # drain the relay, so the Train controller is never blocked on us
        if self._thread.is_alive():
            # No public Ray API aborts a running TorchTrainer.fit from another thread; Tune now ends
            # this actor, and the run's actors with it (their placement group: ray-project/ray#54305)
            log.warning("trial %s: its Train run did not stop within %.0f s", self.trial_id, timeout)
        ray.kill(self._channel)
        self._thread = None
