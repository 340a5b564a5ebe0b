"""Plain PyTorch DCGAN-BCE or WGAN-GP (n_critic 5) on MNIST t10k, stopped at a wall-clock budget.

    .venv/bin/python bench/reference/gan.py --loss bce --budget 300 --out /tmp/ref-dcgan
    .venv/bin/python bench/reference/gan.py --loss wgan-gp --budget 300 --out /tmp/ref-wgan

DCGAN-BCE: pytorch/examples dcgan at 28 px (latent 100, batch norm, Adam 2e-4, betas 0.5/0.999,
non-saturating G loss, one D and one G step per batch). WGAN-GP: Gulrajani et al. 2017 (critic
without batch norm, 5 critic steps per G step, penalty 10, Adam 1e-4, betas 0/0.9). Writes
samples.pt (uint8 [N, 1, 28, 28]) and result.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_split import batches, load_mnist, parse_args, run_for, save  # noqa: E402

LATENT = 100


def generator() -> nn.Module:
    return nn.Sequential(  # z [B, 100] -> image [B, 1, 28, 28] in [-1, 1]
        nn.Linear(LATENT, 128 * 7 * 7, bias=False), nn.BatchNorm1d(128 * 7 * 7), nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),  # 14
        nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Tanh(),  # 28
    )


def discriminator(batch_norm: bool) -> nn.Module:
    norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
    return nn.Sequential(  # image [B, 1, 28, 28] -> score [B, 1]
        nn.Conv2d(1, 64, 4, 2, 1), nn.LeakyReLU(0.2),  # 14
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), norm(128), nn.LeakyReLU(0.2),  # 7
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1),
    )


def init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def main() -> None:
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--loss", choices=["bce", "wgan-gp"], default="bce")
    known, rest = pre.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = parse_args(__doc__)
    wgan = known.loss == "wgan-gp"
    data = load_mnist()
    G, D = generator(), discriminator(batch_norm=not wgan)
    G.apply(init)
    D.apply(init)
    lr, betas, n_critic = (1e-4, (0.0, 0.9), 5) if wgan else (2e-4, (0.5, 0.999), 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    it = batches(data["train_x"], 64, args.seed)
    count = {"d": 0}

    def step() -> None:  # one D (critic) step on one batch; a G step every n_critic batches
        real = next(it) * 2 - 1
        z = torch.randn(len(real), LATENT)
        fake = G(z)
        if wgan:
            loss_d = D(fake.detach()).mean() - D(real).mean()
            eps = torch.rand(len(real), 1, 1, 1)
            mix = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
            grad = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)[0]
            loss_d = loss_d + 10.0 * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        else:
            ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
            loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + F.binary_cross_entropy_with_logits(
                D(fake.detach()), zeros)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        count["d"] += 1
        if count["d"] % n_critic == 0:
            out = D(fake)
            loss_g = -out.mean() if wgan else F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()

    steps, seconds = run_for(args.budget, step, args.steps)
    G.eval()
    with torch.no_grad():
        samples = torch.cat([G(torch.randn(500, LATENT)) for _ in range(0, args.samples, 500)])[: args.samples]
    name = "WGAN-GP n_critic 5" if wgan else "DCGAN-BCE"
    save(args.out, samples.add(1).mul(0.5), {"model": name, "steps": steps, "g_steps": steps // n_critic,
                                              "train_s": seconds})
    print(f"reference {name}: {steps} D steps ({steps // n_critic} G steps) in {seconds:.0f} s")


if __name__ == "__main__":
    main()
