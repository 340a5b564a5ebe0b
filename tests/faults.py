"""Faults the tests inject from outside the production code: a family that diverges, a worker killed.

`DivergingFamily` ("diverging") is the toy bigram family (tests/toy_family.py) whose loss becomes
NaN from `model.nan_at_step` on, through the real backward pass (the weights go NaN too), so the
training loop's own NaN detection is what stops the run. `model.nan_lr` limits it to the runs
with that optimizer.lr (a search where one sampled lr "blows up"). It registers at import: import
this module before the session's Ray cluster starts (CREAGEN_FAMILIES reaches every worker).

`KillWorkerAfterCheckpoint` is a Ray Train UserCallback (it runs in the Train controller): once a
checkpoint of step `at` is recorded, it SIGKILLs one RayTrainWorker process of this run, found
among the controller's sibling processes (Ray starts both from the same raylet).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from ray.train import UserCallback

from creagen_ray.families import register_family
from creagen_ray.families.base import Batch
from creagen_ray.losses import cross_entropy
from tests.toy_family import ToyConfig, ToyFamily


class DivergingConfig(ToyConfig):
    """The toy bigram table, whose training turns NaN at a step."""

    family: Literal["diverging"] = "diverging"
    nan_at_step: int = Field(1, ge=1, description="the loss is NaN from this optimizer step on")
    nan_lr: float | None = Field(None, description="only a run with this optimizer.lr diverges; None: every run")


class DivergingFamily(ToyFamily):
    """ToyFamily whose loss is multiplied by NaN from `nan_at_step` on (weights follow through backward)."""

    name = "diverging"
    config_model = DivergingConfig

    def train_step(self, batch: Batch) -> dict[str, float]:
        """Cross-entropy of the next token; NaN (loss and gradients) from nan_at_step on."""
        m = self.cfg.model
        tokens = batch["tokens"].to(self.device).long()  # [B, T+1]
        loss = cross_entropy(self.modules["table"](tokens[:, :-1]), tokens[:, 1:])
        if self.step + 1 >= m.nan_at_step and (m.nan_lr is None or self.cfg.optimizer.lr == m.nan_lr):
            loss = loss * torch.tensor(float("nan"))
        self.steppers["main"].backward(loss)
        self.step += 1
        return {"loss": loss.item()}


register_family(DivergingFamily)


def ray_processes(title: str, *, parent: int | None = None, env: str | None = None) -> list[int]:
    """Pids of processes whose command line holds `title` (Ray sets ray::<Actor> as the title),
    limited to children of `parent` and/or processes whose environment holds `env` (e.g. TMPDIR=...)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if title not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            if parent is not None and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            if env is not None and env.encode() not in (proc / "environ").read_bytes():
                continue
            out.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


class KillWorkerAfterCheckpoint(UserCallback):
    """SIGKILL one RayTrainWorker of this run right after the checkpoint of step `at` was recorded (once)."""

    def __init__(self, at: int, marker: str) -> None:
        self.at = at
        self.marker = marker  # a file: the kill happens once even across the run's restarts

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        """Runs in the Train controller; its siblings under the same raylet include the workers."""
        if checkpoint is None or int(metrics[0].get("step", -1)) != self.at or Path(self.marker).exists():
            return
        pids = ray_processes("RayTrainWorker", parent=os.getppid())
        Path(self.marker).write_text(f"{self.at} {pids}")
        if pids:
            os.kill(max(pids), signal.SIGKILL)
