"""Variational autoencoders: a conv VAE for images and the sentence VAE for text (one family, "vae").

Both maximise the ELBO  E_q[log p(x|z)] - KL(q(z|x) || N(0, I))  with the reparameterisation trick
(Kingma & Welling 2014); the training loss per item is

    loss = recon + w * KL,   w = beta * min(1, step / kl_anneal_steps)   (w = beta when anneal = 0)

arch "conv" (images [B, C, S, S], S in 28/32/64/...): ConvEncoder -> (mu, logvar) -> z -> ConvDecoder
  -> logits (`model.hidden_dim` > 0 adds a fully connected layer on each side of z). Reconstruction
  `loss.name` "bce" (Bernoulli on [0, 1] intensities, nats per image) or "mse" (sigmoid(logits) vs x,
  summed over pixels). `model.prior` "normal" is p(z) = N(0, I) with the closed-form KL; "mog" is a
  mixture of `prior_components` diagonal Gaussians whose means, variances and weights are learned
  with the rest of the ELBO (a learned prior as in Tomczak & Welling 2018), KL estimated with the same
  z draw as the reconstruction: log q(z|x) - log p(z); `prior_weights: uniform` fixes the weights at
  1/K (as the VampPrior does), so the components spread by the data's density instead. Samples and
  interpolations decode draws from that prior.
arch "sentence" (Bowman et al. 2016, "Generating Sentences from a Continuous Space"): each training
  window tokens [B, T+1] is one "sentence" (all T+1 tokens are encoded and all T+1 are predicted).
  A GRU reads it into (mu, logvar); a GRU decoder starts from h0 = tanh(W z), gets z concatenated to
  every input, and is teacher-forced on [BOS, w_0 .. w_{T-1}] to predict w_0 .. w_T. Two extra
  input-only ids follow the vocabulary: BOS = V and UNK = V + 1 (word dropout replaces decoder inputs
  by UNK with probability `model.word_dropout`). `loss.name` does not apply (always cross-entropy).
  KL collapse: a strong autoregressive decoder can model the text alone, so early in training the
  cheapest way to lower the loss is q(z|x) = p(z) (KL -> 0, z ignored). Set `model.kl_anneal_steps`
  (start with KL weight 0 so the encoder learns to carry information first) and `word_dropout`
  (~0.25-0.5, so the decoder has to ask z) as Bowman et al. do; without them the KL goes to ~0.

`val_neg_elbo` is the negative ELBO with beta = 1 (one z sample per item, fixed seed): nats per image
(bce) or per sentence; for mse it is summed squared error + KL (-ELBO under N(x_hat, I/2) up to a
constant).

    fam = build_family(cfg, DataSpec(modality="image", channels=1, image_size=28))
    fam.train_step({"image": uint8 [B, 1, 28, 28]})   # {"loss", "recon", "kl", "kl_weight", "lr"}
    fam.sample(16, seed=0)                              # [16, 1, 28, 28] in [0, 1]
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Literal

import torch
from pydantic import Field
from torch import nn

from creagen_ray import losses, metrics
from creagen_ray.config import ImageRequest, InterpolateRequest, TextModelConfig, TextRequest, temperature_field
from creagen_ray.families.base import Batch, Family, latent_walk, prior_latents, seeded_generator
from creagen_ray.families.conv import ConvDecoder, ConvEncoder, Norm, images_to_unit
from creagen_ray.sampling import sample_next


class VAEConfig(TextModelConfig):
    """Conv VAE for images, or the sentence VAE (GRU encoder/decoder) for text."""

    family: Literal["vae"] = "vae"
    arch: Literal["conv", "sentence"] = "conv"
    latent_dim: int = Field(16, ge=1, le=4096)
    base_channels: int = Field(32, ge=4, description="conv arch: channels of the first conv layer")
    hidden_dim: int = Field(
        0, ge=0, description="conv arch: a fully connected hidden layer of this width between the convs and "
        "the latent, on both sides (as bench/reference/vae.py and pytorch/examples); 0 = none"
    )
    norm: Literal["batch", "none"] = Field("batch", description="conv arch: batch norm in the conv stacks, or none")
    prior: Literal["normal", "mog"] = Field(
        "normal",
        description="conv arch: p(z) = N(0, I), or a mixture of prior_components diagonal Gaussians learned with "
        "the rest of the ELBO (its KL term is then the one-sample estimate log q(z|x) - log p(z))",
    )
    prior_components: int = Field(10, ge=1, description="conv arch, prior mog: number of mixture components")
    prior_weights: Literal["learned", "uniform"] = Field(
        "learned",
        description="conv arch, prior mog: mixture weights learned with the ELBO, or fixed at 1/K (then the "
        "components spread by the data's density and prior samples draw every component equally often)",
    )
    beta: float = Field(1.0, ge=0.0, description="weight of the KL term (beta-VAE)")
    kl_anneal_steps: int = Field(0, ge=0, description="KL weight rises linearly 0 -> beta over these steps")
    embed_dim: int = Field(64, ge=1, description="sentence arch")
    hidden_size: int = Field(256, ge=1, description="sentence arch")
    word_dropout: float = Field(0.0, ge=0.0, le=1.0, description="sentence arch: decoder input dropout")
    free_bits: float = Field(
        0.0,
        ge=0.0,
        description="nats per latent: each latent's batch-mean KL counts at least this much in the "
        "training loss (Kingma et al. 2016), so the optimizer gains nothing by collapsing it; 0 = off",
    )
    prior_scale: float = Field(
        0.8, gt=0.0, le=4.0,
        description="sentence arch: an unconditional sample draws z from N(0, prior_scale^2 I), a cooled prior "
        "(reduced-temperature sampling, as Glow and NVAE sample; 1 = the prior itself). Default 0.8: measured "
        "(docs/benchmarks.md, 2,000 steps, two seeds, greedy) Shakespeare's LM score 1.50-1.51 vs 1.57 at 1 at "
        "about the same self-BLEU, and 8-gram novelty within 0.1 of real text on both corpora (0.44-0.55; at 1: "
        "0.46-0.59)",
    )
    temperature: float = temperature_field(
        0.0, "Sentence arch (the conv arch ignores it). Default 0, greedy, as Bowman et al. 2016 decode: the "
        "diversity comes from z. Measured (docs/benchmarks.md, 2,000 steps): LM score 1.3-1.6 nats/char and "
        "8-gram novelty 0.46-0.59 greedy vs 2.3 and 0.87-0.89 (character soup) at T 1; real text 0.43-0.46",
    )


LOG_2PI = math.log(2 * math.pi)
PRIOR_EVAL_SEED_OFFSET = 7919  # evaluate() decodes prior latents from cfg.train.seed + this: the same z every time


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a differentiable draw from q(z|x) [B, L]."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def kl_anneal_weight(step: int, beta: float, anneal_steps: int) -> float:
    """KL weight at `step`: rises linearly 0 -> beta over `anneal_steps`, then stays at beta."""
    if anneal_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, step / anneal_steps)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dim: z, mu, logvar broadcast to [..., L] -> [...]."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


class MixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; m_k, diag(exp(v_k))): K learned diagonal Gaussians in L dimensions."""

    def __init__(self, components: int, latent_dim: int, learn_weights: bool = True) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.randn(components, latent_dim))  # [K, L]
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))  # [K, L]
        # [K]: mixture weights pi = softmax(logits); frozen at 0 (pi = 1/K) unless learn_weights
        self.logits = nn.Parameter(torch.zeros(components), requires_grad=learn_weights)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) [B] for latents z [B, L]."""
        log_pz_k = gaussian_log_prob(z.float().unsqueeze(1), self.means, self.logvars)  # [B, K]
        return torch.logsumexp(torch.log_softmax(self.logits, dim=0) + log_pz_k, dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws [n, L] on the CPU: a component k ~ pi, then z ~ N(m_k, exp(v_k))."""
        means, logvars = self.means.detach().float().cpu(), self.logvars.detach().float().cpu()
        k = torch.multinomial(torch.softmax(self.logits.detach().float().cpu(), 0), n, True, generator=generator)
        return means[k] + torch.exp(0.5 * logvars[k]) * torch.randn(n, means.shape[1], generator=generator)


