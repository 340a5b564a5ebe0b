"""Ray Train end to end on a real local Ray (2 workers, gloo DDP, the embedded data).

Each TorchTrainer.fit costs ~20 s of fixed start-up on 2 CPUs, so every fit carries several
assertions: the RNN run checks loss, replica sync, the bundle and its checkpoint, and (train.tracking:
mlflow) the MLflow run it logged; its second run (same run name) checks resume past a corrupted latest
checkpoint and, by SIGKILLing one worker process mid-run, the FailureConfig restore. Faults come from
tests/faults.py, never from the loop. The conv VAE's DDP checks (loss falls, replicas equal, PNG grid,
tampered bundle) ride on the shipped demo-vae.yaml run, the DCGAN's (fcd falls, replicas equal, bundle
generates, FeatureNet cached) on the shipped demo-gan.yaml run (tests/test_shipped_configs.py): one Train
run fewer (~40 CPU-seconds). The NaN run trains beside the RNN run's first part (a thread, fractional CPUs: the two
runs fit the cluster's 2 CPUs at once); the RNN test waits for it before the part that kills a worker.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from creagen_ray.bundle import load_bundle
from creagen_ray.config import TextRequest, validate_config
from creagen_ray.training import MetricsLogCallback, NonFiniteLossError, load_checkpoint, train
from tests.faults import KillWorkerAfterCheckpoint  # also registers the "diverging" test family

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One storage folder for the module, so each data source is prepared once."""
    return tmp_path_factory.mktemp("train-storage")


def rnn_cfg(storage: Path, **train: Any):
    """A tiny char GRU on the embedded python-docs text."""
    return validate_config(
        {
            "name": "t",
            "data": {"source": "builtin:python-docs", "modality": "text", "seq_len": 32, "max_items": 60000},
            "model": {"family": "rnn", "embed_dim": 16, "hidden_size": 64, "num_layers": 1},
            "optimizer": {"name": "adam", "lr": 0.01},
            "train": {
                "num_workers": 2,
                "batch_size": 16,
                "eval_every": 10,
                "eval_batches": 4,
                "checkpoint_every": 10,
                "log_every": 5,
                "storage_path": str(storage),
                **train,
            },
        }
    )


def nan_cfg(storage: Path):
    """The test-only "diverging" family (tests/faults.py) in rnn_cfg's run: its loss turns NaN at step 15."""
    cfg = rnn_cfg(storage, steps=30, max_failures=1, cpus_per_worker=0.25).model_dump(mode="json")
    cfg["model"] = {"family": "diverging", "nan_at_step": 15}
    return validate_config(cfg)


@pytest.fixture(scope="module")
def nan_run(ray_cluster, storage: Path) -> Future:
    """test_nan_loss_...'s `train` call, started in a thread once the module's data is prepared (both runs read it).

    It runs beside the RNN run's first part: 2 x 0.25 CPU beside that run's 2 x 0.5 (its data is materialized: no Ray
    Data tasks need a CPU meanwhile). Each mostly waits on its own worker start-up, so the two overlap well.
    """
    from creagen_ray.data import prepare_data

    cfg = nan_cfg(storage)
    prepare_data(cfg.data, storage_path=cfg.train.storage_path)  # prepared once, before either run reads it
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nan-run") as pool:
        future = pool.submit(train, cfg, run_name="rnn-nan", progress=False)
        yield future
        future.exception()  # wait for it, whatever the tests did


def read_log(path: Path) -> list[dict[str, Any]]:
    """MetricsLogCallback lines: {"ranks": [rank0 metrics, rank1 metrics], "checkpoint": ...}."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_replicas_in_sync(log: list[dict[str, Any]]) -> None:
    """Every checkpoint report: both ranks' own parameter hashes are equal."""
    ckpts = [r for r in log if r["checkpoint"]]
    assert ckpts, "no checkpoint was reported"
    for r in ckpts:
        h0, h1 = (rank["param_hash"] for rank in r["ranks"])
        assert h0 == h1, f"DDP replicas differ at step {r['ranks'][0]['step']}: {h0} != {h1}"


def adam_steps(state: dict[str, Any], stepper: str = "main") -> int:
    """The `step` counter Adam keeps for the first parameter (continues across a resume)."""
    opt = state["family"]["steppers"][stepper]["optimizer"]["state"]
    return int(next(iter(opt.values()))["step"])


