"""Model families and their registry: a new family is one file plus one line in `BUILTIN`.

A family's file declares everything the rest of creagen-ray needs to know about it, as class
attributes of its `Family` subclass (see `families/base.py`): its config model, losses and default
loss, data modalities and capabilities, validation metric and progress metrics, and optimizer
names. `config.py` builds the `model:` discriminated union from this registry, the serving app
gives every family a deployment with default settings, and the CLI and progress lines read the
names from here.

A family that lives outside the package (a plugin, or a test's toy family) registers itself:

    from creagen_ray.families import register_family
    register_family(MyFamily)          # at import time of the module that defines it

Registration records `module:Class` in the `CREAGEN_FAMILIES` environment variable, which every
process started afterwards inherits (Ray's workers, Tune trials, Serve replicas), so register
before `ray.init` or set `CREAGEN_FAMILIES=name=module:Class[,...]` on every node of a cluster.

This module imports no torch, so `creagen --help` and config validation of builtin names stay fast;
a family's module is imported the first time it is needed.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from creagen_ray.config import DataSpec, ExperimentConfig
    from creagen_ray.families.base import Family

ENV_VAR = "CREAGEN_FAMILIES"

BUILTIN: dict[str, str] = {
    "rnn": "creagen_ray.families.rnn:RNNFamily",
    "vae": "creagen_ray.families.vae:VAEFamily",
    "gan": "creagen_ray.families.gan:GANFamily",
    "textgan": "creagen_ray.families.textgan:TextGANFamily",
}

_paths: dict[str, str] = dict(BUILTIN)  # name -> "module:Class"
_classes: dict[str, type] = {}  # name -> the imported class (filled lazily)


def _parse_env(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in value.split(","))):
        name, sep, path = item.partition("=")
        if not sep or ":" not in path:
            raise ValueError(f"{ENV_VAR}: {item!r} must look like name=package.module:ClassName")
        out[name.strip()] = path.strip()
    return out


_paths.update(_parse_env(os.environ.get(ENV_VAR, "")))


def family_names() -> list[str]:
    """Every registered family name (builtin first, then plugins)."""
    return list(_paths)


def family_class(name: str) -> type[Family]:
    """The Family subclass registered under `name` (its module is imported on first use)."""
    if name not in _paths:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(_paths)}")
    if name not in _classes:
        module, _, attr = _paths[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if cls.name != name:
            raise ValueError(f"{_paths[name]} declares name={cls.name!r}, registered as {name!r}")
        _classes[name] = cls
    return _classes[name]


def family_classes() -> dict[str, type[Family]]:
    """name -> Family subclass for every registered family (imports them all)."""
    return {name: family_class(name) for name in list(_paths)}


def register_family(cls: type[Family]) -> type[Family]:
    """Register a Family subclass under `cls.name` (usable as a class decorator); returns `cls`.

    Re-registering the same class is a no-op, so a plugin module may register at import time
    even in processes that already know it from `CREAGEN_FAMILIES`.
    """
    name = cls.name
    if not name or not name.isidentifier():
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty identifier, got {name!r}")
    path = f"{cls.__module__}:{cls.__qualname__}"
    if name in BUILTIN and BUILTIN[name] != path:
        raise ValueError(f"family name {name!r} is builtin ({BUILTIN[name]}); choose another name")
    known = _paths.get(name) == path
    _paths[name] = path
    _classes[name] = cls
    plugins = {k: v for k, v in _paths.items() if k not in BUILTIN}
    os.environ[ENV_VAR] = ",".join(f"{k}={v}" for k, v in plugins.items())
    if not known:  # a process that knew it from the environment built its config with it already
        from creagen_ray.config import rebuild_config

        rebuild_config()
    return cls


def build_family(
    cfg: ExperimentConfig,
    spec: DataSpec,
    device: torch.device | str = "cpu",
    total_steps: int | None = None,
    tokenizer: Any = None,
    trainable: bool = True,
) -> Family:
    """Build the family named by `cfg.model.family` for data described by `spec` (`trainable=False`: no optimizers)."""
    return family_class(cfg.model.family)(
        cfg, spec, device=device, total_steps=total_steps, tokenizer=tokenizer, trainable=trainable
    )


def __getattr__(name: str) -> Any:
    """`from creagen_ray.families import Family` without importing torch at package import."""
    if name == "Family":
        from creagen_ray.families.base import Family

        return Family
    raise AttributeError(name)


__all__ = ["BUILTIN", "ENV_VAR", "Family", "build_family", "family_class", "family_classes", "family_names",
           "register_family"]
