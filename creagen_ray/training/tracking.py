"""Experiment tracking: `train.tracking: none | mlflow | tensorboard` (`--tracking` on the CLI).

    creagen train jobs/configs/demo-rnn.yaml --tracking mlflow
    mlflow ui --backend-store-uri runs/mlruns                     # see docs/tracking.md

MLflow: one experiment per config `name`, one MLflow run per training run (same run name; a
resumed run continues its MLflow run). The store defaults to a local file store at
`<storage_path>/mlruns` (offline); `train.tracking_uri` points at a server instead. Logged:
the resolved config as params, every report's rank-0 metrics (by step) from the Ray Train
controller (a `UserCallback`, like the progress lines), then from the driver the samples
(`samples/` artifacts), the final metrics and the bundle URI (tag and param `bundle_uri`).

TensorBoard: event files (tensorboardX) under `<storage_path>/<run>/tensorboard`: scalars per
report (one small file each), then the sample grid (images) or texts and the bundle URI as text.

Tune uses Ray's own loggers on top of each trial's training: `MLflowLoggerCallback` (same store,
experiment `<name>-tune`, one MLflow run per trial) or `TBXLoggerCallback` (event files in each
trial's folder). See `tune_callbacks`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from creagen_ray.config import ExperimentConfig

FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"  # MLflow 3 refuses file stores unless this is set


def tracking_uri(cfg: ExperimentConfig) -> str:
    """train.tracking_uri, else a file store at <storage_path>/mlruns (local storage paths only)."""
    if cfg.train.tracking_uri:
        return cfg.train.tracking_uri
    path = cfg.train.storage_path
    if "://" in path:
        raise ValueError(
            f"train.tracking=mlflow with storage_path {path}: MLflow's file store is local; "
            "set train.tracking_uri (an MLflow server or sqlite:///...)"
        )
    return Path(path).expanduser().resolve().joinpath("mlruns").as_uri()


def _client(uri: str) -> Any:
    if uri.startswith("file:"):
        os.environ.setdefault(FILE_STORE_ENV, "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def flat_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, JSON values (500 chars max each)."""
    out: dict[str, str] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        else:
            out[prefix] = json.dumps(v)[:500]

    walk("", cfg.model_dump(mode="json"))
    return out


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a report (bools and strings dropped)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class TrackingCallback(UserCallback):
    """Ray Train controller callback: rank 0's metrics of every report to MLflow or TensorBoard."""

    def __init__(self, kind: str, target: str, run_id: str | None = None) -> None:
        self.kind = kind
        self.target = target  # MLflow tracking URI, or the TensorBoard log dir
        self.run_id = run_id
        self._sink: Any = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Log the report's numeric metrics at its step."""
        if not metrics:
            return
        values = numeric(metrics[0])
        step = int(values.pop("step", 0))
        if self.kind == "mlflow":
            from mlflow.entities import Metric

            self._sink = self._sink or _client(self.target)
            stamp = int(__import__("time").time() * 1000)
            self._sink.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])
        else:
            from tensorboardX import SummaryWriter

            # one small event file per report, closed at once: tensorboardX's flush() leaves events
            # queued in its writer thread, and the controller may exit without closing a long-lived writer
            with SummaryWriter(self.target, filename_suffix=f".step{step}") as w:
                for k, v in values.items():
                    w.add_scalar(k, v, step)


class Tracker:
    """One training run's tracking, driver side: start (params), callbacks (metrics), finish (samples, bundle)."""

    def __init__(self, cfg: ExperimentConfig, run_name: str, run_dir: str) -> None:
        self.kind = cfg.train.tracking
        self.cfg = cfg
        self.run_name = run_name
        self.run_id: str | None = None
        self.uri = tracking_uri(cfg) if self.kind == "mlflow" else None
        if self.kind == "tensorboard" and "://" in run_dir:
            raise ValueError(f"train.tracking=tensorboard writes event files locally; storage_path {run_dir} is a URI")
        self.logdir = str(Path(run_dir) / "tensorboard")

    def start(self) -> "Tracker":
        """Create (or, for a resumed run, find) the MLflow run and log the config as params."""
        if self.kind != "mlflow":
            return self
        client = _client(self.uri)
        exp = client.get_experiment_by_name(self.cfg.name)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.cfg.name)
        found = client.search_runs([exp_id], filter_string=f"tags.`mlflow.runName` = '{self.run_name}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = client.create_run(exp_id, run_name=self.run_name, tags={"creagen.family": self.cfg.model.family}).info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in flat_params(self.cfg).items()]
            for i in range(0, len(params), 100):  # MLflow caps a batch at 100 params
                client.log_batch(self.run_id, params=params[i : i + 100])
        return self

    def callbacks(self) -> list[UserCallback]:
        """The Ray Train callbacks that log each report."""
        if self.kind == "none":
            return []
        return [TrackingCallback(self.kind, self.uri if self.kind == "mlflow" else self.logdir, self.run_id)]

    def finish(self, family: Any, bundle_uri: str, metrics: dict[str, Any], spec_modality: str) -> None:
        """Log samples from the trained family, the final metrics and the bundle URI; close the run."""
        if self.kind == "none":
            return
        with tempfile.TemporaryDirectory() as tmp:
            sample = write_samples(family, spec_modality, Path(tmp))
            if self.kind == "mlflow":
                client = _client(self.uri)
                client.log_artifact(self.run_id, str(sample), "samples")
                client.set_tag(self.run_id, "bundle_uri", str(bundle_uri))
                client.log_param(self.run_id, "bundle_uri", str(bundle_uri))
                client.log_dict(self.run_id, metrics, "final_metrics.json")
                client.set_terminated(self.run_id, "FINISHED")
            else:
                from tensorboardX import SummaryWriter

                with SummaryWriter(self.logdir, filename_suffix=".final") as w:  # not the callback's file
                    if sample.suffix == ".png":
                        import numpy as np
                        from PIL import Image

                        w.add_image("samples", np.asarray(Image.open(sample).convert("RGB")), dataformats="HWC")
                    else:
                        w.add_text("samples", sample.read_text(encoding="utf-8"))
                    w.add_text("bundle_uri", str(bundle_uri))

    def fail(self) -> None:
        """Mark the MLflow run FAILED (training raised)."""
        if self.kind == "mlflow" and self.run_id:
            _client(self.uri).set_terminated(self.run_id, "FAILED")


def write_samples(family: Any, modality: str, out: Path) -> Path:
    """A few samples of a trained family: samples.txt (text) or samples.png (a seeded grid, with provenance)."""
    from creagen_ray.config import ImageRequest, TextRequest

    if modality == "text":
        texts = family.generate(TextRequest(n=4, max_new_tokens=200, seed=0))  # at model.temperature
        path = out / "samples.txt"
        path.write_text("\n\n---\n\n".join(texts), encoding="utf-8")
        return path
    from creagen_ray.images import save_png_grid
    from creagen_ray.provenance import provenance

    req = ImageRequest(n=16, seed=0)
    return save_png_grid(family.generate(req), out / "samples.png", record=provenance(family.name, None, 0, {"n": 16}))


def tune_callbacks(cfg: ExperimentConfig) -> list[Any]:
    """Ray Tune's own loggers for the search: MLflowLoggerCallback or TBXLoggerCallback (or none)."""
    if cfg.train.tracking == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = tracking_uri(cfg)
        if uri.startswith("file:"):
            os.environ.setdefault(FILE_STORE_ENV, "true")
        return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=f"{cfg.name}-tune", save_artifact=False)]
    if cfg.train.tracking == "tensorboard":
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]
    return []
