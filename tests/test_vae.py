"""The VAE family: conv VAE on images (MNIST, drawn shapes, 28/32/64 px, 1/3 channels) and the sentence VAE.

Small models and a few hundred steps at most, so each test runs in seconds on a CPU.

    .venv/bin/python -m pytest tests/test_vae.py -x -q
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from creagen_ray.config import (
    DataConfig,
    DataSpec,
    ExperimentConfig,
    ImageRequest,
    InterpolateRequest,
    LossConfig,
    OptimizerConfig,
    TextRequest,
    VAEConfig,
)
from creagen_ray.families import build_family
from creagen_ray.families.base import seeded_generator
from creagen_ray.families.vae import VAEFamily, kl_anneal_weight
from creagen_ray.tokenizer import CharTokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny models gain nothing from two, and the CPUs are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def make_image_vae(channels: int = 1, size: int = 28, loss: str = "bce", lr: float = 2e-3, **model) -> VAEFamily:
    """A small conv VAE for `channels` x `size` x `size` images."""
    model = {"latent_dim": 8, "base_channels": 8, **model}
    cfg = ExperimentConfig(
        data=DataConfig(modality="image"),
        model=VAEConfig(arch="conv", **model),
        loss=LossConfig(name=loss),
        optimizer=OptimizerConfig(lr=lr),
    )
    return build_family(cfg, DataSpec(modality="image", channels=channels, image_size=size))


def drawn_shapes(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """n uint8 images [n, C, S, S]: one filled square or disc of random size, place and colour on black."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, channels, size, size), np.uint8)
    for i in range(n):
        r = rng.uniform(0.15, 0.3) * size
        cy, cx = rng.uniform(r, size - r, 2)
        if i % 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        out[i][:, mask] = rng.integers(128, 256, channels)[:, None]
    return torch.from_numpy(out)


def read_idx_images(path: Path) -> torch.Tensor:
    """An MNIST idx3 .gz file -> uint8 [N, 1, 28, 28]."""
    raw = gzip.open(path).read()
    n, h, w = np.frombuffer(raw, ">i4", count=3, offset=4)
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w).copy())


def train(fam: VAEFamily, data: torch.Tensor, steps: int, batch: int, key: str = "image") -> list[dict]:
    """`steps` train_steps on random batches of `data` (seeded); returns the metric dicts."""
    g = torch.Generator().manual_seed(0)
    return [fam.train_step({key: data[torch.randint(0, len(data), (batch,), generator=g)]}) for _ in range(steps)]


def mean_loss(history: list[dict]) -> float:
    """Mean training loss over some steps (smooths single-batch noise)."""
    return float(np.mean([h["loss"] for h in history]))


def batches(data: torch.Tensor, size: int, key: str = "image") -> list[dict]:
    """Split `data` into evaluation batches."""
    return [{key: data[i : i + size]} for i in range(0, len(data), size)]


# ----------------------------------------------------------------------------------------------
# conv VAE: training


def test_conv_vae_trains_on_mnist(mnist_paths):
    """200 steps of batch 32 on MNIST (index % 5 != 0): train loss < 40% of the start; held-out -ELBO < 200 nats."""
    images = read_idx_images(mnist_paths[0])
    idx = torch.arange(len(images))
    train_x, val_x = images[idx % 5 != 0], images[idx % 5 == 0][:500]
    fam = make_image_vae(latent_dim=16, base_channels=16)
    before = fam.evaluate(batches(val_x, 250))
    hist = train(fam, train_x, steps=200, batch=32)
    after = fam.evaluate(batches(val_x, 250))
    assert mean_loss(hist[-20:]) < 0.4 * mean_loss(hist[:5])
    assert before["val_neg_elbo"] > 450  # about 784 * log 2 = 543 nats for a blank decoder
    assert after["val_neg_elbo"] < 200 < before["val_neg_elbo"]
    assert after["val_mse"] < 0.5 * before["val_mse"]


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_conv_vae_trains_on_drawn_shapes(loss):
    """Both reconstruction losses train on numpy-drawn shapes: train loss halves, held-out -ELBO falls."""
    data = drawn_shapes(600)
    train_x, val_x = data[:500], data[500:]
    fam = make_image_vae(loss=loss)
    before = fam.evaluate(batches(val_x, 100))
    hist = train(fam, train_x, steps=120, batch=32)
    after = fam.evaluate(batches(val_x, 100))
    assert mean_loss(hist[-10:]) < 0.5 * mean_loss(hist[:5])
    assert after["val_neg_elbo"] < 0.7 * before["val_neg_elbo"]
    assert after["val_mse"] < before["val_mse"]


