"""Training that survives its own failures, and a CLI that says what went wrong (issue 14, defect 6).

No Ray cluster here: checkpoints are plain folders read through ray.train.Checkpoint, and the CLI
errors are raised by real commands that fail before any cluster work. A RayTrainWorker SIGKILLed
mid-run (the worker group restarts from the last checkpoint) is checked on a real run by
tests/test_training.py, through `training.train`, which `creagen train` calls with this default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from creagen_ray.config import TrainConfig
from creagen_ray.training.checkpoint import CheckpointError, load_newest_readable, save_checkpoint


def test_max_failures_defaults_to_a_few_restarts() -> None:
    """Losing one worker must not end a run by default; the description says what the default is."""
    field = TrainConfig.model_fields["max_failures"]
    assert TrainConfig().max_failures == 3
    assert "default 3" in field.description


def test_corrupt_latest_checkpoint_falls_back_to_newest_readable(tmp_path: Path, caplog) -> None:
    """A truncated latest state.pt: the newest intact sibling is used, and the warning names both."""
    import ray.train

    run = tmp_path / "run"
    for i, stamp in enumerate(["2026-01-01_00-00-01.000000", "2026-01-01_00-00-02.000000", "2026-01-01_00-00-03.000000"]):
        save_checkpoint(run / f"checkpoint_{stamp}", {"step": 10 * (i + 1), "w": torch.ones(3) * i})
    newest = run / "checkpoint_2026-01-01_00-00-03.000000"
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 2])  # truncated, as a crash mid-copy leaves it

    with caplog.at_level(logging.WARNING, logger="creagen_ray.training.checkpoint"):
        state, used = load_newest_readable(ray.train.Checkpoint(str(newest)))
    assert state["step"] == 20  # the newest readable one, not the oldest
    assert Path(used.path).name == "checkpoint_2026-01-01_00-00-02.000000"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(newest) in warning and "checkpoint_2026-01-01_00-00-02.000000" in warning

    intact = ray.train.Checkpoint(str(run / "checkpoint_2026-01-01_00-00-01.000000"))
    assert load_newest_readable(intact)[0]["step"] == 10  # a readable latest is used as it is

    for d in run.iterdir():  # none readable: the original error, naming the latest
        (d / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="00-00-03"):
        load_newest_readable(ray.train.Checkpoint(str(newest)))


def _args(command: str, verbose: bool = False):
    import argparse

    return argparse.Namespace(command=command, verbose=verbose)


def test_cli_known_failure_is_one_line_plus_log(capsys) -> None:
    """A known runtime failure: exit 1, one clear message naming a log that holds the traceback."""
    from creagen_ray.cli import build_parser, run_handler
    from creagen_ray.training.trainer import NonFiniteLossError

    def diverges(args):
        raise NonFiniteLossError(7, "loss is NaN/Inf at step 7", {"loss": float("nan")})

    assert run_handler(diverges, _args("train")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    first, second = err.strip().splitlines()
    assert first.startswith("creagen train: training diverged") and "step 7" in first
    log = Path(second.split("full traceback: ")[1].split()[0])
    assert "Traceback" in log.read_text() and "NonFiniteLossError" in log.read_text()

    def corrupt(args):
        raise CheckpointError("/runs/x/checkpoint_1/state.pt: unreadable checkpoint")

    assert run_handler(corrupt, _args("train", verbose=True)) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "checkpoint_1/state.pt" in err.splitlines()[-2]

    def interrupted(args):
        raise KeyboardInterrupt

    assert run_handler(interrupted, _args("tune")) == 130

    def bug(args):
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_handler(bug, _args("train"))
    # --verbose is accepted before and after the subcommand
    assert build_parser().parse_args(["--verbose", "config", "schema"]).verbose
    assert build_parser().parse_args(["config", "schema", "--verbose"]).verbose
    assert not build_parser().parse_args(["config", "schema"]).verbose


def test_cli_worker_group_failure_names_the_cause(capsys) -> None:
    """Ray Train's own failure (a worker lost past max_failures): the worker's error, not a gloo traceback."""
    import ray.train

    from creagen_ray.cli import run_handler

    def lost(args):
        raise ray.train.WorkerGroupError(
            "Training failed due to worker errors", {0: RuntimeError("Connection closed by peer\nActorDiedError: worker 0 died")}
        )

    assert run_handler(lost, _args("train")) == 1
    err = capsys.readouterr().err
    assert "train.max_failures" in err and "ActorDiedError: worker 0 died" in err
