"""Ray Tune around the Ray Train loop: ASHA ranking, failures, interrupt + resume, PBT exploits.

Real Ray (the session `ray_cluster`), tiny char GRUs on the embedded python-docs text, one Train
worker per trial (0.2 CPU). The PBT search runs in a thread beside the ASHA search, in one driver on
one cluster (2 trials each at once, 4 Train workers: 0.8 logical CPUs, the rest for Ray Data's
tasks): most of a trial's time is Train start-up waiting, so the two overlap well; and two searches
in one process must not run each other's trials (Tune keys a driver's trainables by name). The
ASHA search trains the test-only "diverging" bigram family (tests/faults.py): one sampled lr turns
its loss NaN, through the real backward pass, so the divergence is the loop's own detection, not a
hook in it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ray.tune import Callback

from creagen_ray.config import ConfigError, load_config
from tests import faults  # noqa: F401  (registers the "diverging" family before the session's Ray starts)

pytestmark = pytest.mark.slow

SANE, ABSURD, DIVERGES = 3e-2, 1e-7, 1e-2  # Adam lrs for the bigram table of the ASHA search


def tiny_rnn(storage: Path, name: str, **tune: Any) -> dict[str, Any]:
    """A raw config (search space included) for a 1-worker tiny GRU run of 30 steps."""
    return {
        "name": name,
        "data": {"source": "builtin:python-docs", "modality": "text", "seq_len": 32, "max_items": 60000},
        "model": {"family": "rnn", "embed_dim": 16, "hidden_size": 64, "num_layers": 1},
        "optimizer": {"name": "adam", "lr": 2e-3},
        "train": {
            "num_workers": 1,
            "cpus_per_worker": 0.2,
            "batch_size": 32,
            "steps": 30,
            "eval_every": 10,
            "eval_batches": 4,
            "checkpoint_every": 10,
            "log_every": 10,
            "storage_path": str(storage),
        },
        "tune": {"max_concurrent_trials": 2, **tune},
    }


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One storage folder for the module: the data is prepared once."""
    return tmp_path_factory.mktemp("tune-storage")


@pytest.fixture(scope="module")
def pbt_search(ray_cluster, storage: Path) -> Future:
    """The PBT search of test_pbt_exploit_..., started in a thread (it runs beside the ASHA search)."""
    from creagen_ray.config import validate_config
    from creagen_ray.data import prepare_data
    from creagen_ray.tuning import run_search

    # both searches read the same prepared data: prepare it once here, not twice at the same moment
    prepare_data(validate_config(tiny_rnn(storage, "data")).data, storage_path=str(storage))
    raw = tiny_rnn(storage, "pbt", scheduler="pbt", perturbation_interval=2, num_samples=2)
    raw["optimizer"]["lr"] = {"loguniform": [1e-4, 2e-2]}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pbt-search") as pool:
        future = pool.submit(run_search, raw, verbose=0)
        yield future
        future.exception()  # wait for it, whatever the tests did


def test_invalid_space_is_refused_before_any_trial(storage: Path) -> None:
    """No Ray work at all: the error names the field, and no experiment folder appears."""
    from creagen_ray.tuning import run_search

    raw = tiny_rnn(storage, "bad")
    raw["optimizer"]["lr"] = {"loguniform": [-1, 1]}
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        run_search(raw)
    gan = tiny_rnn(storage, "bad-gan")
    gan.update(model={"family": "gan"}, data={"source": "builtin:shapes", "modality": "image"})
    gan["loss"] = {"name": {"choice": ["bce", "mse"]}}
    with pytest.raises(ConfigError, match=r"loss\.name='mse'"):
        run_search(gan)
    assert not (storage / "tune").exists()


