"""The one validated config tree: CLI flags, YAML files, Tune search spaces and Serve requests.

Everything else in creagen-ray takes one of these objects, never a raw dict. A bad value fails
here, before any cluster work, with a message naming the field path and the value.

    cfg = load_config("jobs/configs/rnn-shakespeare.yaml", overrides=["optimizer.lr=3e-3"])
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config that does not validate; the message names every bad field path and value."""


class Strict(BaseModel):
    """Base for every config model: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------------------------
# data


class DataConfig(Strict):
    """Where the data comes from and how `creagen prepare` turns it into Parquet shards."""

    source: Union[str, list[str]] = Field(
        "builtin:python-docs",
        description="builtin:python-docs | builtin:shapes | a text file (or list) | a Parquet dir | "
        "an MNIST-style idx images file | a folder of PNG images | a .npy array",
    )
    kind: Literal["auto", "builtin", "text", "parquet", "idx", "png", "npy"] = Field(
        "auto", description="how to read `source`; auto guesses from the name"
    )
    labels: str | None = Field(None, description="idx labels file (or .npy) that goes with an image source")
    modality: Literal["text", "image"] = "text"
    tokenizer: Literal["char", "byte"] = Field("char", description="char: saved vocab; byte: any UTF-8 round-trips")
    seq_len: int = Field(128, ge=2, le=65536, description="tokens per training window (+1 for the target shift)")
    stride: int | None = Field(None, ge=1, description="tokens between window starts; default seq_len")
    image_size: int | None = Field(None, ge=8, le=1024, description="resize images to this side; None keeps them")
    channels: Literal[1, 3] | None = Field(None, description="force 1 (gray) or 3 (RGB) channels")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="text: last part by position; images: every k-th item")
    split: Literal["auto", "position", "file"] = Field(
        "auto",
        description="text: position = the last val_fraction of the tokens is val; file = whole files go to val "
        "(chosen by a hash of their name); auto = position for one file, file for several",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Parquet: contract column -> source column, e.g. {text: body, label: y}"
    )
    skip_bad_files: bool = Field(False, description="skip unreadable files (counted in the manifest) instead of failing")
    seed: int = 0
    max_items: int | None = Field(None, ge=1, description="use only the first N images / N characters")
    builtin_size: int = Field(10000, ge=10, description="how many images builtin:shapes generates")
    output_dir: str | None = Field(None, description="where shards go; default <storage>/data/<source hash>")
    rows_per_shard: int = Field(20000, ge=1)


# ----------------------------------------------------------------------------------------------
# model families: each family's file declares its own config model (families/<name>.py); the
# `model:` field is the discriminated union of every registered family's model, built on first use


class FamilyConfig(Strict):
    """Base of a family's model config; a subclass declares `family: Literal["<name>"] = "<name>"`."""


MIN_TEMPERATURE = 1e-3  # below this (but above 0, which is greedy) logits / T overflow float32
MAX_TEMPERATURE = 10.0


def check_temperature(v: float) -> float:
    """A decoding temperature: 0 (greedy) or in [MIN_TEMPERATURE, MAX_TEMPERATURE] (the range is the Field's)."""
    if 0.0 < v < MIN_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {v!r}")
    return v


def temperature_field(default: float, why: str) -> Any:
    """`model.temperature` of a text family: its default decoding temperature, and why that value."""
    what = f"the decoding temperature of a text request that gives none; 0 = greedy, else at least {MIN_TEMPERATURE}"
    return Field(default, ge=0.0, le=MAX_TEMPERATURE, description=f"{what}. {why}" if why else what)


class TextModelConfig(FamilyConfig):
    """Base of a text family's model config: it carries the default decoding temperature (into its bundles)."""

    temperature: float = temperature_field(1.0, "")

    @field_validator("temperature")
    @classmethod
    def _temperature_greedy_or_sane(cls, v: float) -> float:
        return check_temperature(v)


class ModelConfig:
    """The `model:` field: a union of the registered families' config models, tagged by `family`."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        from creagen_ray.families import family_classes

        models = tuple(f.config_model for f in family_classes().values())
        union = models[0] if len(models) == 1 else Annotated[Union[models], Field(discriminator="family")]
        return handler(union)


def _default_model() -> FamilyConfig:
    from creagen_ray.families import family_class

    return family_class("rnn").config_model()


def rebuild_config() -> None:
    """Rebuild ExperimentConfig's schema after a family registered (families.register_family calls it)."""
    ExperimentConfig.model_rebuild(force=True)


