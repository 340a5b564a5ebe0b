"""Search spaces in the YAML config: parsing and up-front validation (pure, no Ray)."""

from __future__ import annotations

import sys

import pytest

from creagen_ray.config import ConfigError, validate_config
from creagen_ray.tuning.space import (
    Dimension,
    check_space,
    parse_space,
    pbt_mutations,
    resolve,
    split_space,
)

GAN = {"model": {"family": "gan"}, "data": {"modality": "image", "source": "builtin:shapes"}}


def test_split_space_separates_distributions_from_the_base():
    raw = {
        "optimizer": {"name": {"choice": ["sgd", "adam"]}, "lr": {"loguniform": [1e-4, 1e-2]}, "momentum": 0.9},
        "model": {"family": "rnn", "hidden_size": {"randint": [16, 64]}},
        "train": {"steps": 10},
    }
    base, dims = split_space(raw)
    assert set(dims) == {"optimizer.name", "optimizer.lr", "model.hidden_size"}
    assert dims["optimizer.lr"] == Dimension("optimizer.lr", "loguniform", (1e-4, 1e-2))
    # the base holds each dimension's first corner and every plain value as it was
    assert base["optimizer"] == {"name": "sgd", "lr": 1e-4, "momentum": 0.9}
    assert base["model"]["hidden_size"] == 16 and base["train"] == {"steps": 10}
    validate_config(base)
    # the raw dict is untouched
    assert raw["optimizer"]["name"] == {"choice": ["sgd", "adam"]}


def test_resolve_writes_samples_into_a_copy():
    base, _ = split_space({"optimizer": {"lr": {"uniform": [0.1, 0.2]}}})
    out = resolve(base, {"optimizer.lr": 0.15, "loss.label_smoothing": 0.1})
    assert out["optimizer"]["lr"] == 0.15 and out["loss"]["label_smoothing"] == 0.1
    assert base["optimizer"]["lr"] == 0.1 and "loss" not in base


def test_whole_sections_may_be_choices():
    raw = {"optimizer": {"choice": [{"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "adam", "lr": 1e-3}]}}
    base, dims, cfg = parse_space(raw)
    assert dims["optimizer"].kind == "choice" and cfg.optimizer.name == "sgd"


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"optimizer": {"lr": {"loguniform": [-1, 1]}}}, "optimizer.lr"),  # log of a negative bound
        ({"optimizer": {"lr": {"uniform": [0.0, 0.1]}}}, "optimizer.lr"),  # lr must be > 0
        ({"optimizer": {"lr": {"uniform": [0.1, 0.01]}}}, "optimizer.lr"),  # low >= high
        ({"optimizer": {"momentum": {"uniform": [0.5, 1.0]}}}, "optimizer.momentum"),  # upper end invalid
        ({**GAN, "loss": {"name": {"choice": ["bce", "mse"]}}}, "loss.name"),  # mse is not a GAN loss
        ({"optimizer": {"name": {"grid": ["sgd", "rmsprop"]}}}, "optimizer.name"),
        ({"model": {"family": "rnn", "hidden_size": {"randint": [0.5, 8]}}}, "model.hidden_size"),  # not integers
        ({"model": {"family": "rnn", "num_layers": {"randint": [1, 17]}}}, "model.num_layers"),  # upper end (inclusive) > 16
        ({"optimizer": {"lr": {"choice": []}}}, "optimizer.lr"),
        ({"optimizer": {"lr": {"choice": [0.1], "uniform": [0, 1]}}}, "optimizer.lr"),
        ({"tune": {"num_samples": {"choice": [1, 2]}}}, "tune.num_samples"),
        ({"model": {"family": "rnn", "cell": {"choice": ["gru", "transformer"]}}}, "model.cell"),
    ],
)
def test_invalid_spaces_are_refused_naming_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_space(raw)


def test_combinations_are_checked_when_each_value_alone_is_fine():
    # loss.name=hinge is fine for a GAN and family=rnn is fine with the default loss,
    # but an RNN with a hinge loss (or on image data) is not: only the combination fails
    raw = {
        "model": {"family": {"choice": ["gan", "vae"]}},
        "data": {"modality": "image", "source": "builtin:shapes"},
        "loss": {"name": {"choice": ["bce", "hinge"]}},
    }
    with pytest.raises(ConfigError, match=r"model\.family='vae', loss\.name='hinge'"):
        parse_space(raw)


def test_valid_space_passes_and_returns_the_base_config():
    raw = {
        **GAN,
        "loss": {"name": {"grid": ["bce", "hinge", "wasserstein"]}},
        "optimizer": {"lr": {"loguniform": [1e-4, 1e-2]}, "betas": {"choice": [[0.5, 0.999], [0.0, 0.9]]}},
        "model": {"family": "gan", "n_critic": {"randint": [1, 5]}},
    }
    base, dims, cfg = parse_space(raw)
    assert cfg.model.family == "gan" and len(dims) == 4
    assert check_space(base, dims).loss.name == "bce"


def test_pbt_needs_a_mutable_dimension():
    with pytest.raises(ConfigError, match="pbt"):
        parse_space({"tune": {"scheduler": "pbt"}, "optimizer": {"name": {"choice": ["sgd", "adam"]}}})
    _, dims, _ = parse_space(
        {
            "tune": {"scheduler": "pbt"},
            "optimizer": {"name": {"choice": ["sgd", "adam"]}, "lr": {"loguniform": [1e-3, 1e-1]}},
        }
    )
    assert set(pbt_mutations(dims)) == {"optimizer.lr"}


def test_space_module_does_not_import_ray():
    import subprocess

    code = "import sys, creagen_ray.tuning.space; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_results_ranking_and_errors_are_pure_and_ordered():
    from creagen_ray.tuning.results import TrialRow, rank_rows, short_error, table

    def row(tid: str, status: str, final: float | None) -> TrialRow:
        return TrialRow(tid, status, "", {"optimizer.lr": 0.1}, 1, 10, final, final, None, None, None)

    rows = rank_rows(
        [row("err", "ERROR", None), row("b", "TERMINATED", 3.0), row("run", "RUNNING", 1.0), row("a", "STOPPED", 2.0)],
        "min",
    )
    assert [r.trial_id for r in rows] == ["a", "b", "run", "err"]
    df = table(rows, "val_loss")
    assert list(df["rank"]) == [1, 2, 3, 4] and "best_val_loss" in df and "optimizer.lr" in df
    tb = "Traceback (most recent call last):\n  File x\nValueError: inner\nTrialDiverged: training diverged at step 5"
    assert short_error(tb).startswith("TrialDiverged: training diverged")
