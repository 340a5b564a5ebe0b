"""train.tracking: the --tracking flag, and TensorBoard event files.

A real Ray Train run logging to a local MLflow store, read back with MLflow's client, rides on the
RNN DDP run of tests/test_training.py (test_rnn_ddp_bundle_resume_and_worker_kill), which pays Ray
Train's start-up anyway.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from creagen_ray.cli import build_parser
from creagen_ray.config import load_config
from creagen_ray.training.tracking import Tracker, write_samples

ROOT = Path(__file__).resolve().parents[1]


def test_cli_tracking_flag_is_a_config_override(tmp_path: Path) -> None:
    """--tracking X == --set train.tracking=X, validated like any field."""
    args = build_parser().parse_args(["train", "jobs/configs/demo-rnn.yaml", "--tracking", "mlflow"])
    assert load_config(ROOT / args.config, args.overrides).train.tracking == "mlflow"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "x.yaml", "--tracking", "wandb"])


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
