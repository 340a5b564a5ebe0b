"""DCGAN images: a generator G (latent -> image) and a discriminator/critic D (image -> score).

Two models, one training step that knows both (the "system"). Losses (creagen_ray.losses):
  bce          the DCGAN objective with the non-saturating generator loss -log D(G(z))
  hinge        relu(1 - D(x)) + relu(1 + D(G(z))) for D, -D(G(z)) for G
  wasserstein  WGAN-GP: critic loss D(G(z)) - D(x) + gp_lambda * gradient penalty, G loss -D(G(z))

Pixels: batches carry uint8 images [B, C, S, S]; the models see them in [-1, 1] (G ends in tanh),
and everything a caller gets back (`sample`, `interpolate`, `generate`) is in [0, 1].

One `train_step` = one batch = one D step. G steps on every `model.n_critic`-th call (n_critic=1:
D then G on every batch, as in pytorch/examples dcgan; n_critic=5: five critic steps, each on its
own batch, per G step, as in WGAN-GP). `self.step` counts batches (train_step calls), so
`steppers["d"].steps == step` and `steppers["g"].steps == step // n_critic`.

    fam = GANFamily(cfg, DataSpec(modality="image", channels=1, image_size=28))
    for batch in batches: metrics = fam.train_step(batch)        # {"image": uint8 [B, 1, 28, 28]}
    imgs = fam.generate(ImageRequest(n=16, seed=0))               # [16, 1, 28, 28] in [0, 1]
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Iterable, Iterator, Literal

import torch
from pydantic import Field
from torch import nn

from creagen_ray import losses, metrics
from creagen_ray.config import FamilyConfig, ImageRequest, InterpolateRequest
from creagen_ray.families.base import Batch, Family, latent_walk, prior_latents
from creagen_ray.families.conv import ConvDecoder, ConvEncoder, images_to_unit, init_dcgan_weights

EVAL_SEED_OFFSET = 7919  # evaluate() draws its fakes from cfg.train.seed + this: the same z every time
CHUNK = 256  # images per forward pass when sampling / evaluating many


class GANConfig(FamilyConfig):
    """DCGAN generator and discriminator (critic for WGAN-GP)."""

    family: Literal["gan"] = "gan"
    latent_dim: int = Field(64, ge=1, le=4096)
    g_channels: int = Field(64, ge=4)
    d_channels: int = Field(64, ge=4)
    n_critic: int = Field(1, ge=1, le=20, description="critic steps per generator step (5 for WGAN-GP)")
    spectral_norm: bool = Field(
        False, description="spectral normalization on every conv of D (Miyato et al. 2018) in place of its batch norm"
    )


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode (BatchNorm uses running stats) and restore each one's mode after."""
    was = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)


