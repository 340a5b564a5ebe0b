"""The text GAN: a WGAN-GP over character windows (Gulrajani et al. 2017, "Improved Training of
Wasserstein GANs", section 5.3, the char-level language model).

    G: z [B, L] -> Linear -> [B, C, T] -> residual Conv1d blocks -> Conv1d 1x1 -> [B, V, T]
       -> softmax over the vocabulary -> [B, T, V]   (one distribution per position, all at once)
    D: one-hot real chars or G's softmaxes [B, T, V] -> Conv1d 1x1 -> [B, C, T] -> residual blocks
       -> Linear -> score [B]
    loss: critic  mean D(fake) - mean D(real) + gp_lambda * gradient penalty,  generator  -mean D(fake)

Why this and not a latent-space GAN over the sentence VAE (LaTextGAN): it is self-contained (no
trained VAE to load, version and ship inside the bundle), it has no discrete sampling step in the
training graph, so the gradient reaches G without Gumbel-softmax or REINFORCE (the critic compares
G's continuous softmaxes with one-hot real characters, and the Lipschitz penalty keeps that
comparison informative), it trains stably on CPU in minutes with the same WGAN-GP machinery the
image GAN uses, and a sample is one forward pass: the whole window at once, no token loop, so
serving batches cheaply and streaming is not needed. Its limit: windows of fixed length
`data.seq_len`, unconditional (a prompt is refused, not ignored).

Training windows are the prepared text shards' `tokens` [B, seq_len + 1]; the GAN uses the first
seq_len characters. One `train_step` = one batch = one critic step; G steps on every
`model.n_critic`-th call. The validation metric is `val_js4`: the Jensen-Shannon divergence between
the character 4-gram distributions of fixed-seed samples and of the held-out windows (the measure
Gulrajani et al. report): it rises both for wrong n-grams and for mode collapse.

    fam = TextGANFamily(cfg, DataSpec(modality="text", vocab_size=V, seq_len=32), tokenizer=tok)
    fam.train_step({"tokens": int64 [B, 33]})
    fam.generate(TextRequest(n=4, seed=0))  # 4 strings of 32 characters
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from creagen_ray import losses
from creagen_ray.config import FamilyConfig, TextRequest
from creagen_ray.families.base import Batch, Family, seeded_generator
from creagen_ray.metrics.text import ngram_js
from creagen_ray.sampling import sample_next

EVAL_SEED_OFFSET = 7919  # evaluate() samples from cfg.train.seed + this: the same z every time
EVAL_MAX_SAMPLES = 512


class TextGANConfig(FamilyConfig):
    """WGAN-GP with a conv generator of per-position softmaxes and a conv critic over one-hot chars."""

    family: Literal["textgan"] = "textgan"
    latent_dim: int = Field(128, ge=1, le=4096)
    channels: int = Field(128, ge=4, le=4096, description="width of every residual block (the paper: 512)")
    blocks: int = Field(5, ge=1, le=32, description="residual blocks in G and in D")
    kernel_size: int = Field(5, ge=1, le=31, description="odd: the conv keeps the window length")
    n_critic: int = Field(5, ge=1, le=20, description="critic steps per generator step (the paper: 10)")

    @property
    def padding(self) -> int:
        """Same-length padding of the block convs."""
        return self.kernel_size // 2


class ResBlock(nn.Module):
    """x + 0.3 * conv(relu(conv(relu(x)))) on [B, C, T] (the paper's residual block, no norm)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * self.conv2(F.relu(self.conv1(F.relu(x))))


class Generator(nn.Module):
    """z [B, L] -> per-position distributions over the vocabulary [B, T, V] (rows sum to 1)."""

    def __init__(self, vocab_size: int, seq_len: int, cfg: TextGANConfig) -> None:
        super().__init__()
        self.seq_len, self.channels = seq_len, cfg.channels
        self.fc = nn.Linear(cfg.latent_dim, cfg.channels * seq_len)
        self.blocks = nn.Sequential(*(ResBlock(cfg.channels, cfg.kernel_size) for _ in range(cfg.blocks)))
        self.out = nn.Conv1d(cfg.channels, vocab_size, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.size(0), self.channels, self.seq_len)  # [B, C, T]
        logits = self.out(self.blocks(h))  # [B, V, T]
        return F.softmax(logits.float(), dim=1).transpose(1, 2)  # [B, T, V]


class Critic(nn.Module):
    """Distributions over the vocabulary [B, T, V] (one-hot for real text) -> a score [B]."""

    def __init__(self, vocab_size: int, seq_len: int, cfg: TextGANConfig) -> None:
        super().__init__()
        self.inp = nn.Conv1d(vocab_size, cfg.channels, 1)
        self.blocks = nn.Sequential(*(ResBlock(cfg.channels, cfg.kernel_size) for _ in range(cfg.blocks)))
        self.fc = nn.Linear(cfg.channels * seq_len, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.inp(x.transpose(1, 2)))  # [B, C, T]
        return self.fc(h.flatten(1)).squeeze(1)  # [B]


class TextGANFamily(Family):
    """Char-level WGAN-GP: fixed-length windows of text from noise, one forward pass per batch."""

    name: ClassVar[str] = "textgan"
    config_model = TextGANConfig
    losses = ("wasserstein",)
    default_loss = "wasserstein"
    modalities = frozenset({"text"})
    capabilities = frozenset({"text"})
    val_metric = "val_js4"
    progress_metrics = ("loss_d", "loss_g", "wdist", "val_js4")
    optimizers = ("g", "d")
    d_optimizers = frozenset({"d"})

    def build(self) -> None:
        """Modules "g" and "d" over the spec's vocabulary and window length."""
        if self.spec.modality != "text" or not self.spec.vocab_size or not self.spec.seq_len:
            raise ValueError(f"the text GAN needs text data with vocab_size and seq_len, got spec {self.spec}")
        if self.tokenizer is not None and self.tokenizer.vocab_size != self.spec.vocab_size:
            raise ValueError(f"tokenizer vocab_size {self.tokenizer.vocab_size} != data spec {self.spec.vocab_size}")
        m: TextGANConfig = self.cfg.model
        self.vocab_size, self.seq_len = self.spec.vocab_size, self.spec.seq_len
        self.n_critic, self.latent_dim = m.n_critic, m.latent_dim
        self.modules = {
            "g": Generator(self.vocab_size, self.seq_len, m),
            "d": Critic(self.vocab_size, self.seq_len, m),
        }
        self._loss_g: float | None = None

    def build_optimizers(self) -> None:
        """"g" from cfg.optimizer, "d" from cfg.d_optimizer; G's schedule spans steps // n_critic."""
        self.steppers = {
            "g": self.make_stepper(self.modules["g"].parameters(), self.cfg.optimizer),
            "d": self.make_stepper(self.modules["d"].parameters(), self.cfg.d_optimizer),
        }
        if self.total_steps:
            self.steppers["g"].total_steps = max(1, self.total_steps // self.n_critic)

    # -- training -------------------------------------------------------------------------------

    def one_hot(self, batch: Batch) -> torch.Tensor:
        """The batch's first seq_len tokens as one-hot float [B, T, V]; ids outside the vocabulary are errors."""
        tokens = batch["tokens"].to(self.device).long()
        if tokens.dim() != 2 or tokens.size(1) < self.seq_len:
            raise ValueError(f"text GAN batches need tokens [B, >= {self.seq_len}], got {tuple(tokens.shape)}")
        tokens = tokens[:, : self.seq_len]
        if int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0:
            raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {self.vocab_size}")
        return F.one_hot(tokens, self.vocab_size).float()  # [B, T, V]

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One critic step on this batch, plus one generator step on every n_critic-th call."""
        real = self.one_hot(batch)  # [B, T, V]
        B = real.size(0)
        G, D = self.modules["g"], self.modules["d"]  # possibly DDP-wrapped
        G.train()
        D.train()
        take_g_step = (self.step + 1) % self.n_critic == 0
        z = torch.randn(B, self.latent_dim, device=self.device)  # [B, L]
        with torch.set_grad_enabled(take_g_step):
            fake = G(z)  # [B, T, V]
        # (1) critic: the first forward goes through the (DDP) wrapper, which sets up the gradient
        # all-reduce; the fake and the penalty use the raw critic (as the image GAN does)
        D_raw = self.raw("d")
        d_real = D(real)  # [B]
        d_fake = D_raw(fake.detach())  # [B]
        gp = losses.gradient_penalty(D_raw, real, fake.detach())
        loss_d = losses.d_loss("wasserstein", d_real, d_fake) + self.cfg.loss.gp_lambda * gp
        self.steppers["d"].backward(loss_d)
        # (2) generator: the critic frozen, so G's backward leaves no gradient on it
        if take_g_step:
            D_raw.requires_grad_(False)
            try:
                loss_g = losses.g_loss("wasserstein", D_raw(fake))
                self.steppers["g"].backward(loss_g)
            finally:
                D_raw.requires_grad_(True)
            self._loss_g = loss_g.item()
        elif self._loss_g is None:
            self._loss_g = -d_fake.mean().item()
        self.step += 1
        return {
            "loss": loss_d.item(),
            "loss_d": loss_d.item(),
            "loss_g": self._loss_g,
            "wdist": (d_real.mean() - d_fake.mean()).item(),  # the critic's Wasserstein estimate
            "gp": gp.item(),
            "lr": self.steppers["g"].lr,
            "lr_d": self.steppers["d"].lr,
            "chars": float(B * self.seq_len),
        }

    # -- generating -----------------------------------------------------------------------------

    def latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n prior draws [n, L] (on the CPU, so one seed gives the same latents on any device)."""
        return torch.randn(n, self.latent_dim, generator=seeded_generator(seed))

    @torch.no_grad()
    def distributions(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [n, L] -> G's per-position distributions [n, T, V] (float32, on the CPU)."""
        G = self.raw("g")
        was = G.training
        G.eval()
        try:
            return torch.cat([G(c.to(self.device)).float().cpu() for c in z.split(256)]) if len(z) else z.new_zeros(0)
        finally:
            G.train(was)

    def decode_ids(self, probs: torch.Tensor, req: TextRequest, g: torch.Generator) -> torch.Tensor:
        """Token ids [n, T] from distributions [n, T, V]: argmax at temperature 0, else sampled per position."""
        n, T, V = probs.shape
        if req.temperature == 0 and req.top_k is None and req.top_p is None:
            return probs.argmax(-1)
        logits = probs.clamp_min(1e-12).log().reshape(n * T, V)
        return sample_next(logits, req.temperature, req.top_k, req.top_p, g).view(n, T)

    def _check(self, req: TextRequest) -> None:
        if req.prompt:
            raise ValueError("the text GAN is unconditional: it cannot continue a prompt; send an empty prompt")
        if self.tokenizer is None:
            raise ValueError("this text GAN was built without a tokenizer, so it cannot write text")

    def generate_many(self, requests: list[Any]) -> list[list[str]]:
        """Answer several TextRequests with one G pass; each keeps its own seed (same as one by one)."""
        reqs = [TextRequest.model_validate(r) for r in requests]
        for r in reqs:
            self._check(r)
        gens = [seeded_generator(r.seed) for r in reqs]
        z = [torch.randn(r.n, self.latent_dim, generator=g) for r, g in zip(reqs, gens)]
        probs = self.distributions(torch.cat(z)).split([r.n for r in reqs]) if reqs else []
        out = []
        for r, g, p in zip(reqs, gens, probs):
            ids = self.decode_ids(p, r, g)[:, : r.max_new_tokens]  # a sample is one window: at most seq_len chars
            out.append([_cut_at_stop(self.tokenizer.decode(row.tolist()), r.stop) for row in ids])
        return out

    def generate(self, request: Any) -> list[str]:
        """`n` unconditional samples of min(max_new_tokens, seq_len) characters; seeded samples repeat."""
        return self.generate_many([request])[0]

    def sample_texts(self, n: int, seed: int | None = 0, temperature: float = 0.0) -> list[str]:
        """n whole windows (argmax by default), for metrics and benchmarks."""
        req = TextRequest(n=1, seed=0, temperature=temperature, max_new_tokens=self.seq_len)
        reqs = [req.model_copy(update={"seed": (seed or 0) * 100003 + i}) for i in range(n)]
        return [t[0] for t in self.generate_many(reqs)]

    # -- evaluating -----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """val_js4 (and val_js2) between fixed-seed samples' and held-out windows' char n-grams; critic scores."""
        real = torch.cat([self.one_hot(b) for b in batches])  # [N, T, V]
        if real.size(0) < 2:
            raise ValueError("evaluate needs at least 2 validation windows")
        n = min(real.size(0), EVAL_MAX_SAMPLES)
        z = torch.randn(n, self.latent_dim, generator=seeded_generator(self.cfg.train.seed + EVAL_SEED_OFFSET))
        probs = self.distributions(z)  # [n, T, V]
        fake_ids, real_ids = probs.argmax(-1).numpy(), real.argmax(-1).cpu().numpy()
        D = self.raw("d")
        d_real = torch.cat([D(x).float() for x in real[:n].split(256)])
        d_fake = torch.cat([D(x.to(self.device)).float() for x in probs.split(256)])
        return {
            "val_js4": ngram_js(fake_ids, real_ids, 4),
            "val_js2": ngram_js(fake_ids, real_ids, 2),
            "val_wdist": float(d_real.mean() - d_fake.mean()),
        }


def _cut_at_stop(text: str, stop: list[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
