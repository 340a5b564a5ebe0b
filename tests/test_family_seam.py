"""The family seam: a family registered from a test module trains, tunes and serves, no other file changed.

`tests/toy_family.py` declares a bigram family ("toy") and registers it at import; nothing in
creagen_ray names it. A toy bundle trained in-process learns and loads; Ray Serve serves one (beside the
package's families, in the app tests/test_serve_scale.py already runs:
test_family_registered_from_a_test_module_serves; a Serve start of its own here cost about 9 CPU-s).
Ray Train and Tune on a family registered from a test module (tests/faults.py's "diverging", a subclass of the toy): each
trial a Ray Train run whose table learns (val_toy_nll < 4.5), ranked on the family's own metric, and
the best bundle, written by the driver, loads as that family; that is checked by
tests/test_tuning.py::test_asha_search_ranks_failures_and_resumes (a Train run and a Tune run fewer here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tests.toy_family  # noqa: F401  (registers "toy" before the session's Ray starts)
from creagen_ray.config import ConfigError, TextRequest, validate_config
from creagen_ray.families import family_class, family_names


def test_registered_family_is_in_config_cli_and_serving_settings() -> None:
    """Config union, loss/modality rules and serving settings all come from the toy's declaration."""
    from creagen_ray.serving.settings import ServeConfig

    assert "toy" in family_names() and family_class("toy").__name__ == "ToyFamily"
    cfg = validate_config({"model": {"family": "toy", "init_scale": 0.1}})
    assert cfg.loss.name == "cross_entropy" and type(cfg.model).__name__ == "ToyConfig"
    with pytest.raises(ConfigError, match=r"model\.init_scale"):  # the toy's own field rules apply
        validate_config({"model": {"family": "toy", "init_scale": -1}})
    with pytest.raises(ConfigError, match="needs 'text' data"):
        validate_config({"model": {"family": "toy"}, "data": {"modality": "image"}})
    with pytest.raises(ConfigError, match="not a toy loss"):
        validate_config({"model": {"family": "toy"}, "loss": {"name": "bce"}})
    serve = ServeConfig(bundles=["x"], families={"toy": {"num_cpus": 0.2}})
    assert serve.family("toy").num_cpus == 0.2 and serve.family("rnn").num_cpus is None  # unset: derived from the cluster
    with pytest.raises(ValueError, match="unknown model families"):
        ServeConfig(bundles=["x"], families={"tyo": {}})


def test_toy_family_learns_and_writes_a_bundle(tmp_path: Path) -> None:
    """The toy's table learns in-process and its bundle is written and loads as the toy (no Ray: Serve serves
    one in tests/test_serve_scale.py::test_family_registered_from_a_test_module_serves)."""
    from _serve_bundles import TEXT, train_on_pangram
    from creagen_ray.bundle import load_bundle, write_bundle
    from creagen_ray.config import DataSpec
    from creagen_ray.families import build_family
    from creagen_ray.tokenizer import CharTokenizer
    from creagen_ray.training.checkpoint import one_torch_thread

    tok = CharTokenizer.fit(TEXT)
    cfg = validate_config({"name": "toy", "data": {"modality": "text", "seq_len": 32}, "model": {"family": "toy"},
                           "optimizer": {"name": "adam", "lr": 0.05}, "train": {"steps": 40, "batch_size": 16}})
    spec = DataSpec(modality="text", vocab_size=tok.vocab_size, seq_len=32)
    with one_torch_thread():
        family = build_family(cfg, spec, total_steps=40, tokenizer=tok)
        ids = torch.tensor(tok.encode(TEXT[:330]))
        windows = [{"tokens": ids[: 10 * 33].view(10, 33)}]  # the text it trains on: the table fits it
        before = family.evaluate(windows)["val_toy_nll"]
        train_on_pangram(family, tok, steps=40, seq_len=32)
        after = family.evaluate(windows)["val_toy_nll"]
        assert after < before - 1.0, (before, after)  # ln(vocab) at the start: the table learned
        bundle_path = write_bundle(family, tmp_path / "toy" / "bundle", metrics={"val_toy_nll": after})
    bundle = load_bundle(bundle_path)
    assert bundle.family.name == "toy"
    text = bundle.generate(TextRequest(prompt="d", max_new_tokens=12, seed=3))[0]
    assert len(text) == 12 and set(text) <= set(tok.chars)
