"""GAN family: training improves FID on MNIST and drawn shapes, WGAN-GP wiring, n_critic, seeds, I/O.

    .venv/bin/python -m pytest tests/test_gan.py -x -q
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from creagen_ray import metrics
from creagen_ray.config import (
    DataConfig,
    DataSpec,
    ExperimentConfig,
    GANConfig,
    ImageRequest,
    InterpolateRequest,
    LossConfig,
    OptimizerConfig,
    TrainConfig,
)
from creagen_ray.families import build_family
from creagen_ray.families.gan import GANFamily


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and on a loaded 2-core machine two OpenMP
    threads spin-wait on each other (measured ~70x slower per step under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_gan(
    loss: str = "bce",
    size: int = 16,
    channels: int = 1,
    n_critic: int = 1,
    width: int = 8,
    latent: int = 16,
    lr: float = 5e-4,
    optimizer_d: OptimizerConfig | None = None,
    seed: int = 0,
    spectral_norm: bool = False,
) -> GANFamily:
    """A small GAN on CPU; DCGAN's Adam betas (WGAN-GP's (0, 0.9) for wasserstein), no clipping."""
    betas = (0.0, 0.9) if loss == "wasserstein" else (0.5, 0.999)
    cfg = ExperimentConfig(
        data=DataConfig(modality="image"),
        model=GANConfig(latent_dim=latent, g_channels=width, d_channels=width, n_critic=n_critic,
                        spectral_norm=spectral_norm),
        loss=LossConfig(name=loss),
        optimizer=OptimizerConfig(lr=lr, betas=betas, grad_clip=None),
        optimizer_d=optimizer_d,
        train=TrainConfig(steps=1000, seed=seed),
    )
    torch.manual_seed(seed)
    fam = build_family(cfg, DataSpec(modality="image", channels=channels, image_size=size))
    assert isinstance(fam, GANFamily)
    return fam


def random_batch(n: int = 8, size: int = 16, channels: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """uint8 noise images, as the data pipeline yields them."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)}


# ----------------------------------------------------------------------------------------------
# data: MNIST from ../shared (idx files) and drawn shapes (no files needed)


def read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (gzip) -> uint8 array: images [N, 28, 28] or labels [N]."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@pytest.fixture(scope="module")
def mnist(mnist_paths) -> dict[str, torch.Tensor]:
    """MNIST t10k split the shared way: index % 5 != 0 trains (8000), index % 5 == 0 evaluates (2000)."""
    images = torch.from_numpy(read_idx(mnist_paths[0]).copy()).unsqueeze(1)  # [10000, 1, 28, 28] uint8
    labels = torch.from_numpy(read_idx(mnist_paths[1]).astype(np.int64))  # [10000]
    is_eval = torch.arange(len(images)) % 5 == 0
    return {"train": images[~is_eval], "train_labels": labels[~is_eval], "eval": images[is_eval]}


@pytest.fixture(scope="module")
def mnist_features(mnist) -> metrics.FeatureNet:
    """A FeatureNet trained briefly on the MNIST training labels (the features of val_fcd)."""
    return metrics.train_feature_net(mnist["train"], mnist["train_labels"], num_classes=10, steps=150, batch_size=64)