class GANFamily(Family):
    """DCGAN generator + discriminator trained with bce, hinge or WGAN-GP losses."""

    name: ClassVar[str] = "gan"
    config_model = GANConfig
    losses = ("bce", "hinge", "wasserstein")
    default_loss = "bce"
    modalities = frozenset({"image"})
    capabilities: ClassVar[frozenset[str]] = frozenset({"image", "interpolate"})
    progress_metrics = ("loss", "loss_d", "loss_g", "val_fcd")
    optimizers = ("g", "d")
    d_optimizers = frozenset({"d"})
    val_metric: ClassVar[str] = "val_fcd"

    # Features for val_fcd (the Fréchet *classifier* distance: FID's formula on the features of a
    # FeatureNet, not Inception), precision/recall and class coverage. The training loop attaches a
    # FeatureNet trained on the dataset's labels; without one, evaluate() falls back to a fixed random conv
    # net, which still separates real from bad samples but is weaker (its features are not tuned to
    # what distinguishes the classes, so it under-reports mode dropping). Not part of the model's
    # weights or checkpoints.
    feature_net: nn.Module | None = None

    # -- building -------------------------------------------------------------------------------

    def build(self) -> None:
        """G: ConvDecoder(latent -> image) + tanh; D: ConvEncoder(image -> 1 score); DCGAN init (+ D's SN)."""
        mc: GANConfig = self.cfg.model
        if self.spec.modality != "image" or not self.spec.channels or not self.spec.image_size:
            raise ValueError(f"the gan family needs image data with channels and image_size, got spec {self.spec}")
        self.loss_name: str = self.cfg.loss.name or "bce"
        self.latent_dim = mc.latent_dim
        self.n_critic = mc.n_critic
        C, S = self.spec.channels, self.spec.image_size
        # No batch norm in a WGAN-GP critic: the penalty constrains the gradient of D(x_i) w.r.t. each
        # input x_i alone, but batch norm makes every score depend on the whole batch, so that
        # per-sample gradient is not the critic's (Gulrajani et al. 2017, sec. 4). LayerNorm is
        # per sample. bce/hinge keep DCGAN's batch norm, unless model.spectral_norm: then each conv of
        # D is divided by its largest singular value (Miyato et al. 2018) and D has no batch norm.
        d_norm = "layer" if self.loss_name == "wasserstein" else "none" if mc.spectral_norm else "batch"
        self.modules = {
            "g": ConvDecoder(mc.latent_dim, C, S, base=mc.g_channels, norm="batch"),  # [B, L] -> [B, C, S, S]
            "d": ConvEncoder(C, S, base=mc.d_channels, out_dim=1, norm=d_norm),  # [B, C, S, S] -> [B, 1]
        }
        for m in self.modules.values():
            init_dcgan_weights(m)
        if mc.spectral_norm:  # after the init: the parametrization divides the initialised weight by sigma
            for conv in self.modules["d"].modules():
                if isinstance(conv, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(conv)
        self._loss_g: float | None = None  # loss of the last G step (reported by train_step)
        self._random_features: nn.Module | None = None  # fallback feature net, built once

    def build_optimizers(self) -> None:
        """Separate steppers: "g" from cfg.optimizer, "d" from cfg.d_optimizer (optimizer_d or optimizer)."""
        self.steppers = {
            "g": self.make_stepper(self.modules["g"].parameters(), self.cfg.optimizer),
            "d": self.make_stepper(self.modules["d"].parameters(), self.cfg.d_optimizer),
        }
        # G steps once per n_critic batches, so its schedule (cosine, warmup) spans that many steps.
        if self.total_steps:
            self.steppers["g"].total_steps = max(1, self.total_steps // self.n_critic)

    # -- training -------------------------------------------------------------------------------

    def to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] (or float in [0, 1]) -> float in [-1, 1] on this family's device."""
        return images_to_unit(images.to(self.device)).mul(2.0).sub(1.0)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One D (critic) step on this batch, plus one G step on every n_critic-th call."""
        real = self.to_model_range(batch["image"])  # [B, C, S, S] in [-1, 1]
        B = real.shape[0]
        G, D = self.modules["g"], self.modules["d"]  # possibly DDP-wrapped
        G.train()
        D.train()
        take_g_step = (self.step + 1) % self.n_critic == 0
        z = torch.randn(B, self.latent_dim, device=self.device)  # [B, L] from the global (per-worker) RNG

        # (1) D step: fakes are detached, so no gradient ever reaches G's parameters here. On a G-step
        # call G runs with grad once and its output is reused by the G step below (as in dcgan).
        with torch.set_grad_enabled(take_g_step), self.autocast():
            fake = torch.tanh(G(z))  # [B, C, S, S] in [-1, 1]
        # Only the first D forward goes through the (DDP) wrapper: each wrapped forward first broadcasts
        # D's buffers in place, which would invalidate the BatchNorm running stats that an earlier
        # forward saved for backward. One wrapped forward still sets up the gradient all-reduce, which
        # fires once per parameter however many forwards fed it.
        D_raw = self.raw("d")
        with self.autocast():
            d_real = D(real).float().flatten()  # [B]
            d_fake = D_raw(fake.detach()).float().flatten()  # [B]
        loss_d = losses.d_loss(self.loss_name, d_real, d_fake, label_smoothing=self.cfg.loss.label_smoothing)
        out: dict[str, float] = {}
        if self.loss_name == "wasserstein":
            # The penalty is computed in float32 outside autocast: its inner gradient is not scaled by
            # an fp16 GradScaler and would underflow.
            gp = losses.gradient_penalty(D_raw, real, fake.detach().float())
            out["wdist"] = (d_real.mean() - d_fake.mean()).item()  # the critic's Wasserstein estimate
            out["gp"] = gp.item()
            loss_d = loss_d + self.cfg.loss.gp_lambda * gp
        self.steppers["d"].backward(loss_d)

        # (2) G step: D's parameters are frozen so G's backward leaves no gradient on them (their
        # .grad would otherwise be added to the next D step). The raw D is used: D is not being
        # trained here, so its DDP wrapper must not expect a gradient all-reduce.
        if take_g_step:
            D_raw.requires_grad_(False)
            try:
                with self.autocast():
                    loss_g = losses.g_loss(self.loss_name, D_raw(fake).float())
                self.steppers["g"].backward(loss_g)
            finally:
                D_raw.requires_grad_(True)
            self._loss_g = loss_g.item()
        elif self._loss_g is None:  # before the first G step: G's loss against the current D
            self._loss_g = losses.g_loss(self.loss_name, d_fake.detach()).item()

        self.step += 1
        out.update(
            loss=loss_d.item(),
            loss_d=loss_d.item(),
            loss_g=self._loss_g,
            d_real=d_real.mean().item(),  # mean raw score (a logit for bce)
            d_fake=d_fake.mean().item(),
            lr=self.steppers["g"].lr,
            lr_d=self.steppers["d"].lr,
        )
        return out

    def gradient_penalty(
        self, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (unweighted) WGAN-GP penalty of this family's critic at interpolates of real/fake in [-1, 1]."""
        return losses.gradient_penalty(self.raw("d"), real, fake, eps=eps)

    # -- generating -----------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [N, L] -> images [N, C, S, S] in [0, 1] (G in eval mode: batch-independent)."""
        G = self.raw("g")
        outs = []
        with eval_mode(G), self.autocast():
            for chunk in z.to(self.device).split(CHUNK):
                outs.append(torch.tanh(G(chunk)).float().add(1.0).mul(0.5))  # [n, C, S, S]
        return torch.cat(outs)

    def latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n prior draws [n, L]; the same seed gives the same latents on any device."""
        return prior_latents(n, self.latent_dim, seed, self.device)

    def request_latents(self, request: ImageRequest | InterpolateRequest) -> torch.Tensor:
        """The latents [k, L] a request decodes: n prior draws, or a slerp walk between two seeds' draws."""
        if isinstance(request, ImageRequest):
            return self.latents(request.n, request.seed)
        if isinstance(request, InterpolateRequest):
            z_a = prior_latents(1, self.latent_dim, request.seed_a, self.device)[0]
            z_b = prior_latents(1, self.latent_dim, request.seed_b, self.device)[0]
            return latent_walk(z_a, z_b, request.steps)
        raise TypeError(f"the gan family answers ImageRequest or InterpolateRequest, got {type(request).__name__}")

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n images [n, C, S, S] in [0, 1] from the prior; the same seed gives the same images."""
        return self.decode(prior_latents(n, self.latent_dim, seed, self.device))

    def interpolate(self, seed_a: int, seed_b: int, steps: int) -> torch.Tensor:
        """A walk [steps, C, S, S] from sample(1, seed_a) to sample(1, seed_b).

        Spherical interpolation (slerp): for Gaussian latents in L dimensions nearly all mass lies
        near the sphere of radius sqrt(L); the straight line between two draws dips inside it
        (norm ~0.71 sqrt(L) at the midpoint), where G saw no latents in training. Slerp stays on it.
        """
        return self.generate(InterpolateRequest(seed_a=seed_a, seed_b=seed_b, steps=steps))

    def generate(self, request: ImageRequest | InterpolateRequest) -> torch.Tensor:
        """ImageRequest -> [n, C, S, S]; InterpolateRequest -> [steps, C, S, S]; values in [0, 1]."""
        return self.decode(self.request_latents(request))

    def generate_many(self, requests: list[ImageRequest | InterpolateRequest]) -> list[torch.Tensor]:
        """Answer several requests with one G pass (each keeps its own seed: equal to one by one)."""
        zs = [self.request_latents(r) for r in requests]
        images = self.decode(torch.cat(zs)) if zs else None
        return list(images.split([z.shape[0] for z in zs])) if images is not None else []

    # -- evaluating -----------------------------------------------------------------------------

    def features_net(self) -> nn.Module:
        """The net whose features val_fcd compares: the attached FeatureNet, else a fixed random one."""
        if self.feature_net is not None:
            return self.feature_net
        if self._random_features is None:
            self._random_features = metrics.random_feature_net(self.spec.channels, seed=self.cfg.train.seed)
        return self._random_features

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """val_fcd, val_precision, val_recall (and class coverage with a trained classifier) of as many
        fixed-seed samples as there are real val images, and D's loss on both."""
        real = torch.cat([self.to_model_range(b["image"]) for b in batches])  # [N, C, S, S] in [-1, 1]
        if real.shape[0] < 2:
            raise ValueError("evaluate needs at least 2 validation images")
        fake = self.sample(real.shape[0], seed=self.cfg.train.seed + EVAL_SEED_OFFSET).mul(2.0).sub(1.0)
        D = self.raw("d")
        with eval_mode(D), self.autocast():
            d_real = torch.cat([D(x).float().flatten() for x in real.split(CHUNK)])  # [N]
            d_fake = torch.cat([D(x).float().flatten() for x in fake.split(CHUNK)])  # [N]
        real01, fake01 = real.add(1.0).mul(0.5), fake.add(1.0).mul(0.5)
        quality = metrics.image_quality(self.features_net(), real01, fake01)
        return {
            **{f"val_{k}": float(v) for k, v in quality.items()},
            "val_d_loss": float(losses.d_loss(self.loss_name, d_real, d_fake)),
            "val_d_real": float(d_real.mean()),
            "val_d_fake": float(d_fake.mean()),
        }
