"""Search spaces written in the experiment YAML itself, checked by the config tree before any trial.

Any field of a config may be a one-key distribution instead of a value:

    optimizer:
      name: {choice: [sgd, adam, adamw]}   # one of the list
      lr: {loguniform: [1.0e-4, 1.0e-2]}   # log-uniform float in [a, b]
      momentum: {uniform: [0.0, 0.95]}     # uniform float in [a, b]
    model:
      n_critic: {randint: [1, 5]}          # integer in [a, b], both ends included
    loss:
      name: {grid: [bce, hinge]}           # grid search: every value, each num_samples times

`split_space(raw)` separates a raw config into a base config (each distribution replaced by its
first corner value) and `{dotted.path: Dimension}`; `check_space` validates the config at every
corner of the space (each choice, both ends of each range, and their combinations when there are
few enough), so a space that can produce an invalid config is refused naming the field.
Pure Python: no Ray here, so all of this is testable in milliseconds.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

from creagen_ray.config import ConfigError, ExperimentConfig, validate_config

Kind = Literal["choice", "uniform", "loguniform", "randint", "grid"]
KINDS: tuple[str, ...] = ("choice", "uniform", "loguniform", "randint", "grid")

# Fields PBT may change in a running trial: they are re-applied to live optimizers / read by the
# family each step, so no module has to be rebuilt after an exploit.
PBT_MUTABLE: tuple[str, ...] = tuple(
    f"{opt}.{k}" for opt in ("optimizer", "optimizer_d") for k in ("lr", "betas", "momentum", "weight_decay")
) + ("model.beta", "loss.gp_lambda", "loss.label_smoothing")

# Above this many corner combinations only each dimension alone is checked (against the base).
MAX_CORNER_COMBINATIONS = 4096


@dataclass(frozen=True)
class Dimension:
    """One searched field: where it is, how it is sampled, and its arguments."""

    path: str
    kind: Kind
    values: tuple[Any, ...]  # choice/grid: the options; ranges: (low, high)

    def corners(self) -> list[Any]:
        """The values that bound this dimension: every option, or both ends of a range."""
        return list(self.values)

    @property
    def is_range(self) -> bool:
        """True for uniform / loguniform / randint."""
        return self.kind in ("uniform", "loguniform", "randint")

    def describe(self) -> str:
        """Compact text such as `loguniform[0.0001, 0.01]` for tables and docs."""
        return f"{self.kind}{list(self.values)}"


def is_distribution(value: Any) -> bool:
    """True when `value` is a one-key dict whose key names a distribution."""
    return isinstance(value, dict) and len(value) >= 1 and any(k in KINDS for k in value)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def parse_dimension(path: str, spec: dict[str, Any]) -> Dimension:
    """Check one distribution dict's shape (not yet its values) and turn it into a Dimension."""
    if len(spec) != 1:
        raise ConfigError(f"{path}: a search distribution has exactly one key of {list(KINDS)}, got {spec!r}")
    (kind, args), = spec.items()
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{path}: {{{kind}: [...]}} needs a non-empty list, got {args!r}")
        return Dimension(path, kind, tuple(args))
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise ConfigError(f"{path}: {{{kind}: [low, high]}} needs two finite numbers, got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{path}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{path}: loguniform needs 0 < low < high, got {args!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"{path}: randint needs two integers, got {args!r}")
    return Dimension(path, kind, (low, high))


def split_space(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Dimension]]:
    """Split a raw config into (base raw config, {dotted.path: Dimension}); distributions' shapes are checked."""
    dims: dict[str, Dimension] = {}

    def walk(node: Any, prefix: str) -> Any:
        if is_distribution(node):
            dim = parse_dimension(prefix, node)
            dims[prefix] = dim
            return copy.deepcopy(dim.values[0])
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in node.items()}
        return node

    base = walk(raw, "")
    if not isinstance(base, dict):
        raise ConfigError("the search space must be a mapping at the top level")
    for path in dims:
        if path == "tune" or path.startswith("tune.") or path in ("name", "train.storage_path", "train.run_name"):
            raise ConfigError(f"{path}: this field names or locates the search itself and cannot be searched")
    return base, dims


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested raw dict, creating sections as needed (in place)."""
    *parents, leaf = path.split(".")
    node = raw
    for p in parents:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[leaf] = copy.deepcopy(value)


def resolve(base: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """A concrete raw config: the base with each sampled `{dotted.path: value}` written in."""
    out = copy.deepcopy(base)
    for path, value in sample.items():
        set_path(out, path, value)
    return out


def _check(base: dict[str, Any], sample: dict[str, Any]) -> ExperimentConfig:
    try:
        return validate_config(resolve(base, sample))
    except ConfigError as e:
        where = ", ".join(f"{p}={v!r}" for p, v in sample.items()) or "the base config"
        raise ConfigError(f"search space: {where} gives an invalid config: {e}") from None


def check_space(base: dict[str, Any], dims: dict[str, Dimension]) -> ExperimentConfig:
    """Validate the config at every corner of the space; returns the base config, raises ConfigError naming the field."""
    base_cfg = _check(base, {})
    # each dimension alone first: the clearest message names exactly one field
    for path, dim in dims.items():
        for value in dim.corners():
            _check(base, {path: value})
    # then combinations (a GAN loss with a family choice, say), while they stay few
    sizes = [len(d.corners()) for d in dims.values()]
    if len(dims) > 1 and math.prod(sizes) <= MAX_CORNER_COMBINATIONS:
        paths = list(dims)
        for combo in itertools.product(*(dims[p].corners() for p in paths)):
            _check(base, dict(zip(paths, combo)))
    return base_cfg


def parse_space(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Dimension], ExperimentConfig]:
    """split_space + check_space: (base raw, dimensions, base config), or ConfigError before any trial."""
    base, dims = split_space(raw)
    base_cfg = check_space(base, dims)
    if base_cfg.tune.scheduler == "pbt":
        check_pbt_space(dims)
    return base, dims, base_cfg


def check_pbt_space(dims: dict[str, Dimension]) -> None:
    """PBT needs at least one field it can change in a running trial, and cannot mutate a grid."""
    mutable = pbt_mutations(dims)
    if not mutable:
        raise ConfigError(
            f"tune.scheduler=pbt needs a search distribution on at least one of {list(PBT_MUTABLE)}; "
            f"the space has {list(dims) or 'none'}"
        )


def pbt_mutations(dims: dict[str, Dimension]) -> dict[str, Dimension]:
    """The dimensions PBT may perturb (hot-swappable optimizer / loss / KL-weight fields, not grids)."""
    return {p: d for p, d in dims.items() if p in PBT_MUTABLE and d.kind != "grid"}
