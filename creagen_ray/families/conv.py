"""DCGAN-style convolution stacks shared by the image families (VAE encoder/decoder, GAN G/D).

An image side S is reached from a small start grid (4x4 or 7x7) by n stride-2 steps:
  28 = 7 * 2^2,  32 = 4 * 2^3,  64 = 4 * 2^4   (also 16, 56, 128, ...)

    enc = ConvEncoder(channels=1, image_size=28, base=32, out_dim=2 * latent)   # [B,1,28,28] -> [B, 2L]
    dec = ConvDecoder(latent_dim=16, channels=1, image_size=28, base=32)        # [B, 16] -> [B,1,28,28] logits
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "layer", "none"]


def conv_plan(image_size: int) -> tuple[int, int]:
    """(start grid side, number of x2 steps) for an image side; a clear error when unsupported."""
    for start in (4, 7):
        n, side = 0, image_size
        while side > start and side % 2 == 0:
            side //= 2
            n += 1
        if side == start and n >= 1:
            return start, n
    raise ValueError(
        f"image size {image_size} is not supported by the conv models: use 4*2^n or 7*2^n (16, 28, 32, 56, 64, 128)"
    )


def _norm(kind: Norm, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "layer":
        return nn.GroupNorm(1, ch)  # LayerNorm over (C, H, W), per sample: safe for gradient penalty
    return nn.Identity()


class ConvEncoder(nn.Module):
    """Image [B, C, S, S] -> vector [B, out_dim] by stride-2 convs (DCGAN discriminator body)."""

    def __init__(self, channels: int, image_size: int, base: int, out_dim: int, norm: Norm = "batch") -> None:
        super().__init__()
        start, n = conv_plan(image_size)
        layers: list[nn.Module] = []
        ch_in, ch = channels, base
        for i in range(n):  # each step halves the side and (after the first) doubles channels
            layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=(i == 0 or norm == "none")))
            if i > 0:
                layers.append(_norm(norm, ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch_in, ch = ch, ch * 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(ch_in, out_dim, start, 1, 0)  # [B, ch, start, start] -> [B, out_dim, 1, 1]
        self.image_size = image_size
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(
                f"expected images [B, {self.channels}, {self.image_size}, {self.image_size}], got {list(x.shape)}"
            )
        return self.head(self.body(x)).flatten(1)  # [B, out_dim]


class ConvDecoder(nn.Module):
    """Latent [B, L] -> image logits [B, C, S, S] by stride-2 transposed convs (DCGAN generator)."""

    def __init__(self, latent_dim: int, channels: int, image_size: int, base: int, norm: Norm = "batch") -> None:
        super().__init__()
        start, n = conv_plan(image_size)
        ch = base * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, start, 1, 0, bias=norm == "none"),  # [B, L, 1, 1] -> [B, ch, start, start]
            _norm(norm, ch),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n - 1):  # each step doubles the side and halves channels
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=norm == "none"),
                _norm(norm, ch // 2),
                nn.ReLU(inplace=True),
            ]
            ch //= 2
        layers.append(nn.ConvTranspose2d(ch, channels, 4, 2, 1))  # last step: -> [B, C, S, S]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))  # [B, C, S, S], unbounded logits


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def images_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, C, H, W] from the data pipeline -> float in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