@pytest.mark.parametrize("size,channels", [(28, 1), (28, 3), (32, 1), (32, 3), (64, 1), (64, 3)])
def test_conv_vae_sizes_and_channels(size, channels):
    """Each supported side and channel count trains a couple of steps and gives the right shapes and range."""
    fam = make_image_vae(channels, size)
    data = drawn_shapes(8, size, channels)
    for h in train(fam, data, steps=2, batch=4):
        assert set(h) == {"loss", "recon", "kl", "kl_weight", "lr"} and np.isfinite(h["loss"])
    metrics = fam.evaluate(batches(data, 4))
    assert set(metrics) >= {"val_neg_elbo", "val_recon", "val_kl", "val_loss", "val_mse"}
    assert metrics["val_loss"] == metrics["val_neg_elbo"]
    shape = (channels, size, size)
    x = data[:3].float() / 255
    mu, logvar = fam.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    for out, n in [(fam.sample(5, seed=0), 5), (fam.reconstruct(x), 3), (fam.interpolate(0, 1, 4), 4)]:
        assert out.shape == (n, *shape) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


def test_val_neg_elbo_is_recon_plus_kl_at_beta_one():
    """Evaluation reports the true -ELBO (beta = 1) whatever the training beta."""
    fam = make_image_vae(beta=0.25)
    m = fam.evaluate(batches(drawn_shapes(16), 8))
    assert m["val_neg_elbo"] == pytest.approx(m["val_recon"] + m["val_kl"])
    assert m == fam.evaluate(batches(drawn_shapes(16), 8))  # seeded z noise: repeatable


def test_kl_annealing_weights():
    """The KL weight rises linearly 0 -> beta over kl_anneal_steps and is beta without annealing."""
    fam = make_image_vae(beta=0.5, kl_anneal_steps=4)
    hist = train(fam, drawn_shapes(16), steps=6, batch=4)
    assert [h["kl_weight"] for h in hist] == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    for h in hist:
        assert h["loss"] == pytest.approx(h["recon"] + h["kl_weight"] * h["kl"], rel=1e-5)
    assert fam.step == 6 and fam.kl_weight == 0.5
    assert kl_anneal_weight(0, 2.0, 0) == 2.0 and kl_anneal_weight(50, 2.0, 100) == 1.0


# ----------------------------------------------------------------------------------------------
# conv VAE: generation, determinism, persistence, errors


def test_same_seed_same_samples_and_interpolation_endpoints():
    """A seed fixes the samples; an interpolation starts and ends at its two seeds' samples."""
    fam = make_image_vae()
    train(fam, drawn_shapes(32), steps=3, batch=8)  # leave the BN running stats off their init
    assert torch.equal(fam.sample(4, seed=7), fam.sample(4, seed=7))
    assert not torch.equal(fam.sample(4, seed=7), fam.sample(4, seed=8))
    walk = fam.interpolate(3, 9, 5)
    torch.testing.assert_close(walk[0], fam.sample(1, seed=3)[0])
    torch.testing.assert_close(walk[-1], fam.sample(1, seed=9)[0])


def test_generate_and_generate_many_equal_one_by_one():
    """generate_many batches ImageRequests into one decoder pass; results match one-by-one generate."""
    fam = make_image_vae()
    train(fam, drawn_shapes(32), steps=3, batch=8)
    reqs = [ImageRequest(n=2, seed=1), InterpolateRequest(seed_a=0, seed_b=5, steps=3), ImageRequest(n=3, seed=2)]
    many = fam.generate_many(reqs)
    assert [tuple(o.shape) for o in many] == [(2, 1, 28, 28), (3, 1, 28, 28), (3, 1, 28, 28)]
    for req, out in zip(reqs, many):
        torch.testing.assert_close(out, fam.generate(req), rtol=0, atol=1e-6)
    assert fam.capabilities == {"image", "interpolate", "reconstruct"}
    with pytest.raises(ValueError, match="cannot do 'text'"):
        fam.generate(TextRequest(prompt="hi"))


