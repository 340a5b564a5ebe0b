"""Model families and their registry: a new family is one file plus one line here."""

from __future__ import annotations

import importlib
from typing import Any

import torch

from creagen_ray.config import DataSpec, ExperimentConfig
from creagen_ray.families.base import Family

REGISTRY: dict[str, str] = {
    "rnn": "creagen_ray.families.rnn:RNNFamily",
    "vae": "creagen_ray.families.vae:VAEFamily",
    "gan": "creagen_ray.families.gan:GANFamily",
}


def family_class(name: str) -> type[Family]:
    """The Family subclass registered under `name` (imported lazily)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(REGISTRY)}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_family(
    cfg: ExperimentConfig,
    spec: DataSpec,
    device: torch.device | str = "cpu",
    total_steps: int | None = None,
    tokenizer: Any = None,
) -> Family:
    """Build the family named by `cfg.model.family` for data described by `spec`."""
    return family_class(cfg.model.family)(cfg, spec, device=device, total_steps=total_steps, tokenizer=tokenizer)


__all__ = ["Family", "REGISTRY", "build_family", "family_class"]
