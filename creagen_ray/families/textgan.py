"""The text GAN: a WGAN-GP over character windows (Gulrajani et al. 2017, "Improved Training of
Wasserstein GANs", section 5.3, the char-level language model).

    G: z [B, L] -> Linear -> [B, C, T] -> residual Conv1d blocks -> Conv1d 1x1 -> [B, V, T]
       -> softmax over the vocabulary -> [B, T, V]   (one distribution per position, all at once)
    D: one-hot real chars or G's softmaxes [B, T, V] -> Conv1d 1x1 -> [B, C, T] -> residual blocks
       -> Linear -> score [B]
    loss: critic  mean D(fake) - mean D(real) + gp_lambda * gradient penalty,  generator  -mean D(fake)

Two approaches, chosen by `model.approach` (same family, same serving, same metrics):

- "char" (above): self-contained, no discrete sampling step in the training graph (the critic
  compares G's continuous softmaxes with one-hot real characters), one forward pass per sample.
  Measured (docs/benchmarks.md, "Text generators side by side"): at CPU-minute budgets its samples
  are still character soup (LM score far behind the sentence VAE's prior), because it has to learn
  spelling, words and syntax from a critic's gradient alone; Gulrajani et al. train it ~200k steps.
- "latent" (LaTextGAN, Donahue & Rumshisky 2018): first train a sentence VAE (the `model.vae`
  config, `vae_share` of the steps, optimizer `model.vae_optimizer`), then freeze it and train a
  WGAN-GP whose generator maps noise to the VAE's latent space and whose critic compares those codes
  with the posterior means mu(x) of real windows; a sample is decoded by the VAE's GRU decoder.
  The decoder already writes words; the GAN only has to learn where the aggregate posterior lives
  (the prior N(0, I) puts mass in its holes), which an MLP pair learns in cheap steps. Measured
  (docs/benchmarks.md, issue 12): far ahead of "char" at CPU budgets (LM score about 2.5 vs 4.45
  nats/char on python-docs), so jobs/configs/text-gan.yaml uses it. Its codes lie much nearer the
  posterior means than prior draws do (nearest-neighbour distance, MMD, a 2-sample classifier) and
  decode nearly as well as the training windows' own codes (0.0-0.1 nats/char above them). What it
  gains over the VAE's prior samples is the prior's hole: small when the latent carries little
  (free bits 1.0, 16 nats: a tie), larger with more KL (free bits 2.0, 28 nats: the GAN ahead of
  its own VAE's prior by 0.15-0.38 nats/char on both corpora and two training seeds, but that prior
  is then worse than the 16-nat VAE's), hence jobs/configs/text-gan.yaml's free bits 2.0. Its
  self-BLEU follows its target's (the training codes are more concentrated than N(0, I)): slightly
  above the prior's, with G's codes as spread as the training codes (no mode collapse). At matched
  self-BLEU (bench/text_quality.py --latent-scales) a prior cooled to that spread does about as well:
  the GAN's LM lead is mostly a move along the quality-diversity trade-off. On a VAE that carries
  twice as much (free bits 4.0, 55 nats) the GAN beats that VAE's own prior at equal self-BLEU in
  three runs of four, but its samples are no better than the free-bits-2.0 VAE's cooled prior.
  Over whole quality-diversity frontiers (temperature and latent scale; the shipped configs at full
  length) it ties the shipped sentence VAE on python-docs and trails it on tinyshakespeare, where
  even the decoder on its target codes trails: Caccia et al.'s finding ("Language GANs Falling
  Short") that a likelihood model's temperature sweep matches or beats text GANs.

      G: noise [B, L] -> Linear -> residual MLP blocks (width `channels`) -> Linear -> code [B, Z]
      D: code [B, Z] -> Linear -> residual MLP blocks -> Linear -> score [B]

Training windows are the prepared text shards' `tokens` [B, seq_len + 1]; the char GAN uses the first
seq_len characters, the latent GAN's VAE all seq_len + 1 (as the sentence VAE does). One GAN
`train_step` = one batch = one critic step; G steps on every
`model.n_critic`-th call. The validation metric is `val_js4`: the Jensen-Shannon divergence between
the character 4-gram distributions of fixed-seed samples and of the held-out windows (the measure
Gulrajani et al. report): it rises both for wrong n-grams and for mode collapse. For "latent"
the samples are decoded at temperature 1 (not `model.temperature`) from fixed seeds, and the VAE's held-out ELBO terms are
reported too (val_neg_elbo, val_recon_per_token).

    fam = TextGANFamily(cfg, DataSpec(modality="text", vocab_size=V, seq_len=32), tokenizer=tok)
    fam.train_step({"tokens": int64 [B, 33]})
    fam.generate(TextRequest(n=4, seed=0))  # 4 strings of 32 characters
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from creagen_ray import losses
from creagen_ray.config import (
    ExperimentConfig,
    OptimizerConfig,
    TextModelConfig,
    TextRequest,
    temperature_field,
)
from creagen_ray.families.base import Batch, Family, seeded_generator
from creagen_ray.families.vae import VAEConfig, VAEFamily
from creagen_ray.metrics.text import ngram_js
from creagen_ray.sampling import sample_next

EVAL_SEED_OFFSET = 7919  # evaluate() samples from cfg.train.seed + this: the same z every time
EVAL_MAX_SAMPLES = 512


class TextGANConfig(TextModelConfig):
    """WGAN-GP over one-hot chars ("char") or over a sentence VAE's latent codes ("latent")."""

    family: Literal["textgan"] = "textgan"
    temperature: float = temperature_field(
        0.0, "Default 0, greedy (char: argmax per position; latent: the VAE decoder greedy on G's code, whose "
        "model.vae.temperature is not used). Measured for latent (docs/benchmarks.md, 2,000 steps): LM score "
        "1.1-1.5 nats/char and 8-gram novelty 0.40-0.49, within 0.1 of real text's, vs 2.2 and 0.83-0.87 at T 1",
    )
    approach: Literal["char", "latent"] = Field(
        "char", description="char: conv G of per-position softmaxes; latent: MLP G of sentence-VAE codes (LaTextGAN)"
    )
    latent_dim: int = Field(128, ge=1, le=4096, description="G's noise dimension")
    noise_scale: float = Field(
        1.0, gt=0.0, le=4.0,
        description="a sample feeds G noise from N(0, noise_scale^2 I), as the sentence VAE's prior_scale scales "
        "its prior (1 = the training noise). Training and val_js4 always use N(0, I)",
    )
    channels: int = Field(128, ge=4, le=4096, description="width of every residual block (the paper: 512)")
    blocks: int = Field(5, ge=1, le=32, description="residual blocks in G and in D")
    kernel_size: int = Field(5, ge=1, le=31, description="odd: the conv keeps the window length")
    n_critic: int = Field(5, ge=1, le=20, description="critic steps per generator step (the paper: 10)")
    vae: VAEConfig = Field(
        default_factory=lambda: VAEConfig(
            arch="sentence", latent_dim=32, embed_dim=64, hidden_size=256, kl_anneal_steps=1000,
            word_dropout=0.4, free_bits=0.25,
        ),
        description="latent: the sentence VAE trained first (arch must be sentence)",
    )
    vae_share: float = Field(0.5, gt=0.0, lt=1.0, description="latent: share of train.steps spent on the VAE")
    vae_optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=2e-3, grad_clip=1.0),
        description="latent: the VAE phase's optimizer (optimizer / optimizer_d drive G and D)",
    )

    @field_validator("vae")
    @classmethod
    def _sentence(cls, v: VAEConfig) -> VAEConfig:
        if v.arch != "sentence":
            raise ValueError("model.vae.arch must be 'sentence' (the latent text GAN decodes text)")
        return v

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