class ConvVAE(nn.Module):
    """Images [B, C, S, S] <-> latents [B, L] with the conv stacks the GAN also uses.

    hidden > 0 puts a fully connected layer of that width between the convs and the latent on both
    sides: encoder convs -> hidden -> (mu, logvar), decoder z -> hidden -> convs.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int,
        base: int,
        hidden: int = 0,
        norm: Norm = "batch",
        prior_components: int = 0,
        learn_prior_weights: bool = True,
    ) -> None:
        super().__init__()
        # p(z): N(0, I) when prior_components is 0, else a learned Gaussian mixture
        self.prior = MixturePrior(prior_components, latent_dim, learn_prior_weights) if prior_components else None
        if hidden:
            self.encoder = nn.Sequential(
                ConvEncoder(channels, image_size, base, out_dim=hidden, norm=norm),
                nn.ReLU(),
                nn.Linear(hidden, 2 * latent_dim),
            )
            self.decoder = nn.Sequential(
                nn.Linear(latent_dim, hidden), nn.ReLU(), ConvDecoder(hidden, channels, image_size, base, norm=norm)
            )
        else:  # the state-dict layout of bundles trained before hidden_dim existed
            self.encoder = ConvEncoder(channels, image_size, base, out_dim=2 * latent_dim, norm=norm)
            self.decoder = ConvDecoder(latent_dim, channels, image_size, base, norm=norm)
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, S, S] in [0, 1] -> posterior mean and log-variance, each [B, L]."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, L] -> pixel logits [B, C, S, S]."""
        return self.decoder(z)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per item [B]: exact for N(0, I), else log q(z|x) - log p(z) at the drawn z [B, L]."""
        if self.prior is None:
            return losses.kl_normal(mu, logvar)
        return gaussian_log_prob(z.float(), mu.float(), logvar.float()) - self.prior.log_prob(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, C, S, S] -> (logits [B, C, S, S], mu [B, L], logvar [B, L], KL [B]) through one z draw."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar, self.kl(mu, logvar, z)


class SentenceVAE(nn.Module):
    """Token sentences [B, T] <-> latents [B, L]: GRU encoder and a z-conditioned GRU decoder."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, latent_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bos_id, self.unk_id = vocab_size, vocab_size + 1  # input-only ids: start, dropped word
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(vocab_size + 2, embed_dim)
        self.encoder = nn.GRU(embed_dim, hidden_size, batch_first=True)
        self.to_latent = nn.Linear(hidden_size, 2 * latent_dim)
        self.to_hidden = nn.Linear(latent_dim, hidden_size)
        self.decoder = nn.GRU(embed_dim + latent_dim, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, T] -> posterior mean and log-variance, each [B, L]."""
        _, h = self.encoder(self.embed(tokens))  # h [1, B, H]: the last step's state
        mu, logvar = self.to_latent(h[-1]).chunk(2, dim=-1)
        return mu, logvar

    def decode(
        self, inputs: torch.Tensor, z: torch.Tensor, h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder inputs [B, T] (ids incl. BOS/UNK), z [B, L], state [1, B, H] | None -> logits [B, T, V], state."""
        x = self.embed(inputs)  # [B, T, E]
        x = torch.cat([x, z.unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1)  # [B, T, E + L]
        if h is None:
            h = torch.tanh(self.to_hidden(z)).unsqueeze(0)  # [1, B, H]
        out, h = self.decoder(x, h)  # [B, T, H]
        return self.head(out), h

    def forward(
        self, tokens: torch.Tensor, word_dropout: float = 0.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sentences [B, T] -> (logits [B, T, V] predicting tokens, mu, logvar) with teacher forcing."""
        mu, logvar = self.encode(tokens)
        z = reparameterize(mu, logvar, generator)
        bos = torch.full_like(tokens[:, :1], self.bos_id)
        inputs = torch.cat([bos, tokens[:, :-1]], dim=1)  # [B, T]: [BOS, w_0 .. w_{T-2}]
        if self.training and word_dropout > 0:
            drop = torch.rand(inputs.shape, generator=generator, device=inputs.device) < word_dropout
            drop[:, 0] = False  # BOS always stays
            inputs = inputs.masked_fill(drop, self.unk_id)
        logits, _ = self.decode(inputs, z)
        return logits, mu, logvar


class VAEFamily(Family):
    """Conv VAE (images) or sentence VAE (text), trained on the beta-weighted, KL-annealed ELBO."""

    name = "vae"
    config_model = VAEConfig
    losses = ("mse", "bce")
    default_loss = "bce"
    modalities = frozenset({"image", "text"})
    val_metric = "val_neg_elbo"
    progress_metrics = ("loss", "recon", "kl", "val_neg_elbo", "val_prior_fcd")

    @classmethod
    def data_modalities(cls, model: Any) -> frozenset[str]:
        """conv trains on images, sentence on text."""
        return frozenset({"image" if model.arch == "conv" else "text"})

    # conv arch: the training loop attaches the dataset's FeatureNet classifier (see gan.py) and
    # evaluate() then also scores prior samples: val_prior_fcd, precision/recall, class coverage.
    feature_net: nn.Module | None = None

    # -- build ---------------------------------------------------------------------------------

    def build(self) -> None:
        """One module "vae" (a single DDP wrapper covers encoder and decoder)."""
        m = self.cfg.model
        self.arch = m.arch
        if self.arch == "conv":
            if self.spec.modality != "image" or not self.spec.channels or not self.spec.image_size:
                raise ValueError(f"the conv VAE needs image data with channels and image_size, got spec {self.spec}")
            self.recon_name = self.cfg.loss.name or "bce"
            if self.recon_name not in losses.RECONSTRUCTION_LOSSES:
                raise ValueError(f"loss.name={self.recon_name!r}; the conv VAE takes {list(losses.RECONSTRUCTION_LOSSES)}")
            if m.prior == "mog" and m.free_bits > 0:
                raise ValueError("free_bits works on the closed-form KL of the N(0, I) prior; set prior: normal")
            components = m.prior_components if m.prior == "mog" else 0
            self.modules["vae"] = ConvVAE(
                self.spec.channels,
                self.spec.image_size,
                m.latent_dim,
                m.base_channels,
                m.hidden_dim,
                m.norm,
                components,
                m.prior_weights == "learned",
            )
        else:
            if self.spec.modality != "text" or not self.spec.vocab_size:
                raise ValueError(f"the sentence VAE needs text data with a vocab_size, got spec {self.spec}")
            if self.tokenizer is not None and self.tokenizer.vocab_size != self.spec.vocab_size:
                raise ValueError(
                    f"tokenizer vocab_size {self.tokenizer.vocab_size} != data spec vocab_size {self.spec.vocab_size}"
                )
            self.recon_name = "cross_entropy"
            self.modules["vae"] = SentenceVAE(self.spec.vocab_size, m.embed_dim, m.hidden_size, m.latent_dim)

    @property
    def capabilities(self) -> frozenset[str]:  # type: ignore[override]
        """Requests this instance answers: images for conv, text for sentence."""
        return frozenset({"image", "interpolate", "reconstruct"} if self.arch == "conv" else {"text", "prompt"})

    @property
    def kl_weight(self) -> float:
        """The KL weight used by the next train_step (annealed 0 -> beta)."""
        return kl_anneal_weight(self.step, self.cfg.model.beta, self.cfg.model.kl_anneal_steps)

    # -- the ELBO --------------------------------------------------------------------------------

    def _terms(
        self, module: nn.Module, batch: Batch, generator: torch.Generator | None = None, with_posterior: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Per-item reconstruction [B] and KL [B] in nats, plus the model output (or mu, logvar [B, L])."""
        if self.arch == "conv":
            x = images_to_unit(batch["image"].to(self.device))  # [B, C, S, S] in [0, 1]
            with self.autocast():
                logits, mu, logvar, kl = module(x, generator)
            x_hat = logits if self.recon_name == "bce" else torch.sigmoid(logits.float())
            recon = losses.reconstruction_loss(self.recon_name, x_hat, x, reduction="none")  # [B]
        else:
            tokens = batch["tokens"].to(self.device).long()  # [B, T+1]: the whole window is the sentence
            with self.autocast():
                logits, mu, logvar = module(tokens, self.cfg.model.word_dropout, generator)
            recon = losses.cross_entropy(logits, tokens, reduction="none").sum(dim=1)  # [B]
            kl = losses.kl_normal(mu, logvar)
        if with_posterior:
            return recon, kl.float(), mu, logvar
        return recon, kl.float(), logits

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One step on recon + kl_weight * KL (per item, batch mean); metrics in nats per item."""
        self.train(True)
        w, lr = self.kl_weight, self.steppers["main"].lr
        recon, kl, mu, logvar = self._terms(self.modules["vae"], batch, with_posterior=True)
        recon, kl = recon.mean(), kl.mean()
        free_bits = self.cfg.model.free_bits
        if free_bits > 0:  # Kingma et al. 2016: each latent's batch-mean KL counts at least free_bits
            kl_dim = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())).float().mean(dim=0)  # [L]
            loss = recon + w * kl_dim.clamp_min(free_bits).sum()
        else:
            loss = recon + w * kl
        self.steppers["main"].backward(loss)
        self.step += 1
        return {"loss": loss.item(), "recon": recon.item(), "kl": kl.item(), "kl_weight": w, "lr": lr}

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Held-out negative ELBO (beta = 1, one seeded z per item) and its parts, averaged per item."""
        self.train(False)
        module = self.raw("vae")
        g = seeded_generator(0, self.device)  # the same z noise every evaluation: comparable numbers
        n, rec_sum, kl_sum, sq_sum, units = 0, 0.0, 0.0, 0.0, 0  # units: pixels (conv) or tokens (text)
        mus, reals = [], []
        for batch in batches:
            recon, kl, mu, _ = self._terms(module, batch, g, with_posterior=True)
            mus.append(mu.float().cpu())
            if self.arch == "conv":
                reals.append(batch["image"])
            n += recon.numel()
            rec_sum += recon.sum().item()
            kl_sum += kl.sum().item()
            if self.arch == "conv":  # per-pixel error of the mean reconstruction
                x = images_to_unit(batch["image"].to(self.device))
                sq_sum += (self._reconstruct_unit(x) - x).pow(2).sum().item()
                units += x.numel()
            else:
                units += batch["tokens"].numel()
        if n == 0:
            raise ValueError("evaluate() got no batches")
        out = {"val_recon": rec_sum / n, "val_kl": kl_sum / n}
        out["val_neg_elbo"] = out["val_loss"] = out["val_recon"] + out["val_kl"]
        # active units (Burda et al. 2016): latents whose posterior mean varies across inputs (> 0.01)
        mu_all = torch.cat(mus)
        out["val_active_units"] = float((mu_all.var(dim=0) > 0.01).sum()) if mu_all.shape[0] > 1 else 0.0
        if self.arch == "conv":
            out["val_mse"] = sq_sum / units
            if self.feature_net is not None and n >= 8:  # prior samples vs the same real images
                real = torch.cat(reals).to(self.device)
                fake = self.sample(real.shape[0], seed=self.cfg.train.seed + PRIOR_EVAL_SEED_OFFSET)
                quality = metrics.image_quality(self.feature_net, real, fake)
                out.update({f"val_prior_{k}": float(v) for k, v in quality.items()})
        else:
            out["val_recon_per_token"] = rec_sum / units
        return out

    # -- images ----------------------------------------------------------------------------------

    def _need(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise ValueError(f"this {self.arch} VAE cannot do {capability!r}; it offers {sorted(self.capabilities)}")

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [N, L] -> images [N, C, S, S] in [0, 1] (eval mode, no grad)."""
        self.train(False)
        with torch.no_grad(), self.autocast():
            return torch.sigmoid(self.raw("vae").decode(z.to(self.device)).float())

    def _reconstruct_unit(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self._decode(mu)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [N, C, S, S] in [0, 1] (or uint8) -> (mu, logvar) [N, L] of q(z|x)."""
        self._need("reconstruct")
        self.train(False)
        with torch.no_grad(), self.autocast():
            mu, logvar = self.raw("vae").encode(images_to_unit(x.to(self.device)))
        return mu.float(), logvar.float()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, C, S, S] in [0, 1] -> their reconstructions through the posterior mean, same shape."""
        return self._reconstruct_unit(x)

    def latents(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n latents [n, L] from the model's prior p(z); the same seed gives the same latents (drawn on the CPU)."""
        prior = getattr(self.raw("vae"), "prior", None)
        if prior is not None:
            return prior.sample(n, seeded_generator(seed)).to(self.device)
        return prior_latents(n, self.cfg.model.latent_dim, seed, self.device)

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n images [n, C, S, S] in [0, 1] decoded from prior latents drawn from `seed`."""
        self._need("image")
        return self._decode(self.latents(n, seed))

    def interpolate(self, seed_a: int, seed_b: int, steps: int) -> torch.Tensor:
        """A slerp walk [steps, C, S, S] between the latents of sample(1, seed_a) and sample(1, seed_b)."""
        self._need("interpolate")
        z = latent_walk(self.latents(1, seed_a)[0], self.latents(1, seed_b)[0], steps)  # [steps, L]
        return self._decode(z)

    # -- text ------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_text(self, req: TextRequest) -> list[str]:
        """n texts decoded from z ~ p(z), or, with a prompt, continuations of it decoded from z ~ q(z|prompt).

        With a prompt the decoder is fed [BOS, prompt] under a z drawn from the prompt's posterior
        (so the latent "topic" comes from the prompt) and continues from there; the prompt is not
        repeated in the output. Each text is cut before the first stop string it contains.
        """
        self._need("text")
        if self.tokenizer is None:
            raise ValueError("the sentence VAE needs its tokenizer to generate text")
        req = self.text_request(req)
        self.train(False)
        m: SentenceVAE = self.raw("vae")  # type: ignore[assignment]
        g = seeded_generator(req.seed)  # CPU: same seed, same text on any device
        n, L = req.n, m.latent_dim
        prompt = None
        if req.prompt:
            prompt = torch.tensor(self.tokenizer.encode(req.prompt), dtype=torch.long)
            mu, logvar = m.encode(prompt.to(self.device).unsqueeze(0))  # [1, L] each
            z = mu.cpu() + torch.exp(0.5 * logvar.cpu()) * torch.randn(n, L, generator=g)  # [n, L]
        else:
            z = torch.randn(n, L, generator=g) * self.cfg.model.prior_scale  # [n, L] from the (cooled) prior
        return self.decode_text(z, req, g, prompt)

    def decode_text(
        self, z: torch.Tensor, req: TextRequest, g: torch.Generator, prompt: torch.Tensor | None = None
    ) -> list[str]:
        """Texts decoded from latents z [n, L] (after [BOS, prompt]), each cut before its first stop string."""
        return [_cut_at_stop(self.tokenizer.decode(o), req.stop) for o in self.decode_tokens(z, req, g, prompt)]

    @torch.no_grad()
    def decode_tokens(
        self, z: torch.Tensor, req: TextRequest, g: torch.Generator, prompt: torch.Tensor | None = None
    ) -> list[list[int]]:
        """Token ids decoded from latents z [n, L] (after [BOS, prompt]), sampled with `req`'s settings from `g`."""
        req = self.text_request(req)
        self.train(False)
        m: SentenceVAE = self.raw("vae")  # type: ignore[assignment]
        n = z.size(0)
        inputs = torch.full((n, 1), m.bos_id, dtype=torch.long)  # [n, 1]
        if prompt is not None:
            inputs = torch.cat([inputs, prompt.expand(n, -1)], dim=1)  # [n, 1 + P]
        z = z.to(self.device)
        with self.autocast():
            logits, h = m.decode(inputs.to(self.device), z)
        out: list[list[int]] = [[] for _ in range(n)]
        for _ in range(req.max_new_tokens):  # one GRU step per token: the state carries the prefix
            ids = sample_next(logits[:, -1].float().cpu(), req.temperature, req.top_k, req.top_p, g)  # [n]
            for i, t in enumerate(ids.tolist()):
                out[i].append(t)
            if req.stop and all(any(s in self.tokenizer.decode(o) for s in req.stop) for o in out):
                break
            with self.autocast():
                logits, h = m.decode(ids.view(n, 1).to(self.device), z, h)
        return out

    # -- requests --------------------------------------------------------------------------------

    def generate(self, request: Any) -> Any:
        """ImageRequest -> [n, C, S, S]; InterpolateRequest -> [steps, C, S, S]; TextRequest -> list[str]."""
        if isinstance(request, ImageRequest):
            return self.sample(request.n, request.seed)
        if isinstance(request, InterpolateRequest):
            return self.interpolate(request.seed_a, request.seed_b, request.steps)
        if isinstance(request, TextRequest):
            return self.generate_text(request)
        raise TypeError(f"the VAE does not answer {type(request).__name__}")

    def generate_many(self, requests: list[Any]) -> list[Any]:
        """Answer several requests; all ImageRequests share one decoder pass (same results as one by one)."""
        images = [r for r in requests if isinstance(r, ImageRequest)]
        chunks: Iterator[torch.Tensor] = iter(())
        if images:
            self._need("image")
            z = torch.cat([self.latents(r.n, r.seed) for r in images])  # each request's own seed
            chunks = iter(self._decode(z).split([r.n for r in images]))
        return [next(chunks) if isinstance(r, ImageRequest) else self.generate(r) for r in requests]


def _cut_at_stop(text: str, stop: list[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