def draw_shapes(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """n uint8 images [n, 1, size, size]: one filled disc or square each, random place and size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        r = rng.uniform(size * 0.15, size * 0.3)
        cy, cx = rng.uniform(r, size - r, 2)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        out[i, 0][mask] = 255
    return torch.from_numpy(out)


def train_and_score(
    fam: GANFamily, train: torch.Tensor, real_eval: torch.Tensor, net: torch.nn.Module, steps: int, batch: int
) -> dict[str, float]:
    """FID of fixed-seed samples vs real_eval before and after `steps` train_steps on random batches."""
    n_eval = len(real_eval)
    real_stats = metrics.feature_stats(net, real_eval)
    fid_before = metrics.fid(net, real_stats, fam.sample(n_eval, seed=123))
    g = torch.Generator().manual_seed(0)
    history = []
    t0 = time.perf_counter()
    for _ in range(steps):
        history.append(fam.train_step({"image": train[torch.randint(0, len(train), (batch,), generator=g)]}))
    seconds = time.perf_counter() - t0
    fid_after = metrics.fid(net, real_stats, fam.sample(n_eval, seed=123))
    assert all(np.isfinite(h["loss"]) for h in history)

    def mean(key: str, part: list[dict[str, float]]) -> float:
        return float(np.mean([h[key] for h in part]))

    out = {
        "fid_before": fid_before,
        "fid_after": fid_after,
        "loss_d_start": mean("loss_d", history[:10]),
        "loss_d_end": mean("loss_d", history[-10:]),
        "loss_g_start": mean("loss_g", history[:10]),
        "loss_g_end": mean("loss_g", history[-10:]),
        "seconds": seconds,
        "images_per_s": steps * batch / seconds,
    }
    print({k: round(v, 3) for k, v in out.items()})
    return out


# ----------------------------------------------------------------------------------------------
# training moves the generator towards the data


@pytest.mark.shared
@pytest.mark.parametrize("loss", ["bce", "hinge", "wasserstein"])
def test_mnist_fid_falls(loss: str, mnist, mnist_features) -> None:
    """200 steps on MNIST (8000 train images, index % 5 != 0) at least halve FID vs 500 held-out images.

    Measured here (1 thread): FID 796 -> bce ~142, hinge ~178, wasserstein ~91. WGAN-GP is run with
    n_critic=1 and G at twice D's learning rate: in so few steps the textbook n_critic=5 and equal
    rates (1e-4..1e-3) left FID above ~350.
    """
    if loss == "wasserstein":
        d_opt = OptimizerConfig(lr=1e-3, betas=(0.0, 0.9), grad_clip=None)
        fam = make_gan(loss, size=28, width=16, latent=32, lr=2e-3, optimizer_d=d_opt)
    else:
        fam = make_gan(loss, size=28, width=16, latent=32, lr=1e-3)
    r = train_and_score(fam, mnist["train"], mnist["eval"][:500], mnist_features, steps=200, batch=32)
    assert r["fid_after"] < 0.5 * r["fid_before"], r


def test_shapes_fid_falls() -> None:
    """Without ../shared: drawn discs and squares, random conv features, FID at least halves."""
    shapes = draw_shapes(1200, size=16)
    fam = make_gan("bce", size=16, width=8, latent=16, lr=1e-3)
    net = metrics.random_feature_net(channels=1, seed=0)
    r = train_and_score(fam, shapes[:1000], shapes[1000:], net, steps=150, batch=32)
    assert r["fid_after"] < 0.5 * r["fid_before"], r


# ----------------------------------------------------------------------------------------------
# losses wired right


def test_gradient_penalty_matches_autograd() -> None:
    """The family's WGAN-GP penalty on its own (toy) critic equals a direct autograd computation."""
    fam = make_gan("wasserstein", size=16, width=4)
    real = torch.rand(6, 1, 16, 16) * 2 - 1
    fake = torch.rand(6, 1, 16, 16) * 2 - 1
    eps = torch.rand(6)
    got = fam.gradient_penalty(real, fake, eps=eps)

    x_hat = (eps.view(6, 1, 1, 1) * real + (1 - eps.view(6, 1, 1, 1)) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(fam.modules["d"](x_hat).sum(), x_hat)
    want = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.requires_grad  # it trains the critic


def test_wgan_step_includes_penalty() -> None:
    """A WGAN-GP step reports gp > 0, and loss_d = -(wasserstein estimate) + gp_lambda * gp."""
    fam = make_gan("wasserstein", size=16)
    m = fam.train_step(random_batch())
    assert m["gp"] > 0 and np.isfinite(m["gp"])
    assert m["loss_d"] == pytest.approx(-m["wdist"] + fam.cfg.loss.gp_lambda * m["gp"], rel=1e-5, abs=1e-6)
    assert m["wdist"] == pytest.approx(m["d_real"] - m["d_fake"], rel=1e-5, abs=1e-6)
    assert "gp" not in make_gan("hinge").train_step(random_batch())


def test_wasserstein_critic_has_no_batch_norm() -> None:
    """WGAN-GP's critic uses per-sample (layer) norm; bce/hinge keep DCGAN's batch norm."""
    has_bn = lambda fam: any(isinstance(m, torch.nn.BatchNorm2d) for m in fam.modules["d"].modules())  # noqa: E731
    assert not has_bn(make_gan("wasserstein"))
    assert has_bn(make_gan("bce")) and has_bn(make_gan("hinge"))


def test_spectral_norm_discriminator() -> None:
    """model.spectral_norm: D has no batch norm, each conv's weight has largest singular value ~1 after
    training steps (power iteration runs on each training forward), and a state_dict round trip keeps samples."""
    fam = make_gan("bce", spectral_norm=True, lr=2e-3)
    D = fam.modules["d"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    for i in range(3):
        fam.train_step(random_batch(seed=i))
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)
        raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2)
        assert not raw == pytest.approx(1.0, abs=0.05)  # the parametrization, not the weights, normalizes
    other = make_gan("bce", spectral_norm=True, seed=1)
    other.load_state_dict(fam.state_dict())
    assert torch.equal(other.sample(4, seed=3), fam.sample(4, seed=3))


@pytest.mark.parametrize("loss", ["bce", "hinge", "wasserstein"])
def test_metrics_and_no_stray_gradients(loss: str) -> None:
    """Metrics are finite; the D step leaves G untouched; no gradients are left on either model."""
    fam = make_gan(loss, n_critic=2)
    g_before = [p.detach().clone() for p in fam.modules["g"].parameters()]
    m = fam.train_step(random_batch())  # call 1 of 2: a D step only
    assert {"loss", "loss_d", "loss_g", "d_real", "d_fake", "lr"} <= set(m)
    assert all(np.isfinite(v) for v in m.values())
    assert all(torch.equal(a, p) for a, p in zip(g_before, fam.modules["g"].parameters()))
    fam.train_step(random_batch(seed=1))  # call 2: D step + G step
    assert not all(torch.equal(a, p) for a, p in zip(g_before, fam.modules["g"].parameters()))
    for p in fam.parameters():
        assert p.grad is None
        assert p.requires_grad  # D is unfrozen again after the G step


def test_n_critic_counts() -> None:
    """n_critic=5: one G step per 5 train_steps, one D step per train_step; step counts batches."""
    fam = make_gan("wasserstein", n_critic=5)
    for i in range(1, 11):
        fam.train_step(random_batch(seed=i))
        assert fam.steppers["d"].steps == i and fam.steppers["g"].steps == i // 5 and fam.step == i


# ----------------------------------------------------------------------------------------------
# generation


def test_same_seed_same_samples() -> None:
    """Same seed -> identical images in [0, 1]; another seed -> other images; batch mode is irrelevant."""
    fam = make_gan()
    fam.train_step(random_batch())
    a = fam.sample(5, seed=7)
    assert a.shape == (5, 1, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, fam.sample(5, seed=7))
    assert not torch.equal(a, fam.sample(5, seed=8))
    assert torch.equal(a[:2], fam.sample(2, seed=7))  # the first k draws of a seed do not depend on n
    assert fam.modules["g"].training  # sampling restored train mode


def test_generate_many_equals_one_by_one() -> None:
    """generate_many answers several requests in one G pass with exactly the one-by-one images."""
    fam = make_gan()
    fam.train_step(random_batch())
    reqs = [ImageRequest(n=3, seed=1), InterpolateRequest(seed_a=2, seed_b=3, steps=4), ImageRequest(n=2, seed=5)]
    many = fam.generate_many(reqs)
    assert [t.shape[0] for t in many] == [3, 4, 2]
    for got, req in zip(many, reqs):
        torch.testing.assert_close(got, fam.generate(req), rtol=0, atol=1e-6)
    assert fam.generate_many([]) == []


def test_interpolate_walks_between_seeds() -> None:
    """interpolate's ends are the seeds' own samples; the path has `steps` images."""
    fam = make_gan()
    walk = fam.interpolate(3, 4, steps=6)
    assert walk.shape == (6, 1, 16, 16)
    torch.testing.assert_close(walk[0], fam.sample(1, seed=3)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(walk[-1], fam.sample(1, seed=4)[0], rtol=0, atol=1e-5)
    with pytest.raises(TypeError):
        fam.generate("not a request")


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 1), (64, 3)])
def test_sizes_and_channels(size: int, channels: int) -> None:
    """28, 32 and 64 px with 1 or 3 channels train, sample and evaluate; a wrong size is a clear error."""
    fam = make_gan("hinge", size=size, channels=channels, width=4, latent=8)
    m = fam.train_step(random_batch(4, size, channels))
    assert np.isfinite(m["loss"])
    assert fam.sample(2, seed=0).shape == (2, channels, size, size)
    ev = fam.evaluate([random_batch(8, size, channels)])
    assert np.isfinite(ev["val_fcd"]) and np.isfinite(ev["val_d_loss"])
    with pytest.raises(ValueError, match="expected images"):
        fam.train_step(random_batch(4, size // 2, channels))


def test_unsupported_size_is_clear() -> None:
    """An image size the conv stacks cannot reach fails at build time naming the sizes that work."""
    with pytest.raises(ValueError, match="not supported"):
        make_gan(size=30)


# ----------------------------------------------------------------------------------------------
# evaluation, optimizers, persistence, DDP


def test_evaluate_uses_attached_feature_net() -> None:
    """evaluate reports val_fcd (random features by default, the attached net when set) and val_d_loss."""
    fam = make_gan(size=28, width=16, latent=32)
    batches = [random_batch(256, 28, seed=s) for s in range(2)]
    t0 = time.perf_counter()
    ev = fam.evaluate(batches)
    print(f"evaluate 512 images at 28 px: {time.perf_counter() - t0:.2f} s")
    assert {"val_fcd", "val_d_loss"} <= set(ev) and ev["val_fcd"] >= 0
    assert ev == fam.evaluate(batches)  # fixed-seed fakes: the same number every time
    fam.feature_net = metrics.random_feature_net(channels=1, seed=99)
    assert fam.evaluate(batches)["val_fcd"] != ev["val_fcd"]


def test_separate_g_and_d_optimizers() -> None:
    """optimizer drives G, optimizer_d drives D; set_optimizer_hyperparameters keeps the mapping."""
    d_opt = OptimizerConfig(name="sgd", lr=4e-3, momentum=0.5, grad_clip=None)
    fam = make_gan(lr=1e-3, optimizer_d=d_opt)
    g_group, d_group = fam.steppers["g"].optimizer.param_groups[0], fam.steppers["d"].optimizer.param_groups[0]
    assert isinstance(fam.steppers["g"].optimizer, torch.optim.Adam) and g_group["lr"] == pytest.approx(1e-3)
    assert isinstance(fam.steppers["d"].optimizer, torch.optim.SGD) and d_group["lr"] == pytest.approx(4e-3)
    m = fam.train_step(random_batch())
    assert m["lr"] == pytest.approx(1e-3) and m["lr_d"] == pytest.approx(4e-3)
    g_ids = {id(p) for p in fam.modules["g"].parameters()}
    assert {id(p) for p in fam.steppers["g"].params} == g_ids
    assert not g_ids & {id(p) for p in fam.steppers["d"].params}
    new = fam.cfg.model_copy(update={"optimizer_d": d_opt.model_copy(update={"lr": 2e-3})})
    fam.set_optimizer_hyperparameters(new)
    assert fam.steppers["d"].lr == pytest.approx(2e-3) and fam.steppers["g"].lr == pytest.approx(1e-3)


def test_save_load_identical_samples() -> None:
    """state_dict -> load_state_dict and weights -> load_weights reproduce samples and training state."""
    fam = make_gan("wasserstein", n_critic=2)
    for i in range(3):
        fam.train_step(random_batch(seed=i))
    want = fam.sample(4, seed=11)

    other = make_gan("wasserstein", n_critic=2, seed=1)
    assert not torch.equal(other.sample(4, seed=11), want)
    other.load_state_dict(fam.state_dict())
    assert torch.equal(other.sample(4, seed=11), want)
    assert other.step == 3 and other.steppers["g"].steps == 1 and other.steppers["d"].steps == 3
    # both continue identically from the same RNG state
    torch.manual_seed(5)
    a = fam.train_step(random_batch(seed=9))
    torch.manual_seed(5)
    b = other.train_step(random_batch(seed=9))
    assert a == b

    third = make_gan("wasserstein", n_critic=2, seed=2)
    third.load_weights(fam.weights())
    assert torch.equal(third.sample(4, seed=11), fam.sample(4, seed=11))
    with pytest.raises(ValueError, match="do not fit"):
        make_gan("wasserstein", width=16).load_weights(fam.weights())


@pytest.mark.parametrize("loss", ["bce", "wasserstein"])
def test_ddp_wrapped_modules_train(loss: str, tmp_path: Path) -> None:
    """With G and D wrapped in DDP (gloo, one process) steps run, and sampling/saving use the raw modules."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        fam = make_gan(loss, n_critic=2)
        fam.wrap_modules(DDP)
        assert isinstance(fam.modules["g"], DDP) and isinstance(fam.modules["d"], DDP)
        for i in range(4):
            m = fam.train_step(random_batch(seed=i))
            assert np.isfinite(m["loss"])
        assert fam.steppers["g"].steps == 2 and fam.steppers["d"].steps == 4
        assert all(p.grad is None for p in fam.parameters())
        assert fam.sample(2, seed=0).shape == (2, 1, 16, 16)
        assert all(not k.startswith(("g.module.", "d.module.")) for k in fam.weights())
    finally:
        dist.destroy_process_group()
