"""train.tracking: a real Ray Train run logs to a local MLflow store, read back with MLflow's client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from creagen_ray.cli import build_parser
from creagen_ray.config import load_config, validate_config
from creagen_ray.training import train
from creagen_ray.training.tracking import Tracker, write_samples

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(storage: Path, tracking: str):
    """A tiny 1-worker char GRU on the embedded text, 12 steps, a report every 4."""
    return validate_config(
        {
            "name": "track",
            "data": {"source": "builtin:python-docs", "modality": "text", "seq_len": 32, "max_items": 20000},
            "model": {"family": "rnn", "embed_dim": 16, "hidden_size": 32, "num_layers": 1},
            "train": {
                "num_workers": 1, "batch_size": 16, "steps": 12, "eval_every": 6, "eval_batches": 2,
                "checkpoint_every": 12, "log_every": 4, "storage_path": str(storage), "tracking": tracking,
            },
        }
    )


def test_cli_tracking_flag_is_a_config_override(tmp_path: Path) -> None:
    """--tracking X == --set train.tracking=X, validated like any field."""
    args = build_parser().parse_args(["train", "jobs/configs/demo-rnn.yaml", "--tracking", "mlflow"])
    assert load_config(ROOT / args.config, args.overrides).train.tracking == "mlflow"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "x.yaml", "--tracking", "wandb"])


@pytest.mark.slow
def test_mlflow_store_holds_run_params_metric_history_artifact(ray_cluster, tmp_path: Path) -> None:
    """A real run: one MLflow run named like the Ray run, config params, loss by step, samples, bundle URI."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    res = train(cfg_for(tmp_path, "mlflow"), run_name="tracked", progress=False)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())  # the default store: <storage_path>/mlruns
    exp = client.get_experiment_by_name("track")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["model.family"] == '"rnn"' and run.data.params["train.steps"] == "12"
    assert run.data.params["bundle_uri"] == str(res.bundle_path) == run.data.tags["bundle_uri"]
    history = client.get_metric_history(run.info.run_id, "loss")
    steps = [m.step for m in history]  # a report every log_every (4) and eval_every (6) steps
    assert steps == sorted(steps) and {4, 8, 12} <= set(steps) and steps[-1] == 12, steps
    assert all(m.value > 0 for m in history)
    assert "val_loss" in run.data.metrics
    (art,) = client.list_artifacts(run.info.run_id, "samples")
    sample = Path(client.download_artifacts(run.info.run_id, art.path, str(tmp_path / "dl")))
    assert sample.name == "samples.txt" and len(sample.read_text()) > 100


def read_events(path: Path) -> list:
    """The Event protos of a TensorBoard event file (TFRecord: length, crc, payload, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, i, out = path.read_bytes(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        ev = Event()
        ev.ParseFromString(data[i + 12 : i + 12 + n])
        out.append(ev)
        i += 12 + n + 4
    return out


def test_tensorboard_finish_writes_event_files(tmp_path: Path) -> None:
    """Tracker(tensorboard).finish writes an event file with the sample grid (image family)."""
    from _serve_bundles import image_bundle

    from creagen_ray.bundle import load_bundle

    b = load_bundle(image_bundle(tmp_path / "gan", "gan", steps=2))
    cfg = b.cfg.model_copy(update={"train": b.cfg.train.model_copy(update={"tracking": "tensorboard"})})
    tracker = Tracker(cfg, "tb", str(tmp_path / "run"))
    (cb,) = tracker.callbacks()
    cb.after_report(None, [{"step": 1, "loss": 0.5, "nonfinite": False, "note": "x"}], None)
    tracker.finish(b.family, "bundle-uri", {}, "image")
    tags = {}
    for f in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        for ev in read_events(f):
            for v in ev.summary.value:
                tags[v.tag] = v
    assert tags["loss"].simple_value == 0.5 and "nonfinite" not in tags and "note" not in tags
    assert tags["samples"].image.width > 16 and tags["samples"].image.encoded_image_string[:4] == b"\x89PNG"
    assert any(t.startswith("bundle_uri") for t in tags)
    assert write_samples(b.family, "image", tmp_path).suffix == ".png"
