"""Tiny real bundles for the serving tests: families built and trained a few dozen steps in-process.

Each is built on one torch thread: measured on the shared 2-core machine (load 9-14), test_serve's four
bundles took 0.5-0.8 s wall on 1 thread and 14.7-30.1 s on the default 2 (threads spinning against
other processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from creagen_ray.bundle import write_bundle
from creagen_ray.config import DataConfig, DataSpec, ExperimentConfig, TrainConfig
from creagen_ray.families import build_family
from creagen_ray.tokenizer import CharTokenizer
from creagen_ray.training.checkpoint import one_torch_thread

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
IMAGE_SIZE = 16


@one_torch_thread()
def text_bundle(
    out: Path, steps: int = 30, seq_len: int = 32, extra_files: dict[str, bytes] | None = None,
    temperature: float | None = None,
) -> Path:
    """A small char GRU trained `steps` steps on a pangram; vocab = the pangram's characters.

    `temperature`: its model.temperature (the default a request without one decodes at); None = the rnn's default.
    """
    tok = CharTokenizer.fit(TEXT)
    model: dict[str, Any] = {"family": "rnn", "embed_dim": 16, "hidden_size": 32, "num_layers": 1}
    if temperature is not None:
        model["temperature"] = temperature
    cfg = ExperimentConfig(
        name="tiny-rnn",
        data=DataConfig(modality="text", seq_len=seq_len),
        model=model,
        train=TrainConfig(steps=steps, batch_size=16),
    )
    spec = DataSpec(modality="text", vocab_size=tok.vocab_size, seq_len=seq_len)
    family = build_family(cfg, spec, total_steps=steps, tokenizer=tok)
    train_on_pangram(family, tok, steps, seq_len)
    return write_bundle(family, out, metrics={"loss": 1.0, "steps": steps}, extra_files=extra_files)


def train_on_pangram(family: Any, tok: CharTokenizer, steps: int, seq_len: int) -> None:
    """`steps` seeded train steps of `family` on random windows (16 per batch) of the pangram."""
    ids = torch.tensor(tok.encode(TEXT))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (16,), generator=g)
        family.train_step({"tokens": torch.stack([ids[s : s + seq_len + 1] for s in starts])})


def shapes(n: int, seed: int = 0) -> torch.Tensor:
    """n uint8 images [n, 1, 16, 16]: one bright axis-aligned rectangle each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for i in range(n):
        r0, c0 = torch.randint(0, 8, (2,), generator=g).tolist()
        h, w = torch.randint(4, 8, (2,), generator=g).tolist()
        x[i, 0, r0 : r0 + h, c0 : c0 + w] = 255
    return x


@one_torch_thread()
def image_bundle(out: Path, family_name: str, steps: int = 20) -> Path:
    """A small conv VAE or DCGAN on 16x16 rectangles, trained `steps` steps."""
    model = {"family": family_name, "latent_dim": 8}
    model.update({"base_channels": 8} if family_name == "vae" else {"g_channels": 8, "d_channels": 8})
    cfg = ExperimentConfig(
        name=f"tiny-{family_name}",
        data=DataConfig(modality="image", image_size=IMAGE_SIZE, channels=1),
        model=model,
        train=TrainConfig(steps=steps, batch_size=16),
    )
    spec = DataSpec(modality="image", channels=1, image_size=IMAGE_SIZE)
    family = build_family(cfg, spec, total_steps=steps)
    for i in range(steps):
        family.train_step({"image": shapes(16, seed=i)})
    return write_bundle(family, out, metrics={"loss": 0.5, "steps": steps})


@one_torch_thread()
def textgan_bundle(out: Path, steps: int = 20, seq_len: int = 32) -> Path:
    """A small latent text GAN (text-gan.yaml's approach: sentence VAE steps, then WGAN-GP steps on its
    codes) trained `steps` steps on the pangram; vocab = the pangram's characters."""
    tok = CharTokenizer.fit(TEXT)
    cfg = ExperimentConfig(
        name="tiny-textgan",
        data=DataConfig(modality="text", seq_len=seq_len),
        model={"family": "textgan", "approach": "latent", "latent_dim": 8, "channels": 16, "blocks": 1,
               "vae": {"arch": "sentence", "latent_dim": 8, "embed_dim": 16, "hidden_size": 32}, "vae_share": 0.5},
        train=TrainConfig(steps=steps, batch_size=16),
    )
    spec = DataSpec(modality="text", vocab_size=tok.vocab_size, seq_len=seq_len)
    torch.manual_seed(0)
    family = build_family(cfg, spec, total_steps=steps, tokenizer=tok)
    train_on_pangram(family, tok, steps, seq_len)
    return write_bundle(family, out, metrics={"loss": 1.0, "steps": steps})


@one_torch_thread()
def toy_bundle(out: Path, steps: int = 40) -> Path:
    """The test-only "toy" bigram family (tests/toy_family.py, registered by importing it) trained `steps`
    steps on the pangram; vocab = the pangram's characters."""
    tok = CharTokenizer.fit(TEXT)
    cfg = ExperimentConfig(
        name="toy",
        data=DataConfig(modality="text", seq_len=32),
        model={"family": "toy"},
        optimizer={"name": "adam", "lr": 0.05},
        train=TrainConfig(steps=steps, batch_size=16),
    )
    spec = DataSpec(modality="text", vocab_size=tok.vocab_size, seq_len=32)
    family = build_family(cfg, spec, total_steps=steps, tokenizer=tok)
    train_on_pangram(family, tok, steps, seq_len=32)
    return write_bundle(family, out, metrics={"steps": steps})