class MLPBlock(nn.Module):
    """x + 0.3 * W2 relu(W1 relu(x)) on [B, C] (the conv ResBlock with 1x1 "convs")."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * self.fc2(F.relu(self.fc1(F.relu(x))))


class MLP(nn.Module):
    """[B, n_in] -> Linear -> `blocks` residual MLP blocks of `width` -> ReLU -> Linear -> [B, n_out]."""

    def __init__(self, n_in: int, n_out: int, width: int, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.Sequential(*(MLPBlock(width) for _ in range(blocks)))
        self.out = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.blocks(self.inp(x))))


class CodeCritic(MLP):
    """latent: codes [B, Z] -> a score [B]."""

    def __init__(self, code_dim: int, width: int, blocks: int) -> None:
        super().__init__(code_dim, 1, width, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)


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
        """Modules "g" and "d" (char: over the vocabulary and window; latent: over the VAE's codes, plus "vae")."""
        if self.spec.modality != "text" or not self.spec.vocab_size or not self.spec.seq_len:
            raise ValueError(f"the text GAN needs text data with vocab_size and seq_len, got spec {self.spec}")
        if self.tokenizer is not None and self.tokenizer.vocab_size != self.spec.vocab_size:
            raise ValueError(f"tokenizer vocab_size {self.tokenizer.vocab_size} != data spec {self.spec.vocab_size}")
        m: TextGANConfig = self.cfg.model
        self.vocab_size, self.seq_len = self.spec.vocab_size, self.spec.seq_len
        self.n_critic, self.latent_dim = m.n_critic, m.latent_dim
        self.approach = m.approach
        self._loss_g: float | None = None
        if self.approach == "char":
            self.gan_steps = self.total_steps
            self.modules = {
                "g": Generator(self.vocab_size, self.seq_len, m),
                "d": Critic(self.vocab_size, self.seq_len, m),
            }
            return
        # latent: a sentence VAE (its own family object, trained first), then an MLP GAN on its codes
        steps = self.total_steps or self.cfg.train.steps
        self.vae_steps = max(1, round(steps * m.vae_share))
        self.gan_steps = max(1, steps - self.vae_steps)
        vae_cfg = ExperimentConfig.model_validate({
            **self.cfg.model_dump(mode="json", exclude={"model", "loss", "optimizer", "optimizer_d", "tune"}),
            "model": m.vae.model_dump(mode="json"),
            "optimizer": m.vae_optimizer.model_dump(mode="json"),
        })
        self.vae = VAEFamily(vae_cfg, self.spec, device=self.device, total_steps=self.vae_steps,
                             tokenizer=self.tokenizer, trainable=self.trainable)
        code = m.vae.latent_dim
        self.modules = {
            "vae": self.vae.modules["vae"],
            "g": MLP(m.latent_dim, code, m.channels, m.blocks),
            "d": CodeCritic(code, m.channels, m.blocks),
        }

    def build_optimizers(self) -> None:
        """"g" from cfg.optimizer, "d" from cfg.d_optimizer (latent: and the VAE's own "vae"); G's schedule spans its steps."""
        self.steppers = {
            "g": self.make_stepper(self.modules["g"].parameters(), self.cfg.optimizer),
            "d": self.make_stepper(self.modules["d"].parameters(), self.cfg.d_optimizer),
        }
        if self.gan_steps:
            self.steppers["d"].total_steps = self.gan_steps
            self.steppers["g"].total_steps = max(1, self.gan_steps // self.n_critic)
        if self.approach == "latent":
            self.steppers["vae"] = self.vae.steppers["main"]

    def wrap_modules(self, wrap: Any, names: Iterable[str] | None = None) -> None:
        """Wrap as the base does; the inner VAE trains through the same (DDP) wrapper."""
        super().wrap_modules(wrap, names)
        if self.approach == "latent":
            self.vae.modules["vae"] = self.modules["vae"]

    def set_optimizer_hyperparameters(self, cfg: ExperimentConfig) -> None:
        """PBT: G and D as the base does; the VAE's optimizer follows model.vae_optimizer."""
        self.cfg = cfg
        for name, st in self.steppers.items():
            if name == "vae":
                st.set_hyperparameters(cfg.model.vae_optimizer)
            else:
                st.set_hyperparameters(cfg.d_optimizer if name in self.d_optimizers else cfg.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore as the base does; the inner VAE's step (its KL annealing) follows."""
        super().load_state_dict(state)
        if self.approach == "latent":
            self.vae.step = min(self.step, self.vae_steps)

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

    @torch.no_grad()
    def codes(self, batch: Batch) -> torch.Tensor:
        """latent: the frozen VAE's posterior means of the batch's windows [B, Z] (the "real" data)."""
        tokens = batch["tokens"].to(self.device).long()  # [B, T+1]
        if int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0:
            raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {self.vocab_size}")
        vae = self.raw("vae")
        vae.eval()
        with self.autocast():
            mu, _ = vae.encode(tokens)
        return mu.float()

    def train_step(self, batch: Batch) -> dict[str, float]:
        """char: one critic step (+ a G step every n_critic-th call); latent: a VAE step, or that on its codes."""
        if self.approach == "latent" and self.step < self.vae_steps:
            out = self.vae.train_step(batch)  # the sentence VAE's own step (KL annealing, free bits)
            self.step += 1
            return {**out, "chars": float(batch["tokens"].numel())}
        gan_step = self.step - (self.vae_steps if self.approach == "latent" else 0)
        real = self.one_hot(batch) if self.approach == "char" else self.codes(batch)  # [B, T, V] | [B, Z]
        B = real.size(0)
        G, D = self.modules["g"], self.modules["d"]  # possibly DDP-wrapped
        G.train()
        D.train()
        take_g_step = (gan_step + 1) % self.n_critic == 0
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

    def noise(self, n: int, g: torch.Generator) -> torch.Tensor:
        """n draws [n, L] of a sample's noise from g: N(0, noise_scale^2 I), on the CPU (one seed, any device)."""
        return torch.randn(n, self.latent_dim, generator=g) * self.cfg.model.noise_scale

    def latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n noise draws [n, L] as a seeded sample draws them."""
        return self.noise(n, seeded_generator(seed))

    @torch.no_grad()
    def distributions(self, z: torch.Tensor) -> torch.Tensor:
        """Noise [n, L] -> G's outputs (float32, on the CPU): char distributions [n, T, V] or codes [n, Z]."""
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
        reqs = [self.text_request(r) for r in requests]
        for r in reqs:
            self._check(r)
        gens = [seeded_generator(r.seed) for r in reqs]
        z = [self.noise(r.n, g) for r, g in zip(reqs, gens)]
        outs = self.distributions(torch.cat(z)).split([r.n for r in reqs]) if reqs else []
        texts = []
        for r, g, p in zip(reqs, gens, outs):
            if self.approach == "latent":  # the VAE decoder writes one window per code, sampled from g
                one = r.model_copy(update={"max_new_tokens": min(r.max_new_tokens, self.seq_len)})
                texts.append(self.vae.decode_text(p, one, g))
                continue
            ids = self.decode_ids(p, r, g)[:, : r.max_new_tokens]  # a sample is one window: at most seq_len chars
            texts.append([_cut_at_stop(self.tokenizer.decode(row.tolist()), r.stop) for row in ids])
        return texts

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
        batches = list(batches)
        real = torch.cat([self.one_hot(b) for b in batches])  # [N, T, V]
        if real.size(0) < 2:
            raise ValueError("evaluate needs at least 2 validation windows")
        n = min(real.size(0), EVAL_MAX_SAMPLES)
        seed = self.cfg.train.seed + EVAL_SEED_OFFSET
        z = torch.randn(n, self.latent_dim, generator=seeded_generator(seed))
        fake = self.distributions(z)  # [n, T, V] | [n, Z]
        real_ids = real.argmax(-1).cpu().numpy()
        out: dict[str, float] = {}
        if self.approach == "char":
            fake_ids, real_x = fake.argmax(-1).numpy(), real[:n]
        else:  # decode the codes at temperature 1 (not model.temperature: val_js4 stays as measured), from a fixed seed
            req = TextRequest(n=1, seed=0, max_new_tokens=self.seq_len, temperature=1.0)
            fake_ids = torch.tensor(self.vae.decode_tokens(fake, req, seeded_generator(seed))).numpy()  # [n, T]
            real_x = torch.cat([self.codes(b) for b in batches])[:n]
            out.update(self.vae.evaluate(batches))  # val_neg_elbo, val_recon_per_token, val_kl, ...
            self.train(False)
        D = self.raw("d")
        d_real = torch.cat([D(x).float() for x in real_x.split(256)])
        d_fake = torch.cat([D(x.to(self.device)).float() for x in fake.split(256)])
        out.update({
            "val_js4": ngram_js(fake_ids, real_ids, 4),
            "val_js2": ngram_js(fake_ids, real_ids, 2),
            "val_wdist": float(d_real.mean() - d_fake.mean()),
        })
        return out


def _cut_at_stop(text: str, stop: list[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