class _InterruptOnce(Callback):
    """Sends this process SIGUSR1 (what Ctrl-C does to Tune) once a trial has completed and one has
    failed, whichever comes last (the failure's error reaches Tune only once its Train run has torn down,
    which under load can be after the sane trial's end).

    Tuner.restore brings the callback back from the experiment state: the class flag keeps it from
    firing a second time.
    """

    fired = False
    completed = errored = False

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        type(self).completed = True
        self._fire()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        type(self).errored = True
        self._fire()

    def _fire(self) -> None:
        cls = type(self)
        if cls.completed and cls.errored and not cls.fired:
            cls.fired = True
            os.kill(os.getpid(), signal.SIGUSR1)


def _result_rows(exp_dir: Path) -> dict[str, int]:
    """Reported results per trial id, read from each trial's result.json."""
    out = {}
    for f in exp_dir.glob("*/result.json"):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        if lines:
            out[lines[0]["trial_id"]] = len(lines)
    return out


@pytest.mark.filterwarnings("ignore:Consider boosting PBT performance")  # the PBT search beside it: reuse_actors=False
def test_asha_search_ranks_failures_and_resumes(ray_cluster, storage: Path, pbt_search: Future) -> None:
    """3 trials (lr grid) under ASHA, one diverging, interrupted after the first finishes, then resumed,
    while the PBT search runs in a thread of the same driver.

    Two trials run at once, so the interrupt always leaves one unfinished; 3 trials (not 4) keep
    every check (a sane and an absurd lr ranked, a failure, resume) for one fewer Train start-up.
    The diverging lr is first in the grid: it fails at step 5, beside the sane trial, and the absurd
    one takes its place; the interrupt comes once one trial has completed and the failure is recorded,
    so the absurd (or the sane) trial is mid-run: the resume re-runs that one trial only (4 Train runs
    in all; with the diverging trial last it was started before the interrupt and again after it: 5).
    The interrupt (SIGUSR1) reaches the search in the main thread only: Tune installs its handler
    there, and the PBT search in its thread runs on.
    """
    from creagen_ray.tuning import run_search

    raw = tiny_rnn(storage, "asha", scheduler="asha", grace_period=1, num_samples=1)
    raw["model"] = {"family": "diverging", "nan_at_step": 5, "nan_lr": DIVERGES}
    raw["optimizer"]["lr"] = {"grid": [DIVERGES, SANE, ABSURD]}  # the failure first: see the docstring
    assert not pbt_search.done(), f"the PBT search ended before this one began: {pbt_search.exception()}"
    t0 = time.perf_counter()
    first = run_search(raw, callbacks=[_InterruptOnce()], verbose=0)
    t_first = time.perf_counter() - t0
    exp_dir = first.experiment_dir
    statuses = dict(zip(first.table["trial_id"], first.table["status"]))
    done_before = {t for t, s in statuses.items() if s in ("TERMINATED", "STOPPED", "ERROR")}
    # trials not started yet are not in the table of the interrupted search
    assert 1 <= len(done_before) < 3, f"the interrupt should leave trials unfinished: {statuses}"
    assert dict(zip(first.table["optimizer.lr"], first.table["status"]))[DIVERGES] == "ERROR", statuses  # before the interrupt
    # an interrupted search names no best: no best.yaml / best_bundle from a partial search
    assert first.interrupted and first.best_config_path is None and first.bundle_path is None
    assert not (exp_dir / "best.yaml").exists() and not (exp_dir / "best_bundle").exists()
    assert "interrupted" in first.summary()
    rows_before = _result_rows(exp_dir)

    t0 = time.perf_counter()
    result = run_search(raw, resume=True, verbose=0)
    t_resume = time.perf_counter() - t0
    print(f"\nfirst part {t_first:.0f} s, resume {t_resume:.0f} s\n{result.summary()}")
    df = result.table
    assert not result.interrupted
    assert len(df) == 3 and set(df["trial_id"]) >= set(statuses)
    # finished trials were not re-run: their result counts did not grow
    rows_after = _result_rows(exp_dir)
    for t in done_before:
        assert rows_after.get(t, 0) == rows_before.get(t, 0), f"trial {t} re-ran after --resume"
    by_lr = {row["optimizer.lr"]: row for _, row in df.iterrows()}
    # the diverging trial is in the table, failed, with its error; the others finished
    assert by_lr[DIVERGES]["status"] == "ERROR" and "diverged" in by_lr[DIVERGES]["error"]
    assert all(by_lr[lr]["status"] in ("TERMINATED", "STOPPED") for lr in (SANE, ABSURD))
    # ranking: the sane lr beats the absurd one, and the ranks are ordered by the final metric
    assert by_lr[SANE]["rank"] < by_lr[ABSURD]["rank"]
    assert by_lr[SANE]["val_toy_nll"] < by_lr[ABSURD]["val_toy_nll"] - 0.05
    assert by_lr[SANE]["val_toy_nll"] < 4.5  # ln(vocab) ~ 4.6 at the start: the table learned in Ray Train
    finished = df[df["status"] != "ERROR"]
    assert list(finished["val_toy_nll"]) == sorted(finished["val_toy_nll"])
    # outputs: both tables, a ready-to-train config without distributions, a bundle that loads
    assert pd.read_parquet(result.results_parquet).shape == pd.read_csv(result.results_csv).shape
    best = load_config(result.best_config_path)
    assert best.optimizer.lr == df.iloc[0]["optimizer.lr"] and best.train.steps == 30
    from creagen_ray.bundle import load_bundle

    bundle = load_bundle(result.bundle_path)
    assert bundle.family.name == "diverging"  # a family registered from a test module (the family seam)
    # the trials ran under this search's own trainable (the PBT search beside it registered its own):
    # had the names collided, these trials would have trained PBT's rnn and nothing above would hold
    assert {d.name.split("_")[0] for d in exp_dir.glob("CreagenTrial*_*") if d.is_dir()} == {"CreagenTrial-asha"}
    pbt_search.exception()  # wait for the PBT search (its own test checks it)
    # every trial's Train workers, of both searches, were released (nothing leaked a placement group)
    _assert_cpus_released(ray_cluster)


