"""Issue 10 mechanisms: materialized vs streamed training data, the epoch feed, precision/recall,
class coverage, honest defaults. Fast (seconds); the timings themselves live in bench/."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from creagen_ray.config import DataConfig, ExperimentConfig, OptimizerConfig, dump_config
from creagen_ray.metrics import class_coverage, image_quality, precision_recall, random_feature_net


# -- precision / recall (Kynkäänniemi et al. 2019) ---------------------------------------------


def test_precision_recall_identical_shifted_and_collapsed():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 16, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    # another draw of the same distribution: both high
    p_same, r_same = precision_recall(real, torch.randn(600, 16, generator=g))
    assert p_same > 0.7 and r_same > 0.7
    # a shifted set: both fall
    p_shift, r_shift = precision_recall(real, torch.randn(600, 16, generator=g) + 3.0)
    assert p_shift < 0.2 and r_shift < 0.2
    # a collapsed generator (all fakes near one real point): precision stays high, recall collapses
    collapsed = real[:1] + 0.01 * torch.randn(600, 16, generator=g)
    p_col, r_col = precision_recall(real, collapsed)
    assert p_col > 0.9 and r_col < 0.05
    with pytest.raises(ValueError):
        precision_recall(real, torch.randn(10, 8))


def test_class_coverage_flags_a_single_class_set():
    uniform = class_coverage(np.arange(2000) % 10, num_classes=10)
    assert uniform["max_class_share"] == pytest.approx(0.1)
    assert uniform["classes_covered"] == 10 and uniform["class_balance_ok"] == 1.0
    single = class_coverage(np.full(2000, 3), num_classes=10)
    assert single["max_class_share"] == 1.0 and single["classes_covered"] == 1 and single["class_balance_ok"] == 0.0
    # the DCGAN: 24% nines fails the 15% bar although every class appears
    skewed = np.concatenate([np.full(480, 9), np.arange(1520) % 9])
    cov = class_coverage(skewed, num_classes=10)
    assert cov["classes_covered"] == 10 and cov["class_balance_ok"] == 0.0
    with pytest.raises(ValueError):
        class_coverage(np.array([0, 10]), num_classes=10)


def test_image_quality_reports_fcd_precision_recall():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(200, 1, 28, 28, generator=g)
    net = random_feature_net(1, seed=0)
    same = image_quality(net, real, real)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["fcd"] < 1e-3
    noise = image_quality(net, real, torch.zeros(200, 1, 28, 28))
    assert noise["fcd"] > same["fcd"] and noise["recall"] < 0.1
    assert "max_class_share" not in noise  # a random net has no classes to count


# -- honest defaults -----------------------------------------------------------------------------


def test_defaults_are_visible_and_do_not_clip():
    assert OptimizerConfig().grad_clip is None
    shown = dump_config(ExperimentConfig())
    for key in ("grad_clip: null", "materialize_mb:", "eval_batches:", "time_budget_s: null"):
        assert key in shown, key
    vae = dump_config(ExperimentConfig.model_validate({"model": {"family": "vae", "arch": "sentence"}}))
    assert "free_bits: 0.0" in vae


# -- the epoch feed ------------------------------------------------------------------------------


def test_epoch_feed_reads_the_next_epoch_ahead_and_stops():
    from creagen_ray.training.loop import _EpochFeed, torch_threads

    started: list[float] = []

    def epoch():
        started.append(time.perf_counter())
        for i in range(3):
            yield {"x": torch.tensor([i])}

    feed = _EpochFeed(epoch, min_ahead=4)
    first = [int(b["x"]) for b in feed.epoch()]
    assert first == [0, 1, 2]
    deadline = time.time() + 5
    while len(started) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert len(started) >= 2  # epoch 2's read began before the loop asked for it
    assert [int(b["x"]) for b in feed.epoch()] == [0, 1, 2]
    feed.close()
    feed._thread.join(timeout=5)
    assert not feed._thread.is_alive()

    def broken():
        yield {"x": torch.tensor([0])}
        raise OSError("shard vanished")

    bad = _EpochFeed(broken)
    with pytest.raises(OSError, match="shard vanished"):
        list(bad.epoch())
    bad.close()

    # read-ahead is bounded in bytes (at least min_ahead batches) and never two epochs ahead
    def big_epoch():
        started.append(time.perf_counter())
        for i in range(10):
            yield {"x": torch.zeros(256, dtype=torch.uint8) + i}  # 256 bytes each

    started.clear()
    small = _EpochFeed(big_epoch, max_bytes=1000, min_ahead=2)
    time.sleep(0.5)
    assert len(small._items) == 3 and small._bytes == 768  # 3 x 256 <= 1,000 bytes, a 4th would not fit
    small.close()
    started.clear()
    roomy = _EpochFeed(big_epoch, max_bytes=2**20, min_ahead=2)
    time.sleep(0.5)
    assert len(started) == 2 and roomy._ends == 2  # epochs 1 and 2 read, epoch 3 waits for the trainer
    assert [int(b["x"][0]) for b in roomy.epoch()] == list(range(10))
    deadline = time.time() + 5
    while len(started) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert len(started) == 3  # the trainer is in epoch 2 now: epoch 3 may be read
    roomy.close()
    roomy._thread.join(timeout=5)
    assert not roomy._thread.is_alive()
    assert torch_threads(0.5) == 1 and torch_threads(1.0) == 1 and torch_threads(1.5) == 2
    assert torch_threads(2.0) == 2 and torch_threads(0.5, explicit=3) == 3
    assert threading.active_count() < 50


# -- materialized below the budget, streamed above ---------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_training_dataset_materializes_below_budget_and_streams_above(tmp_path):
    import ray.data

    from creagen_ray.data import prepare_data
    from creagen_ray.training.trainer import training_dataset

    prepared = prepare_data(
        DataConfig(source="builtin:shapes", modality="image", builtin_size=200, val_fraction=0.1), str(tmp_path)
    )
    cols = ["image", "label"]
    size_mb = prepared.nbytes("train", cols) / 2**20
    assert 0 < size_mb < 10
    want = prepared.read_numpy("train", cols)
    n = prepared.num_rows("train")
    small, mode = training_dataset(prepared, cols, materialize_mb=size_mb * 2, num_workers=3)
    assert mode == "materialized" and len(small) == 3 and all(isinstance(r, ray.ObjectRef) for r in small)
    shards = ray.get(small)  # equal contiguous shards in row order, the remainder dropped
    per = n // 3
    assert [len(s["label"]) for s in shards] == [per] * 3 and len(shards[0]["image"]) == per
    for r, shard in enumerate(shards):
        assert np.array_equal(shard["label"], want["label"][r * per : (r + 1) * per])
        assert np.array_equal(shard["image"], want["image"][r * per : (r + 1) * per])
    # a worker's epochs from its shard: every row once per epoch in full batches, a new order each epoch
    from creagen_ray.training.loop import _memory_epochs

    bs = next(b for b in (8, 6, 5, 4, 3, 2, 1) if per % b == 0)  # full batches that cover the shard
    make_epoch = _memory_epochs(shards[0], {"image": torch.uint8, "label": torch.int64}, bs, torch.device("cpu"), 0, 0)
    epochs = [list(make_epoch()) for _ in range(2)]
    assert all(len(e) == per // bs and e[0]["image"].shape == (bs, *want["image"].shape[1:]) for e in epochs)
    assert epochs[0][0]["label"].dtype == torch.int64 and epochs[0][0]["image"].dtype == torch.uint8
    seen = [torch.cat([b["label"] for b in e]) for e in epochs]
    assert sorted(seen[0].tolist()) == sorted(seen[1].tolist()) and not torch.equal(seen[0], seen[1])
    assert sorted(seen[0].tolist()) == sorted(shards[0]["label"].tolist())  # every row of the shard once
    again = _memory_epochs(shards[0], {"image": torch.uint8, "label": torch.int64}, bs, torch.device("cpu"), 0, 0)
    assert torch.equal(torch.cat([b["label"] for b in again()]), seen[0])  # seeded: a restart draws the same order
    big, mode = training_dataset(prepared, cols, materialize_mb=size_mb / 2)
    assert mode == "streaming" and not isinstance(big, ray.data.dataset.MaterializedDataset)
    never, mode = training_dataset(prepared, cols, materialize_mb=0)
    assert mode == "streaming"


def test_bundle_quality_section_names_extractor_split_and_text_metrics():
    from creagen_ray.config import DataSpec, validate_config
    from creagen_ray.families import build_family
    from creagen_ray.metrics.report import quality_section
    from creagen_ray.tokenizer import CharTokenizer

    text = "def add(x, y):\n    return x + y\n" * 100
    tok = CharTokenizer.fit(text)
    ids = np.array(tok.encode(text))
    rows = np.stack([ids[i : i + 33] for i in range(0, len(ids) - 33, 32)])

    class Prepared:
        tokenizer = tok
        spec = DataSpec(modality="text", vocab_size=tok.vocab_size, seq_len=32)

        def read_numpy(self, split, cols):
            return {"tokens": rows}

    cfg = validate_config({"model": {"family": "rnn", "hidden_size": 16, "embed_dim": 8, "num_layers": 1}})
    fam = build_family(cfg, Prepared.spec, tokenizer=tok)
    q = quality_section(fam, {"val_loss": 1.0, "val_items": 20, "val_split_items": 20, "val_final": 1.0}, Prepared())
    assert q["bits_per_char"] == pytest.approx(1.0 / np.log(2))
    assert 0 < q["distinct_2"] <= 1 and 0 <= q["novelty_8gram"] <= 1 and q["samples"] == 16
    assert q["sample_temperature"] == 0.8  # drawn at the model's default, model.temperature
    assert q["whole_split"] is True and q["eval_items"] == q["split_items"] == 20

    class ImagePrepared:
        spec = DataSpec(modality="image", channels=1, image_size=28, num_classes=10)

    img = quality_section(None, {"val_fcd": 12.0, "val_precision": 0.7, "val_recall": 0.6, "val_max_class_share": 0.12,
                                 "feature_extractor": "FeatureNet X", "val_items": 1024, "val_split_items": 2000,
                                 "val_final": 0.0}, ImagePrepared())
    assert img["fcd"] == 12.0 and img["feature_extractor"] == "FeatureNet X" and img["whole_split"] is False


def test_free_bits_floor_each_latents_kl_in_the_loss():
    from creagen_ray.config import DataSpec, validate_config
    from creagen_ray.families import build_family

    spec = DataSpec(modality="text", vocab_size=12, seq_len=16)
    batch = {"tokens": torch.randint(0, 12, (8, 17), generator=torch.Generator().manual_seed(0))}
    out = {}
    for fb in (0.0, 0.5):
        torch.manual_seed(0)
        cfg = validate_config({"data": {"modality": "text"}, "model": {
            "family": "vae", "arch": "sentence", "latent_dim": 8, "hidden_size": 16, "embed_dim": 8, "free_bits": fb}})
        out[fb] = build_family(cfg, spec).train_step(batch)
    # at initialisation every latent's KL is far below 0.5 nats: the floor counts 8 x 0.5 = 4 nats
    assert out[0.0]["loss"] == pytest.approx(out[0.0]["recon"] + out[0.0]["kl"], rel=1e-5)
    assert out[0.5]["kl"] < 1.0 and out[0.5]["loss"] == pytest.approx(out[0.5]["recon"] + 4.0, rel=1e-4)


@pytest.mark.parametrize("args", [["gan.py", "--loss", "bce", "--budget", "600", "--steps", "2"], ["gan.py", "--loss", "wgan-gp"]])
def test_reference_scripts_run_to_their_budget(args, mnist_paths, tmp_path):
    """bench/reference/*.py as documented (1 s budget, or a --steps cap): samples.pt and result.json appear.

    vae.py's run to a 1 s budget (samples, -ELBO on the 2,000 evaluation images): the reference side of
    tests/test_bench_commands.py's bench/quality_per_time.py run, which makes these checks on it (a third
    subprocess here cost ~6 CPU-s)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CREAGEN_SHARED_DATA": str(mnist_paths[0].parent.parent)}
    subprocess.run([sys.executable, f"bench/reference/{args[0]}", "--budget", "1", *args[1:], "--samples", "20",
                    "--out", str(tmp_path)], cwd=root, env=env, check=True, capture_output=True, timeout=600)
    samples = torch.load(tmp_path / "samples.pt")
    assert samples.shape == (20, 1, 28, 28) and samples.dtype == torch.uint8
    result = json.loads((tmp_path / "result.json").read_text())
    if "--steps" in args:  # the cap stops it well inside the budget
        assert result["steps"] == 2 and result["train_s"] < 600
    else:
        assert result["steps"] >= 1 and result["train_s"] >= 1.0


def test_quality_per_step_scores_both_sides(mnist_paths, tmp_path):
    """bench/quality_per_step.py as its docstring shows it, cut to 2 steps: one scored row per run."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CREAGEN_SHARED_DATA": str(mnist_paths[0].parent.parent)}
    subprocess.run([sys.executable, "bench/quality_per_step.py", "vae", "--steps", "2", "--judge-steps", "5",
                    "--set", "model.base_channels=8", "--out", str(tmp_path)],
                   cwd=root, env=env, check=True, capture_output=True, timeout=600)
    row = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[-1])
    assert row["images"] == 256 and row["proj"]["steps"] == 2 and row["ref"]["steps"] == 2
    for side in ("ref", "proj"):
        assert row[side]["neg_elbo"] > 0 and row[side]["fcd"] > 0 and 0 <= row[side]["precision"] <= 1
    assert Path(row["grid"]).parent == tmp_path and Path(row["grid"]).is_file(), row["grid"]  # the grid it names