def __getattr__(name: str) -> Any:
    """The builtin families' config models, re-exported from their files (RNNConfig, VAEConfig, ...)."""
    homes = {"RNNConfig": "rnn", "VAEConfig": "vae", "GANConfig": "gan", "TextGANConfig": "textgan"}
    if name in homes:
        from creagen_ray.families import family_class

        return family_class(homes[name]).config_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LossConfig(Strict):
    """The loss a family trains with; `None` picks the family's default."""

    name: str | None = Field(None, description="one of the family's losses (its declaration lists them)")
    gp_lambda: float = Field(10.0, ge=0.0, description="gradient-penalty weight (wasserstein)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class OptimizerConfig(Strict):
    """Optimizer and learning-rate schedule. `gd` is true full-batch gradient descent."""

    name: Literal["gd", "sgd", "adam", "adamw"] = "adam"
    lr: float = Field(2e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(
        None,
        gt=0.0,
        description="max global grad norm; None (the default) does not clip. RNN configs set 1.0 "
        "(exploding gradients through time); the image families train as the plain references do, unclipped",
    )
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine floor as a share of lr")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimizerConfig":
        if self.nesterov and (self.name not in ("sgd", "gd") or self.momentum <= 0):
            raise ValueError("nesterov needs name=sgd|gd and momentum > 0")
        return self


class TrainConfig(Strict):
    """How Ray Train runs the loop: workers, length, evaluation, checkpoints, storage."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0.0, description="fractions leave CPU for Ray Data's read tasks")
    gpus_per_worker: float = Field(1.0, ge=0.0)
    worker_resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker, e.g. {trainer: 1} to keep workers on those nodes"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how workers spread over nodes; STRICT_SPREAD = one worker per node"
    )
    torch_threads: int | None = Field(None, ge=1, description="default: cpus_per_worker rounded, at least 1")
    steps: int | None = Field(1000, ge=1, description="optimizer steps; exactly one of steps/epochs")
    epochs: int | None = Field(None, ge=1)
    time_budget_s: float | None = Field(
        None,
        gt=0.0,
        description="also stop once the training loop has run this many seconds (then the final "
        "evaluation and checkpoint); steps/epochs still set the schedule length. None = no limit",
    )
    batch_size: int = Field(64, ge=1, le=65536, description="per worker")
    eval_every: int = Field(200, ge=1, description="steps between periodic evaluations (epochs mode too)")
    eval_batches: int = Field(
        20, ge=1, description="validation batches per *periodic* evaluation; the final one covers the whole split"
    )
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints (epochs mode too); one at the end")
    materialize_mb: float = Field(
        256.0,
        ge=0.0,
        description="keep the training split in Ray's object store (read once, no restart per epoch) when "
        "its uncompressed size is at most this many MiB; larger splits stream. 0 = always stream",
    )
    read_ahead_mb: float = Field(
        64.0,
        ge=0.0,
        description="MiB of batches each worker reads ahead of its training step (at least 4 batches, on the "
        "training device): covers the next epoch's start-up, so a streamed split does not stall at epoch boundaries",
    )
    num_to_keep: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    storage_path: str = Field("./runs", description="local dir or URI holding runs, checkpoints, bundles")
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    max_failures: int = Field(
        3, ge=-1, description="default 3: restarts of the worker group after a worker or node is lost (each "
        "resumes from the last checkpoint); 0 = fail on the first loss, -1 = unlimited",
    )
    amp: Literal["auto", "off", "bf16", "fp16"] = Field("auto", description="auto: bf16 on GPU, off on CPU")
    seed: int = 0
    sample_metrics: bool = Field(
        False, description="text: score samples for the bundle (LM score, reverse LM, BLEU-4, self-BLEU-4, novelty)"
    )
    sample_lm_steps: int = Field(
        300, ge=1, le=100_000, description="training steps of the reference and the reverse char LM of sample_metrics"
    )
    tracking: Literal["none", "mlflow", "tensorboard"] = Field(
        "none", description="experiment tracking (docs/tracking.md): MLflow runs or TensorBoard event files"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: a local file store at <storage_path>/mlruns"
    )

    @model_validator(mode="after")
    def _one_length(self) -> "TrainConfig":
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of train.steps and train.epochs")
        return self


class TuneConfig(Strict):
    """Ray Tune search settings (the search space lives in the config's own fields)."""

    scheduler: Literal["asha", "pbt", "none"] = "asha"
    search: Literal["random", "grid"] = "random"
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    metric: str | None = Field(None, description="default: the family's validation metric")
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1, description="ASHA: reports before a trial may stop")
    reduction_factor: float = Field(2.0, gt=1.0)
    perturbation_interval: int = Field(2, ge=1, description="PBT: reports between exploits")
    trial_cpus: float = Field(0.01, gt=0.0)


class ExperimentConfig(Strict):
    """The root: one experiment = data + model + loss + optimizers + training (+ tuning)."""

    # built on first use: the `model` union imports the registered families (and torch)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), defer_build=True)

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=_default_model)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    optimizer_d: OptimizerConfig | None = Field(
        None, description="a second optimizer (GAN discriminator/critic); default = optimizer"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        from creagen_ray.families import family_class

        name = self.model.family
        fam = family_class(name)
        if self.loss.name is None:
            self.loss.name = fam.default_loss
        if self.loss.name not in fam.losses:
            raise ValueError(f"loss.name={self.loss.name!r} is not a {name} loss; choose one of {list(fam.losses)}")
        want = fam.data_modalities(self.model)
        if self.data.modality not in want:
            need = " or ".join(repr(m) for m in sorted(want))
            raise ValueError(f"data.modality={self.data.modality!r} but model.family={name!r} needs {need} data")
        if self.optimizer_d is not None and not fam.d_optimizers:
            raise ValueError(f"optimizer_d is only for a family with a second optimizer; model.family={name!r} has one")
        return self

    @property
    def d_optimizer(self) -> OptimizerConfig:
        """The discriminator's optimizer settings (falls back to `optimizer`)."""
        return self.optimizer_d or self.optimizer


# ----------------------------------------------------------------------------------------------
# what a family needs to know about prepared data (read from the dataset manifest)


class DataSpec(Strict):
    """Shape facts a model is built from: vocabulary for text, (C, H, W) for images."""

    modality: Literal["text", "image"]
    vocab_size: int | None = None
    seq_len: int | None = None
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None


# ----------------------------------------------------------------------------------------------
# generation requests (Serve and `creagen generate` validate through these)

MAX_NEW_TOKENS = 2048
MAX_PROMPT_CHARS = 4096
MAX_IMAGES = 64
MAX_BATCH_PROMPTS = 32

MIN_TOP_P = 1e-6  # below float32's resolution of the cumulative mass every token would be dropped


class RequestModel(Strict):
    """Base of the generation requests: strict types (no "seed": false as 0, no "5" as 5), finite floats."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)


def _utf8(value: str, what: str) -> str:
    """The text when it encodes as UTF-8 (no lone surrogates), else a ValueError naming it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode text (lone surrogate at index {e.start})") from None
    return value


class TextRequest(RequestModel):
    """Sample text from a text model (char RNN, sentence VAE, text GAN)."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(200, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(
        None, ge=0.0, le=MAX_TEMPERATURE,
        description=f"unset: the model's default (its model.temperature, shown by GET /v1/models); "
        f"0 = greedy, else at least {MIN_TEMPERATURE}",
    )
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, ge=MIN_TOP_P, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=8)
    n: int = Field(1, ge=1, le=MAX_BATCH_PROMPTS, description="samples for this prompt")

    @field_validator("temperature")
    @classmethod
    def _temperature_greedy_or_sane(cls, v: float | None) -> float | None:
        return v if v is None else check_temperature(v)

    @field_validator("prompt")
    @classmethod
    def _prompt_utf8(cls, v: str) -> str:
        return _utf8(v, "prompt")

    @field_validator("stop")
    @classmethod
    def _stop_utf8(cls, v: list[str]) -> list[str]:
        return [_utf8(s, "stop string") for s in v]


class ImageRequest(RequestModel):
    """Sample n images from the prior."""

    n: int = Field(16, ge=1, le=MAX_IMAGES)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class InterpolateRequest(RequestModel):
    """A latent walk between the latents drawn from two seeds."""

    seed_a: int = Field(0, ge=0, le=2**63 - 1)
    seed_b: int = Field(1, ge=0, le=2**63 - 1)
    steps: int = Field(8, ge=2, le=MAX_IMAGES)


# ----------------------------------------------------------------------------------------------
# loading: YAML/JSON + --set overrides, with errors that name the field


def format_validation_error(err: ValidationError) -> str:
    """One line per bad field: `path.to.field: message (got value)`."""
    from creagen_ray.families import family_names

    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        # drop the discriminator tag pydantic inserts into union paths (model.rnn.x -> model.x)
        parts = path.split(".")
        if len(parts) > 1 and parts[0] == "model" and parts[1] in family_names():
            parts.pop(1)
        path = ".".join(parts) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        # model-level checks name their own fields in the message
        lines.append(msg if path == "<root>" else f"{path}: {msg}{got_s}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 3e-3, true, [1, 2], {choice: [a, b]}, null."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a raw config dict (returns a new dict)."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = _parse_scalar(value)
    return out


def read_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict (no validation yet)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw dict into an ExperimentConfig, raising ConfigError naming the fields."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


# ----------------------------------------------------------------------------------------------
# paths: resolved once, in the driver, before anything reaches a Ray worker
#
# The rule (README "Paths in configs"):
#   - input paths written in a config file (data.source, data.labels) are relative to that
#     file's folder, so a config works from any working directory;
#   - output paths (train.storage_path, data.output_dir), and every path given on the command line
#     (--set) or in a dict passed to the library, are relative to the working directory;
#   - URIs (s3://, gs://, file://, ...) and builtin: sources are left as they are; ~ is expanded.
# Ray Train moves each worker's working directory, so a relative path must never reach a worker.

INPUT_PATH_FIELDS: tuple[str, ...] = ("data.source", "data.labels")
OUTPUT_PATH_FIELDS: tuple[str, ...] = ("train.storage_path", "data.output_dir")


def resolve_path(value: str, base: str | Path) -> str:
    """One path value made absolute against `base`; URIs and `builtin:` names pass through unchanged.

    This is the single place that decides what a path in a config means: `--set`, YAML files,
    Tune spaces and the library all go through it (via `resolve_paths`). Remote storage support
    extends it here (a value with `scheme://` is a URI, never joined to a local folder).
    """
    if "://" in value or value.startswith("builtin:"):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (Path(base) / p).resolve())


def _resolve_value(value: Any, base: Path) -> Any:
    """A path field's raw value: a string, a list of them, or a search distribution over them."""
    if isinstance(value, str):
        return resolve_path(value, base)
    if isinstance(value, list):
        return [_resolve_value(v, base) for v in value]
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("choice", "grid"):
        (kind, options), = value.items()  # a Tune space over paths: {choice: [a, b]}
        return {kind: _resolve_value(options, base) if isinstance(options, list) else options}
    return value


def resolve_paths(raw: dict[str, Any], config_dir: str | Path | None = None) -> dict[str, Any]:
    """A raw config with every path field absolute (a new dict); see the rule above.

    `config_dir`: the folder of the config file `raw` was read from (its input paths resolve
    there); None for values that came from the command line or the library (working directory).
    A missing `train.storage_path` is filled in with its default, resolved, so that every config
    leaving the driver carries an absolute one. Idempotent: absolute values stay as they are.
    """
    cwd = Path.cwd()
    out = copy.deepcopy(raw)
    for dotted in INPUT_PATH_FIELDS + OUTPUT_PATH_FIELDS:
        section, key = dotted.split(".")
        node = out.get(section)
        if not isinstance(node, dict) or node.get(key) is None:
            continue
        base = Path(config_dir) if config_dir is not None and dotted in INPUT_PATH_FIELDS else cwd
        node[key] = _resolve_value(node[key], base)
    train = out.setdefault("train", {})
    if isinstance(train, dict) and train.get("storage_path") is None:
        train["storage_path"] = resolve_path(TrainConfig.model_fields["storage_path"].default, cwd)
    return out


def read_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw config a command runs: file (its paths resolved) + `--set` overrides (resolved), not validated."""
    raw = resolve_paths(read_raw(path), Path(path).resolve().parent) if path is not None else {}
    return resolve_paths(apply_overrides(raw, overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML/JSON file (or the defaults), apply `--set` overrides, resolve paths, and validate."""
    return validate_config(read_config(path, overrides))


def with_resolved_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with any relative path made absolute against the working directory (library callers)."""
    raw = cfg.model_dump(mode="json")
    fixed = resolve_paths(raw)
    return cfg if fixed == raw else validate_config(fixed)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (round-trips through load_config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_schema() -> dict[str, Any]:
    """JSON schema of the whole config tree (`creagen config schema`)."""
    return ExperimentConfig.model_json_schema()