def _assert_cpus_released(ray: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= 1.99:
            return
        time.sleep(1)
    raise AssertionError(f"CPUs still held after the search: {ray.available_resources()}")


@pytest.mark.filterwarnings("ignore:Consider boosting PBT performance")  # reuse_actors=False on purpose
def test_pbt_exploit_continues_from_donor_with_its_new_lr(ray_cluster, pbt_search: Future) -> None:
    """2 trials, synch PBT after the 2nd evaluation: the loser restarts from the winner's checkpoint."""
    result = pbt_search.result()
    print("\n" + result.summary())
    histories = {}  # trial id -> its results (result.json: metrics + the config they ran with)
    for d in result.experiment_dir.glob("CreagenTrial-pbt_*"):  # trial folders named after the search
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()]
        histories[rows[0]["trial_id"]] = rows
    assert len(histories) == 2
    exploits = 0
    for target, history in histories.items():
        donor = next(t for t in histories if t != target)
        for row in history:
            if donor not in row.get("restored_from", "") or row["iterations_since_restore"] != 1:
                continue  # only the first report of a run started from the donor's checkpoint
            exploits += 1
            # the first report after the exploit: training continued from the donor's checkpoint
            # (which of the donor's checkpoints was cloned varies with timing, and a donor that was
            # itself exploited later may restart its result log, so check what the run reports)
            assert row["start_step"] > 0 and row["start_step"] % 10 == 0  # a checkpoint, not step 0
            assert row["step"] == row["start_step"] + 10
            # ... with the trial's NEW lr in the optimizer's param group (what the loop reports live),
            # which differs from the lr the donor trained with at that step
            new_lr = row["config"]["optimizer.lr"]
            assert row["lr"] == pytest.approx(new_lr, rel=1e-6)
            donor_lrs = [r["config"]["optimizer.lr"] for r in histories[donor] if r["step"] == row["start_step"]]
            for donor_lr in donor_lrs:
                assert new_lr != pytest.approx(donor_lr, rel=1e-9)
    assert exploits >= 1, "PBT never exploited"
    assert set(result.table["status"]) == {"TERMINATED"}
    _assert_cpus_released(ray_cluster)
