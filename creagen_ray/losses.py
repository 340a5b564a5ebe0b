"""Every loss the families train with: named, plain functions of tensors (no modules, no Ray).

Conventions (read these before calling):
- Language models pass *logits* `[B, T, V]` and integer targets `[B, T]`; losses are in nats.
- Image reconstruction is summed over each item's pixels and averaged over the batch, so a VAE's
  loss reads as nats per image. `bce` takes the decoder's *logits* (no sigmoid: the stable
  `binary_cross_entropy_with_logits` is used, which is also safe under autocast); `mse` takes the
  decoder's *values* in data space (e.g. after a sigmoid), targets in [0, 1].
- GAN losses take raw discriminator/critic *scores* `[B]` or `[B, 1]` (logits for `bce`, unbounded
  for `hinge` and `wasserstein`), never probabilities.

    from creagen_ray import losses
    loss = losses.cross_entropy(logits, targets)                         # LM, nats/token
    rec = losses.reconstruction_loss("bce", x_logits, x)                 # nats/image
    kl = losses.kl_normal(mu, logvar).mean()                             # nats/image
    d = losses.d_loss("wasserstein", critic(real), critic(fake.detach()))
    d = d + cfg.loss.gp_lambda * losses.gradient_penalty(critic, real, fake.detach())
    g = losses.g_loss("wasserstein", critic(fake))
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

GAN_LOSSES = ("bce", "hinge", "wasserstein")
RECONSTRUCTION_LOSSES = ("mse", "bce")
Reduction = Literal["mean", "sum", "none"]


# ----------------------------------------------------------------------------------------------
# language modelling


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Next-token cross-entropy in nats from logits [B, T, V] (or [N, V]) and int targets [B, T] (or [N]).

    reduction: "mean" = nats per (non-ignored) token, "sum" = total nats, "none" = per token, shaped
    like `targets`. Targets equal to `ignore_index` (padding) count for nothing.
    """
    V = logits.size(-1)
    flat = F.cross_entropy(
        logits.reshape(-1, V).float(),  # [B*T, V], float32 even under autocast
        targets.reshape(-1).long(),  # [B*T]
        reduction="none",
        label_smoothing=label_smoothing,
        ignore_index=ignore_index,
    )  # [B*T]
    if reduction == "none":
        return flat.view(targets.shape)
    if reduction == "sum":
        return flat.sum()
    if reduction == "mean":
        n = (targets != ignore_index).sum().clamp(min=1)
        return flat.sum() / n
    raise ValueError(f"reduction={reduction!r}; choose mean|sum|none")


# ----------------------------------------------------------------------------------------------
# VAE terms


def reconstruction_loss(
    name: str, x_hat: torch.Tensor, x: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
) -> torch.Tensor:
    """Reconstruction error summed over each item, averaged over the batch (nats per image for bce).

    name="bce": `x_hat` are decoder LOGITS [B, ...], `x` targets in [0, 1] of the same shape;
      the result is -log p(x | z) under independent Bernoullis.
    name="mse": `x_hat` are decoder VALUES in data space [B, ...]; the result is the summed squared
      error, i.e. -log N(x; x_hat, I/2) up to a constant.
    reduction="none" returns the per-item sums [B] (for a per-item ELBO).
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"reconstruction shapes differ: x_hat {tuple(x_hat.shape)} vs x {tuple(x.shape)}")
    x_hat, x = x_hat.float(), x.float()
    if name == "bce":
        per_elem = F.binary_cross_entropy_with_logits(x_hat, x, reduction="none")
    elif name == "mse":
        per_elem = (x_hat - x).pow(2)
    else:
        raise ValueError(f"reconstruction loss {name!r} is not known; choose one of {list(RECONSTRUCTION_LOSSES)}")
    per_item = per_elem.flatten(1).sum(dim=1)  # [B]
    return per_item if reduction == "none" else per_item.mean()


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, exp(logvar)) || N(0, I) ) in nats per item: mu, logvar [B, Z] -> [B]."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


# ----------------------------------------------------------------------------------------------
# GAN losses (scores are raw: logits for bce, unbounded critic values for hinge / wasserstein)


def d_loss(name: str, real_out: torch.Tensor, fake_out: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Discriminator/critic loss (lower is better for D) from scores on real [B] and fake [B'] items.

    bce: -log D(real) - log(1 - D(fake)) with D = sigmoid(score); `label_smoothing` makes the real
      target 1 - s (one-sided smoothing). hinge: relu(1 - real) + relu(1 + fake).
    wasserstein: mean(fake) - mean(real), the WGAN critic loss (add `gradient_penalty` for WGAN-GP).
    """
    real_out, fake_out = real_out.float().flatten(), fake_out.float().flatten()
    if name == "bce":
        real_target = torch.full_like(real_out, 1.0 - label_smoothing)
        return F.binary_cross_entropy_with_logits(real_out, real_target) + F.binary_cross_entropy_with_logits(
            fake_out, torch.zeros_like(fake_out)
        )
    if name == "hinge":
        return F.relu(1.0 - real_out).mean() + F.relu(1.0 + fake_out).mean()
    if name == "wasserstein":
        return fake_out.mean() - real_out.mean()
    raise ValueError(f"GAN loss {name!r} is not known; choose one of {list(GAN_LOSSES)}")


def g_loss(name: str, fake_out: torch.Tensor) -> torch.Tensor:
    """Generator loss from D's scores on generated items [B] (lower is better for G).

    bce: the non-saturating -log D(fake) (stronger gradients early than log(1 - D(fake))).
    hinge and wasserstein: -mean(fake score).
    """
    fake_out = fake_out.float().flatten()
    if name == "bce":
        return F.binary_cross_entropy_with_logits(fake_out, torch.ones_like(fake_out))
    if name in ("hinge", "wasserstein"):
        return -fake_out.mean()
    raise ValueError(f"GAN loss {name!r} is not known; choose one of {list(GAN_LOSSES)}")


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty mean((||grad_x critic(x_hat)||_2 - 1)^2) at random interpolates (unweighted).

    real, fake: [B, ...] float batches of the same shape (fake is detached here). eps: optional
    mixing weights [B] in [0, 1]; default uniform draws (from `generator` if given). The graph is
    kept (create_graph=True) so the penalty trains the critic. Multiply by `gp_lambda` yourself.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty needs equal shapes, got {tuple(real.shape)} and {tuple(fake.shape)}")
    B = real.size(0)
    if eps is None:
        eps = torch.rand(B, device=real.device, generator=generator)
    eps = eps.to(real.dtype).view(B, *([1] * (real.dim() - 1)))  # [B, 1, 1, 1]
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)  # [B, ...]
    scores = critic(x_hat)  # [B] or [B, 1]
    (grad,) = torch.autograd.grad(scores.float().sum(), x_hat, create_graph=True)  # [B, ...]
    norms = grad.float().flatten(1).norm(2, dim=1)  # [B]
    return (norms - 1.0).pow(2).mean()
