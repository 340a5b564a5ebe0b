"""The Family protocol: everything the training loop, Tune and Serve ever call on a model family.

A family is pure PyTorch (no Ray). It owns its modules (`self.modules`, a name -> nn.Module dict
that the training loop may wrap for DDP), its `Stepper`s (one per optimizer), and knows how to
take one training step on a batch, evaluate on held-out batches, and generate.

Batches are dicts of tensors as Ray Data's `iter_torch_batches` yields them from prepared shards:
  text:  {"tokens": int64 [B, seq_len + 1]}
  image: {"image": uint8 [B, C, H, W]}  (+ {"label": int64 [B]} when the source has labels)

Adding a family = one file that subclasses `Family`, declares the class attributes below, and
one line in `families/__init__.py` (or `register_family(cls)` from a plugin or a test module).
Serving calls exactly `generate`, `generate_many`, `stream`, `reconstruct` and `latents`, with the
signatures below; a family overrides the ones its `capabilities` offer.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from torch import nn

from creagen_ray.config import (
    DataSpec,
    ExperimentConfig,
    FamilyConfig,
    OptimizerConfig,
    TextModelConfig,
    TextRequest,
)
from creagen_ray.optim import Stepper

Batch = dict[str, torch.Tensor]


class Family:
    """Base class of a model family; subclasses fill in build/train_step/evaluate/generate."""

    # -- the declaration: what config, CLI, Tune, progress lines and Serve know about a family ----
    name: ClassVar[str] = ""
    # its `model:` config (a FamilyConfig with `family: Literal[name] = name`)
    config_model: ClassVar[type[FamilyConfig]] = FamilyConfig
    # loss names `loss.name` may take, and the one it takes when unset
    losses: ClassVar[tuple[str, ...]] = ()
    default_loss: ClassVar[str] = ""
    # the data it trains on ("text", "image"); `data_modalities` may refine this per model config
    modalities: ClassVar[frozenset[str]] = frozenset()
    # which requests it answers, e.g. {"text", "stream"}, {"image", "interpolate", "reconstruct"}
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # the validation metric Tune and ASHA minimise, e.g. "val_loss", "val_neg_elbo"
    val_metric: ClassVar[str] = "val_loss"
    # metrics a progress line shows after the step counter, in this order, when reported
    progress_metrics: ClassVar[tuple[str, ...]] = ("loss", "val_loss")
    # its Steppers by name; those in `d_optimizers` follow `optimizer_d` (PBT re-applies it there)
    optimizers: ClassVar[tuple[str, ...]] = ("main",)
    d_optimizers: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def data_modalities(cls, model: FamilyConfig) -> frozenset[str]:
        """The data modalities this model config trains on (default: `modalities`)."""
        return cls.modalities

    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: DataSpec,
        device: torch.device | str = "cpu",
        total_steps: int | None = None,
        tokenizer: Any = None,
        trainable: bool = True,
    ) -> None:
        self.cfg = cfg
        self.trainable = trainable  # False: inference only (a bundle, an export), no optimizers
        self.spec = spec
        self.device = torch.device(device)
        self.total_steps = total_steps
        self.tokenizer = tokenizer
        self.step = 0  # training steps taken (batches seen by train_step)
        self.modules: dict[str, nn.Module] = {}
        self.steppers: dict[str, Stepper] = {}
        self.amp_dtype = self._amp_dtype()
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        )
        self.build()
        for m in self.modules.values():
            m.to(self.device)
        if trainable:  # torch's first optimizer imports torch._dynamo (seconds): only where it trains
            self.build_optimizers()

    # -- what a family defines ------------------------------------------------------------------

    def build(self) -> None:
        """Create `self.modules` from `self.cfg.model` and `self.spec`."""
        raise NotImplementedError

    def build_optimizers(self) -> None:
        """Create `self.steppers`; the default is one Stepper over every module's parameters."""
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.steppers = {"main": self.make_stepper(params, self.cfg.optimizer)}

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimization step on one batch; returns scalar metrics (must include "loss")."""
        raise NotImplementedError

    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Held-out metrics over `batches` (must include `val_metric`)."""
        raise NotImplementedError

    def generate(self, request: Any) -> Any:
        """Answer a TextRequest / ImageRequest / InterpolateRequest (see `capabilities`)."""
        raise NotImplementedError

    # -- what serving calls (override what `capabilities` offers) --------------------------------

    def generate_many(self, requests: list[Any]) -> list[Any]:
        """Answer a batch of same-kind requests (default: one `generate` each; override to batch)."""
        return [self.generate(r) for r in requests]

    def stream(self, request: TextRequest) -> Iterator[str]:
        """Text pieces of one sample as produced (default: the whole sample at once)."""
        yield self.generate(request)[0]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of images x [N, C, H, W] in [0, 1] (families with "reconstruct")."""
        raise ValueError(f"the {self.name} family cannot reconstruct; it offers {sorted(self.capabilities)}")

    def latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n latent codes [n, L] from the prior, seeded (families with a latent space)."""
        raise ValueError(f"the {self.name} family has no latent space; it offers {sorted(self.capabilities)}")

    # -- shared mechanism -----------------------------------------------------------------------

    @property
    def default_temperature(self) -> float | None:
        """The temperature a TextRequest without one decodes at (`model.temperature`); None: not a text model."""
        model = self.cfg.model
        if "text" not in self.capabilities or not isinstance(model, TextModelConfig):
            return None
        return model.temperature

    def text_request(self, request: TextRequest | dict[str, Any]) -> TextRequest:
        """The request validated, its temperature concrete: unset -> this model's `model.temperature`.

        Every text family's generate / generate_many / stream passes its requests through here, so
        sampling code always sees a float, and a bundle decodes at the temperature it was trained with.
        """
        if isinstance(request, dict):
            request = TextRequest.model_validate(request)
        if not isinstance(request, TextRequest):
            raise TypeError(f"the {self.name} family answers TextRequest here, got {type(request).__name__}")
        if request.temperature is not None:
            return request
        default = self.default_temperature
        if default is None:
            raise ValueError(f"the {self.name} family has no default temperature (its model config is not a "
                             "TextModelConfig): give the request a temperature")
        return request.model_copy(update={"temperature": default})

    def make_stepper(self, params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> Stepper:
        """A Stepper sharing this family's schedule length and AMP scaler."""
        return Stepper(params, cfg, total_steps=self.total_steps, scaler=self.scaler)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.train.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        if amp == "fp16":
            return torch.float16
        return torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op when AMP is off)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Batch) -> Batch:
        """Move a batch's tensors to this family's device."""
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def wrap_modules(self, wrap: Callable[[nn.Module], nn.Module], names: Iterable[str] | None = None) -> None:
        """Replace modules by `wrap(module)` (the training loop passes Ray Train's prepare_model).

        Only modules with trainable parameters are wrapped. Steppers keep working because DDP
        shares the wrapped module's parameters.
        """
        for k in list(names or self.modules):
            m = self.modules[k]
            if any(p.requires_grad for p in m.parameters()):
                self.modules[k] = wrap(m)

    def raw(self, name: str) -> nn.Module:
        """The module without a DDP wrapper (for sampling and saving)."""
        m = self.modules[name]
        return m.module if hasattr(m, "module") and isinstance(m.module, nn.Module) else m

    def train(self, mode: bool = True) -> None:
        """Put every module in train (or eval) mode."""
        for m in self.modules.values():
            m.train(mode)

    def end_epoch(self) -> None:
        """Tell every Stepper an epoch ended (full-batch `gd` takes its one step here)."""
        for s in self.steppers.values():
            s.end_epoch()

    def set_optimizer_hyperparameters(self, cfg: ExperimentConfig) -> None:
        """Re-apply new optimizer settings to live param groups (PBT, after loading a donor)."""
        self.cfg = cfg
        for name, s in self.steppers.items():
            s.set_hyperparameters(cfg.d_optimizer if name in self.d_optimizers else cfg.optimizer)

    def weights(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor map of every module's weights (for safetensors bundles)."""
        out: dict[str, torch.Tensor] = {}
        for name in self.modules:
            for k, v in self.raw(name).state_dict().items():
                out[f"{name}.{k}"] = v.detach().cpu().contiguous()
        return out

    def load_weights(self, flat: dict[str, torch.Tensor]) -> None:
        """Inverse of `weights()`; shape mismatches are clear errors."""
        for name in self.modules:
            prefix = f"{name}."
            sub = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
            try:
                self.raw(name).load_state_dict(sub, strict=True)
            except RuntimeError as e:
                raise ValueError(f"weights do not fit module {name!r} built from this config: {e}") from None

    def state_dict(self) -> dict[str, Any]:
        """Modules, optimizers, schedulers, scaler and step: everything a checkpoint resumes from."""
        state: dict[str, Any] = {
            "step": self.step,
            "modules": {k: self.raw(k).state_dict() for k in self.modules},
            "steppers": {k: s.state_dict() for k, s in self.steppers.items()},
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved; training continues at the saved step."""
        self.step = int(state["step"])
        for k, sd in state["modules"].items():
            self.raw(k).load_state_dict(sd)
        if self.trainable:  # an inference-only family keeps the weights and the step
            for k, sd in state["steppers"].items():
                self.steppers[k].load_state_dict(sd)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every trainable parameter of every module."""
        for m in self.modules.values():
            yield from m.parameters()


def seeded_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device`, seeded (or from fresh entropy when seed is None)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def prior_latents(n: int, dim: int, seed: int | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """n draws from N(0, I) [n, dim], drawn on the CPU so one seed gives the same latents on any device."""
    return torch.randn(n, dim, generator=seeded_generator(seed)).to(device)


def latent_walk(z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` latents [steps, L] from z_a [L] to z_b [L] by slerp (keeps Gaussian-typical norms; lerp if parallel)."""
    t = torch.linspace(0.0, 1.0, steps, device=z_a.device).unsqueeze(1)  # [steps, 1]
    a, b = z_a.float().flatten(), z_b.float().flatten()
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:  # (nearly) the same direction: slerp degenerates to lerp
        return (1.0 - t) * a + t * b
    return (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