def test_save_load_gives_identical_samples_and_training():
    """state_dict/load_state_dict and weights/load_weights reproduce samples; a resumed step matches."""
    fam = make_image_vae(kl_anneal_steps=10)
    data = drawn_shapes(32)
    train(fam, data, steps=5, batch=8)
    ref = fam.sample(6, seed=3)

    torch.manual_seed(123)  # a differently initialised twin
    twin = make_image_vae(kl_anneal_steps=10)
    assert not torch.equal(twin.sample(6, seed=3), ref)
    twin.load_state_dict(fam.state_dict())
    assert twin.step == 5 and torch.equal(twin.sample(6, seed=3), ref)
    torch.manual_seed(5)
    a = fam.train_step({"image": data[:8]})
    torch.manual_seed(5)
    b = twin.train_step({"image": data[:8]})
    assert a == b  # optimizer state, schedule and anneal step all resumed

    served = make_image_vae()
    served.load_weights(fam.weights())
    assert torch.equal(served.sample(6, seed=3), fam.sample(6, seed=3))


def test_mixture_prior_kl_samples_and_persistence():
    """prior mog: the one-sample KL averages to the exact KL when the mixture is N(0, I); the mixture's
    parameters learn with the ELBO (with prior_weights uniform all but the weights); samples come from the mixture
    (seeded) and survive save/load."""
    from creagen_ray import losses
    from creagen_ray.families.vae import MixturePrior

    fam = make_image_vae(prior="mog", prior_components=1, hidden_dim=16, norm="none")
    vae = fam.raw("vae")
    assert isinstance(vae.prior, MixturePrior) and vae.prior.means.shape == (1, 8)
    with torch.no_grad():  # one component at N(0, I): the prior of the plain VAE
        vae.prior.means.zero_()
        mu, logvar = torch.randn(4, 8), torch.randn(4, 8) * 0.3
        z = mu + torch.exp(0.5 * logvar) * torch.randn(20000, 4, 8)  # [S, B, L] posterior draws
        s = z.shape[0]
        estimate = vae.kl(mu.repeat(s, 1), logvar.repeat(s, 1), z.reshape(-1, 8)).view(s, 4).mean(0)
    torch.testing.assert_close(estimate, losses.kl_normal(mu, logvar), rtol=0.03, atol=0.05)

    fam = make_image_vae(prior="mog", prior_components=5)
    before = {k: v.clone() for k, v in fam.raw("vae").prior.state_dict().items()}
    hist = train(fam, drawn_shapes(32), steps=3, batch=8)
    assert all(h["loss"] == pytest.approx(h["recon"] + h["kl"], rel=1e-5) for h in hist)
    after = fam.raw("vae").prior.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # means, logvars, weights all trained
    z = fam.latents(4000, seed=1)
    assert torch.equal(z, fam.latents(4000, seed=1))
    prior = fam.raw("vae").prior
    nearest = torch.cdist(z, prior.means.detach()).argmin(1)  # the draws sit around the mixture's means
    assert len(nearest.unique()) == 5
    assert (z - prior.means.detach()[nearest]).pow(2).sum(1).mean() < z.pow(2).sum(1).mean()
    twin = make_image_vae(prior="mog", prior_components=5)
    twin.load_weights(fam.weights())
    assert torch.equal(twin.sample(3, seed=2), fam.sample(3, seed=2))
    with pytest.raises(ValueError, match="free_bits"):
        make_image_vae(prior="mog", free_bits=0.1)

    # prior_weights uniform: means and variances train, the weights stay 1/K and samples draw each component equally
    fam = make_image_vae(prior="mog", prior_components=5, prior_weights="uniform")
    before = {k: v.clone() for k, v in fam.raw("vae").prior.state_dict().items()}
    train(fam, drawn_shapes(32), steps=3, batch=8)
    after = fam.raw("vae").prior.state_dict()
    assert not torch.equal(before["means"], after["means"]) and not torch.equal(before["logvars"], after["logvars"])
    assert torch.equal(after["logits"], torch.zeros(5))
    prior = fam.raw("vae").prior
    with torch.no_grad():  # components far apart: the nearest mean names the component each draw came from
        prior.means.copy_(100.0 * torch.eye(5, 8))
    counts = torch.bincount(torch.cdist(fam.latents(5000, seed=3), prior.means).argmin(1), minlength=5)
    assert counts.min() > 850 and counts.max() < 1150, counts


def test_mismatched_image_sizes_are_clear_errors():
    """Images of the wrong side/channels, unsupported sizes and foreign weights fail with a message."""
    fam = make_image_vae(1, 28)
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 28, 28\], got \[2, 1, 32, 32\]"):
        fam.train_step({"image": drawn_shapes(2, 32)})
    with pytest.raises(ValueError, match="28, 28"):
        fam.reconstruct(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="image size 30 is not supported"):
        make_image_vae(1, 30)
    with pytest.raises(ValueError, match="do not fit"):
        fam.load_weights(make_image_vae(1, 32).weights())


# ----------------------------------------------------------------------------------------------
# sentence VAE


