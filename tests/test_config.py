"""The config tree: good configs load, bad ones fail naming the field path and value; CLI config commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from creagen_ray.cli import main
from creagen_ray.config import (
    ConfigError,
    ExperimentConfig,
    GANConfig,
    apply_overrides,
    config_schema,
    dump_config,
    load_config,
    validate_config,
)


def write_yaml(tmp_path, data: dict, name: str = "exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


GAN_SHAPES = {
    "name": "gan-shapes",
    "data": {"source": "builtin:shapes", "modality": "image", "image_size": 32},
    "model": {"family": "gan", "latent_dim": 32},
    "loss": {"name": "hinge"},
    "optimizer": {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
    "optimizer_d": {"name": "sgd", "lr": 1e-3, "momentum": 0.9, "nesterov": True},
    "train": {"steps": 100, "batch_size": 32},
}


def test_defaults_are_a_valid_rnn_on_python_docs():
    cfg = load_config()
    assert cfg.model.family == "rnn"
    assert cfg.loss.name == "cross_entropy"  # filled in from the family's default
    assert cfg.data.source == "builtin:python-docs"
    assert cfg.d_optimizer is cfg.optimizer
    # each text family's default decoding temperature (docs/benchmarks.md): char RNN 0.8, sentence VAE and text GAN greedy
    assert cfg.model.temperature == 0.8
    assert validate_config({"model": {"family": "vae", "arch": "sentence"}}).model.temperature == 0.0
    assert validate_config({"model": {"family": "textgan"}}).model.temperature == 0.0
    assert validate_config({"model": {"family": "rnn", "temperature": 0}}).model.temperature == 0.0


def test_good_gan_config_from_yaml(tmp_path):
    cfg = load_config(write_yaml(tmp_path, GAN_SHAPES))
    assert isinstance(cfg.model, GANConfig)
    assert cfg.model.latent_dim == 32
    assert cfg.optimizer.betas == (0.5, 0.999)
    assert cfg.d_optimizer.name == "sgd" and cfg.d_optimizer.nesterov


def test_json_config_and_dump_round_trip(tmp_path):
    p = tmp_path / "exp.json"
    p.write_text(json.dumps(GAN_SHAPES), encoding="utf-8")
    cfg = load_config(p)
    again = load_config(write_yaml(tmp_path, yaml.safe_load(dump_config(cfg)), "dumped.yaml"))
    assert again == cfg


@pytest.mark.parametrize(
    "raw, field, value",
    [
        ({"optimizer": {"lr": -1}}, "optimizer.lr", "-1"),
        ({"optimizer": {"name": "rmsprop"}}, "optimizer.name", "'rmsprop'"),
        ({"model": {"family": "gan", "beta": 2.0}}, "model.beta", "2.0"),  # a VAE field on a GAN
        ({"model": {"family": "rnn", "hidden_size": 0}}, "model.hidden_size", "0"),
        ({"data": {"seq_len": 1}}, "data.seq_len", "1"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "1.5"),
        ({"train": {"batch_size": "big"}}, "train.batch_size", "'big'"),
        ({"optimizer": {"betas": [0.9, 1.5]}}, "optimizer.betas", "1.5"),
        # a text model's default decoding temperature: 0 (greedy) or at least 1e-3, at most 10, as a request's
        ({"model": {"family": "rnn", "temperature": 5e-4}}, "model.temperature", "0.0005"),
        ({"model": {"family": "textgan", "temperature": 11}}, "model.temperature", "11"),
        ({"nonsense": 1}, "nonsense", "1"),
    ],
)
def test_bad_field_names_path_and_value(raw, field, value):
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    msg = str(e.value)
    assert f"{field}:" in msg
    assert value in msg


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"model": {"family": "rnn"}, "loss": {"name": "mse"}}, "loss.name='mse' is not a rnn loss"),
        ({"model": {"family": "gan"}, "loss": {"name": "cross_entropy"}}, "loss.name='cross_entropy' is not a gan loss"),
        ({"model": {"family": "vae"}}, "data.modality='text' but model.family='vae' needs 'image'"),
        ({"optimizer": {"name": "adam", "nesterov": True}}, "nesterov needs name=sgd|gd"),
        ({"train": {"steps": None}}, "exactly one of train.steps and train.epochs"),
        ({"optimizer_d": {"lr": 1e-3}}, "optimizer_d is only for a family with a second optimizer; model.family='rnn'"),
        ({"model": {"family": "diffusion"}}, "'diffusion'"),
    ],
)
def test_cross_field_rules_name_their_fields(raw, needle):
    with pytest.raises(ConfigError, match="invalid config") as e:
        validate_config(raw)
    assert needle in str(e.value)


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        validate_config({"optimizer": {"lr": 0}, "train": {"num_workers": 0}})
    assert "optimizer.lr:" in str(e.value) and "train.num_workers:" in str(e.value)


def test_overrides_are_yaml_scalars(tmp_path):
    path = write_yaml(tmp_path, GAN_SHAPES)
    cfg = load_config(
        path,
        [
            "optimizer.lr=3e-3",  # a float, not the string "3e-3"
            "optimizer.betas=[0.0, 0.9]",
            "train.use_gpu=true",
            "data.output_dir=null",
            "model.n_critic=5",
            "tune.metric=val_fcd",
            "train.run_name=run-01",
        ],
    )
    assert cfg.optimizer.lr == pytest.approx(3e-3)
    assert cfg.optimizer.betas == (0.0, 0.9)
    assert cfg.train.use_gpu is True
    assert cfg.data.output_dir is None
    assert cfg.model.n_critic == 5
    assert cfg.tune.metric == "val_fcd"
    assert cfg.train.run_name == "run-01"


def test_override_creates_sections_and_switches_family():
    cfg = load_config(None, ["model.family=vae", "data.modality=image", "data.source=builtin:shapes"])
    assert cfg.model.family == "vae" and cfg.loss.name == "bce"


def test_bad_overrides():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides({}, ["optimizer.lr"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"optimizer": {"lr": 1.0}}, ["optimizer.lr.x=1"])
    with pytest.raises(ConfigError, match=r"optimizer\.lr: .*\(got 'fast'\)"):
        load_config(None, ["optimizer.lr=fast"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_assignment_is_validated():
    cfg = ExperimentConfig()
    with pytest.raises(ValueError):
        cfg.optimizer.lr = -1.0


def test_cli_config_show_resolves_overrides(tmp_path, capsys):
    path = write_yaml(tmp_path, GAN_SHAPES)
    assert main(["config", "show", str(path), "--set", "optimizer.lr=0.01", "--set", "train.steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["optimizer"]["lr"] == 0.01
    assert shown["train"]["steps"] == 7
    assert shown["model"]["family"] == "gan"
    assert shown["model"]["n_critic"] == 1  # defaults are filled in


def test_cli_config_show_bad_value_exits_2_naming_field(tmp_path, capsys):
    path = write_yaml(tmp_path, GAN_SHAPES)
    assert main(["config", "show", str(path), "--set", "model.beta=2"]) == 2
    err = capsys.readouterr().err
    assert "model.beta:" in err and "(got 2)" in err


def test_cli_config_schema(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == config_schema()
    assert {"data", "model", "loss", "optimizer", "train", "tune"} <= set(schema["properties"])
    assert "DataConfig" in schema["$defs"] and "GANConfig" in schema["$defs"]


def test_config_show_on_a_search_space_prints_base_and_dimensions(capsys) -> None:
    """`creagen config show` on a tune config: the space's base config plus one line per dimension."""
    root = Path(__file__).resolve().parents[1]
    assert main(["config", "show", str(root / "jobs/configs/demo-tune.yaml")]) == 0
    out = capsys.readouterr().out
    assert "# search: optimizer.lr: loguniform" in out
    base = yaml.safe_load(out)
    assert validate_config(base).optimizer.lr > 0
