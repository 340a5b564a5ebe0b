"""Plain PyTorch conv VAE (latent 20, Bernoulli likelihood) on MNIST t10k, stopped at a wall-clock budget.

    .venv/bin/python bench/reference/vae.py --budget 180 --out /tmp/ref-vae

Writes samples.pt (prior samples, uint8 [N, 1, 28, 28]) and result.json with -ELBO in nats per
image on all 2,000 evaluation images (one z draw per image, as creagen's val_neg_elbo).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_split import batches, load_mnist, parse_args, run_for, save  # noqa: E402

LATENT = 20


class VAE(nn.Module):
    def __init__(self, latent: int = LATENT) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),  # 14 -> 7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, 2 * latent),
        )
        self.dec = nn.Sequential(
            nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 64 * 7 * 7), nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 7 -> 14
            nn.ConvTranspose2d(32, 1, 4, 2, 1),  # 14 -> 28, logits
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.dec(z), mu, logvar


def neg_elbo(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Per-image -ELBO [B] in nats: Bernoulli reconstruction + KL(q(z|x) || N(0, I))."""
    logits, mu, logvar = model(x)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return rec + kl


def main() -> None:
    args = parse_args(__doc__)
    data = load_mnist()
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    it = batches(data["train_x"], 128, args.seed)

    def step() -> None:
        loss = neg_elbo(model, next(it)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps, seconds = run_for(args.budget, step, args.steps)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(args.seed)
        x = data["eval_x"].float() / 255.0
        elbo = torch.cat([neg_elbo(model, x[i : i + 500]) for i in range(0, len(x), 500)]).mean().item()
        samples = torch.sigmoid(model.dec(torch.randn(args.samples, LATENT)))
    save(args.out, samples, {"model": "conv VAE latent 20", "steps": steps, "train_s": seconds,
                             "neg_elbo": elbo, "eval_images": len(x)})
    print(f"reference vae: {steps} steps in {seconds:.0f} s, -ELBO {elbo:.1f} nats on {len(x)} eval images")


if __name__ == "__main__":
    main()