def test_rnn_ddp_bundle_resume_and_worker_kill(ray_cluster, storage: Path, tmp_path: Path, nan_run: Future) -> None:
    """2-worker DDP RNN: loss falls, replicas equal, bundle generates; re-run resumes; a killed worker restores."""
    log_a = tmp_path / "a.jsonl"
    res = train(rnn_cfg(storage, steps=20, tracking="mlflow"), run_name="rnn", progress=False,
                callbacks=[MetricsLogCallback(str(log_a))])
    log = read_log(log_a)
    first, last = log[0]["ranks"][0]["loss"], log[-1]["ranks"][0]["loss"]
    print(f"rnn loss {first:.3f} -> {last:.3f}, val_loss {res.metrics['val_loss']:.3f}")
    assert last < 0.85 * first, f"loss did not fall: {first} -> {last}"
    assert res.metrics["step"] == 20 and res.metrics["world_size"] == 2
    assert_replicas_in_sync(log)

    bundle = load_bundle(res.bundle_path)
    text = bundle.generate(TextRequest(prompt="def ", max_new_tokens=24, seed=1))
    assert len(text) == 1 and len(text[0]) == 24
    state = load_checkpoint(res.checkpoint.path)  # torch.load(weights_only=True) inside
    assert state["step"] == 20 and adam_steps(state) == 20 and len(state["rng"]) == 2
    assert_mlflow_run(storage, "t", "rnn", res.bundle_path, steps=20, log_every=5, tmp_path=tmp_path)

    # Corrupt the newest checkpoint (step 20), as a crash mid-write would: the rerun must resume from
    # the newest readable one (step 10) with a warning naming both, not fail on it forever.
    ckpts = sorted(p for p in Path(res.checkpoint.path).parent.glob("checkpoint_*") if p.is_dir())
    newest = Path(res.checkpoint.path)
    assert newest == ckpts[-1] and load_checkpoint(ckpts[-2])["step"] == 10
    (newest / "state.pt").write_bytes((newest / "state.pt").read_bytes()[:100])

    # Same run name, 30 steps: resumes at 10. A test callback SIGKILLs one worker process right after
    # the step-20 checkpoint (the rerun's first) is recorded; FailureConfig restarts from that checkpoint.
    # The callback picks the newest Train worker under the raylet: the NaN run beside the first part has ended first.
    nan_run.exception()
    marker = tmp_path / "killed"
    log_b = tmp_path / "b.jsonl"
    res2 = train(
        rnn_cfg(storage, steps=30, max_failures=1),
        run_name="rnn",
        progress=False,
        callbacks=[MetricsLogCallback(str(log_b)), KillWorkerAfterCheckpoint(20, str(marker))],
    )
    log2 = [r["ranks"][0] for r in read_log(log_b)]
    assert marker.read_text().startswith("20 [") and marker.read_text() != "20 []", "no worker was killed"
    warning = log2[0].get("resume_warning", "")
    assert str(newest) in warning and str(ckpts[-2]) in warning, f"no warning naming both: {warning!r}"
    assert log2[0]["start_step"] == 10 and log2[0]["step"] > 10, "the rerun did not resume from step 10"
    restarts = sorted({m["start_step"] for m in log2})
    trace = [(m["start_step"], m["step"]) for m in log2]
    assert restarts == [10, 20], f"expected a first attempt from 10, a restore from 20; (start, step): {trace}"
    after = [m["step"] for m in log2 if m["start_step"] == 20]
    assert after and min(after) > 20 and after[-1] == 30
    assert res2.metrics["step"] == 30
    state2 = load_checkpoint(res2.checkpoint.path)
    assert state2["step"] == 30 and adam_steps(state2) == 30, "optimizer state did not continue"
    assert state2["family"]["steppers"]["main"]["scheduler"]["last_epoch"] == 30
    assert_replicas_in_sync(read_log(log_b))
    assert load_bundle(res2.bundle_path).metrics["step"] == 30


def assert_mlflow_run(storage: Path, experiment: str, run_name: str, bundle: Path, *, steps: int, log_every: int,
                      tmp_path: Path) -> None:
    """train.tracking=mlflow: one MLflow run named like the Ray run in the default store <storage_path>/mlruns,
    read back with MLflow's client: config params, loss by step, val_loss, the samples artifact, the bundle URI."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(storage / "mlruns").as_uri())
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == run_name and run.info.status == "FINISHED"
    assert run.data.params["model.family"] == '"rnn"' and run.data.params["train.steps"] == str(steps)
    assert run.data.params["bundle_uri"] == str(bundle) == run.data.tags["bundle_uri"]
    history = client.get_metric_history(run.info.run_id, "loss")
    got = [m.step for m in history]  # a report every log_every and eval_every steps
    assert got == sorted(got) and set(range(log_every, steps + 1, log_every)) <= set(got) and got[-1] == steps, got
    assert all(m.value > 0 for m in history)
    assert "val_loss" in run.data.metrics
    (art,) = client.list_artifacts(run.info.run_id, "samples")
    sample = Path(client.download_artifacts(run.info.run_id, art.path, str(tmp_path / "dl")))
    assert sample.name == "samples.txt" and len(sample.read_text()) > 100


def test_nan_loss_stops_and_keeps_last_good_checkpoint(nan_run: Future) -> None:
    """A NaN loss at step 15 raises NonFiniteLossError naming the step; the step-10 checkpoint stays good.

    The NaN comes from the test-only "diverging" family (tests/faults.py), through its real backward pass; the
    `train` call ran in the nan_run thread."""
    with pytest.raises(NonFiniteLossError, match="step 15") as err:
        nan_run.result()
    assert err.value.step == 15
    ckpt = err.value.checkpoint
    assert ckpt is not None
    state = load_checkpoint(ckpt.path)
    assert state["step"] == 10
    weights = state["family"]["modules"]["table"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    run_dir = Path(ckpt.path).parent
    steps = sorted(load_checkpoint(p)["step"] for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert steps == [10], f"checkpoints after the NaN were written: {steps}"