@pytest.fixture(scope="module")
def docs_text() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """Python's embedded pydoc topics as windows [N, 25]: the first 90% for training, the rest held out."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    tok = CharTokenizer.fit(text)
    ids = torch.tensor(tok.encode(text))
    n = len(ids) // 25
    windows = ids[: n * 25].view(n, 25)  # seq_len 24 (+1)
    cut = int(0.9 * n)
    return tok, windows[:cut], windows[cut:][:256]


def make_sentence_vae(tok: CharTokenizer, **model) -> VAEFamily:
    """A small sentence VAE over `tok`'s vocabulary."""
    model = {"latent_dim": 8, "embed_dim": 16, "hidden_size": 64, "kl_anneal_steps": 50, "word_dropout": 0.25, **model}
    cfg = ExperimentConfig(
        data=DataConfig(modality="text", seq_len=24),
        model=VAEConfig(arch="sentence", **model),
        optimizer=OptimizerConfig(lr=5e-3),
    )
    return build_family(cfg, DataSpec(modality="text", vocab_size=tok.vocab_size, seq_len=24), tokenizer=tok)


def test_sentence_vae_trains_and_samples_text(docs_text):
    """100 steps: train loss < 75% of the start, held-out -ELBO falls; samples are vocab text, seeded."""
    tok, train_w, val_w = docs_text
    fam = make_sentence_vae(tok)
    assert fam.capabilities == {"text", "prompt"}
    before = fam.evaluate(batches(val_w, 128, "tokens"))
    hist = train(fam, train_w, steps=100, batch=16, key="tokens")
    after = fam.evaluate(batches(val_w, 128, "tokens"))
    assert mean_loss(hist[-10:]) < 0.75 * mean_loss(hist[:5])
    assert after["val_neg_elbo"] < 0.8 * before["val_neg_elbo"]
    assert after["val_loss"] == after["val_neg_elbo"] == pytest.approx(after["val_recon"] + after["val_kl"])

    req = TextRequest(n=3, seed=11, max_new_tokens=40, temperature=0.8, top_p=0.95)
    texts = fam.generate(req)
    assert len(texts) == 3 and all(len(t) == 40 and set(t) <= set(tok.chars) for t in texts)
    assert fam.generate(req) == texts
    assert fam.generate(req.model_copy(update={"seed": 12})) != texts
    # top_k=1 leaves one token per step: the same text as greedy decoding under the same z
    greedy = TextRequest(n=2, seed=4, max_new_tokens=20, temperature=0)
    assert fam.generate(greedy.model_copy(update={"temperature": 1.0, "top_k": 1})) == fam.generate(greedy)
    # no temperature = the model's default: greedy (model.temperature 0); the explicit 0.8 above overrode it
    assert fam.default_temperature == 0.0
    default = fam.generate(req.model_copy(update={"temperature": None, "top_p": None}))
    assert default == fam.generate(req.model_copy(update={"temperature": 0.0, "top_p": None})) != texts
    # an unconditional sample decodes z ~ N(0, prior_scale^2 I), z drawn from the request's seed first
    assert fam.cfg.model.prior_scale == 0.8
    g = seeded_generator(11)
    z = torch.randn(3, 8, generator=g)  # [3, L]: N(0, I) draws
    assert fam.decode_text(z * 0.8, req, g) == texts
    g = seeded_generator(11)
    assert fam.decode_text(torch.randn(3, 8, generator=g), req, g) != texts  # the same draws, unscaled
    # a prompt conditions z and the decoder state; the continuation excludes it and honours stop
    cont = fam.generate(TextRequest(prompt="The ", n=2, seed=1, max_new_tokens=30, stop=["e"]))
    assert len(cont) == 2 and all("e" not in t and len(t) <= 30 for t in cont)
    with pytest.raises(ValueError, match="cannot do 'image'"):
        fam.sample(2, seed=0)


def test_sentence_vae_save_load_same_text(docs_text):
    """weights -> load_weights reproduces the sampled text; a tokenizer of another size is refused."""
    tok, train_w, _ = docs_text
    fam = make_sentence_vae(tok)
    train(fam, train_w, steps=3, batch=8, key="tokens")
    twin = make_sentence_vae(tok)
    twin.load_weights(fam.weights())
    req = TextRequest(n=2, seed=3, max_new_tokens=25)
    assert twin.generate(req) == fam.generate(req)
    with pytest.raises(ValueError, match="vocab_size"):
        build_family(fam.cfg, DataSpec(modality="text", vocab_size=tok.vocab_size + 1), tokenizer=tok)
