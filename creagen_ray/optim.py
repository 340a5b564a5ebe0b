"""Optimizers, schedules and the one step mechanism every family shares.

`Stepper` owns an optimizer, its warmup+cosine schedule, gradient clipping, the AMP grad scaler
and the full-batch `gd` mode (gradients accumulated over the whole epoch, one step per epoch).
A family calls `stepper.backward(loss)` once per batch and `stepper.end_epoch()` at the end of an
epoch; it never touches `optimizer.step()` itself, so all families behave the same way.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
from torch import nn

from creagen_ray.config import OptimizerConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Make the torch optimizer named in the config (`gd` is plain SGD stepped once an epoch)."""
    params = [p for p in params if p.requires_grad]
    if cfg.name in ("gd", "sgd"):
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer.name={cfg.name!r} is not known")


def lr_factor(step: int, cfg: OptimizerConfig, total_steps: int | None) -> float:
    """Multiplier on the base lr at `step`: linear warmup, then constant or cosine to min_lr_ratio."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or not total_steps:
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Stepper:
    """One optimizer + schedule + clipping + AMP scaling + full-batch mode, stepped the same way."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        cfg: OptimizerConfig,
        total_steps: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.cfg = cfg
        self.total_steps = total_steps
        self.optimizer = build_optimizer(self.params, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.cfg, self.total_steps)
        )
        self.scaler = scaler
        self.full_batch = cfg.name == "gd"
        self.accumulated = 0  # batches whose gradients wait for the epoch-end step (gd)
        self.steps = 0  # optimizer steps taken

    def backward(self, loss: torch.Tensor) -> bool:
        """Backpropagate `loss`; step now unless in full-batch mode. Returns True if it stepped."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.full_batch:
            self.accumulated += 1
            return False
        self._step()
        return True

    def end_epoch(self) -> bool:
        """In full-batch mode, average the epoch's gradients and take the one step. Else a no-op."""
        if not self.full_batch or self.accumulated == 0:
            return False
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(self.accumulated)
        self._step()
        self.accumulated = 0
        return True

    def _step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        skipped = False
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skips the update when fp16 grads overflowed
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not skipped:  # the schedule and step count follow real optimizer steps only
            self.scheduler.step()
            self.steps += 1

    def set_hyperparameters(self, cfg: OptimizerConfig) -> None:
        """Re-apply lr/betas/momentum/weight decay to the live param groups (PBT after exploit)."""
        self.cfg = cfg
        factor = lr_factor(self.steps, cfg, self.total_steps)
        for g in self.optimizer.param_groups:
            g["initial_lr"] = cfg.lr
            g["lr"] = cfg.lr * factor
            g["weight_decay"] = cfg.weight_decay
            if "betas" in g:
                g["betas"] = tuple(cfg.betas)
            if "momentum" in g:
                g["momentum"] = cfg.momentum
        self.scheduler.base_lrs = [cfg.lr for _ in self.optimizer.param_groups]

    @property
    def lr(self) -> float:
        """The current learning rate of the first param group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, scheduler and counters, for checkpoints."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
            "accumulated": self.accumulated,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict saved (the step count and schedule continue)."""
        # torch's load_state_dict keeps same-device tensors by reference: copy, so a live source
        # Stepper (in-process resume, PBT exploit) and this one never share moment buffers
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self.accumulated = int(state.get("accumulated", 0))
