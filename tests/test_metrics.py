"""creagen_ray.metrics: Fréchet distance, FID with a trained / random FeatureNet, IS, copy checks, text metrics.

CPU only, a few seconds each. MNIST tests skip when ../shared/data is absent; every FID property is
also checked on procedurally drawn shapes that need no files.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import random
import string
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from creagen_ray.metrics import (
    FeatureNet,
    InceptionUnavailable,
    NGramIndex,
    bits_per_token,
    classifier_accuracy,
    distinct_n,
    diversity,
    feature_stats,
    fid,
    frechet_distance,
    gaussian_stats,
    inception_fid,
    inception_score,
    nearest_neighbour_distance,
    nearest_neighbour_distances,
    novelty,
    perplexity,
    random_feature_net,
    train_feature_net,
)

# ----------------------------------------------------------------------------------------------
# helpers


def read_mnist(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """idx files -> uint8 images [N, 1, 28, 28] and int64 labels [N] (16- and 8-byte headers)."""
    x = np.frombuffer(gzip.open(images_path).read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.open(labels_path).read(), dtype=np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def draw_shapes(n: int, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """n images [n, C, size, size] in [0, 1]: one filled rectangle or disc of a random colour on black."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((n, channels, size, size), dtype=np.float32)
    for i in range(n):
        cx, cy = g.integers(size // 4, 3 * size // 4, size=2)
        r = g.integers(size // 8, size // 4 + 1)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r if g.random() < 0.5 else (abs(xx - cx) <= r) & (abs(yy - cy) <= r)
        out[i][:, mask] = g.uniform(0.5, 1.0, size=(channels, 1))
    return torch.from_numpy(out)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module on one intra-op thread: on the shared 2-core CI box two threads spin against
    other processes and were measured 10x slower in wall time (114 s vs 11 s for one test)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def mnist(mnist_paths):
    """MNIST t10k split as shared/data/README.md says: index % 5 == 0 for evaluation, the rest for training."""
    x, y = read_mnist(*mnist_paths)
    ev = torch.arange(len(x)) % 5 == 0
    return {"train_x": x[~ev], "train_y": y[~ev], "eval_x": x[ev], "eval_y": y[ev]}


@pytest.fixture(scope="module")
def mnist_net(mnist):
    """A FeatureNet trained on 2000 MNIST training-split images for 200 steps: the net creagen's runs fit
    (training/loop.py FEATURE_NET_IMAGES, FEATURE_NET_STEPS); 300 steps cost a third more for 0.6 points."""
    torch.manual_seed(0)
    return train_feature_net(mnist["train_x"][:2000], mnist["train_y"][:2000], num_classes=10, steps=200, seed=0)


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    g = np.random.default_rng(1)
    mu1, mu2 = g.normal(size=6), g.normal(size=6)
    s1, s2 = g.uniform(0.1, 3.0, size=6), g.uniform(0.1, 3.0, size=6)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(want, rel=1e-9)
    # torch tensors are accepted as well
    got_t = frechet_distance(torch.tensor(mu1), torch.tensor(np.diag(s1)), torch.tensor(mu2), torch.tensor(np.diag(s2)))
    assert got_t == pytest.approx(want, rel=1e-9)


def test_frechet_distance_matches_closed_form_for_commuting_full_covariances():
    # sigma_i = Q diag(l_i) Q^T with one rotation Q: (s1 s2)^(1/2) = Q diag(sqrt(l1 l2)) Q^T
    g = np.random.default_rng(2)
    q, _ = np.linalg.qr(g.normal(size=(5, 5)))
    l1, l2 = g.uniform(0.2, 4.0, size=5), g.uniform(0.2, 4.0, size=5)
    mu1, mu2 = np.zeros(5), np.full(5, 0.5)
    want = 5 * 0.25 + np.sum(l1 + l2 - 2 * np.sqrt(l1 * l2))
    got = frechet_distance(mu1, q @ np.diag(l1) @ q.T, mu2, q @ np.diag(l2) @ q.T)
    assert got == pytest.approx(want, rel=1e-7)


def test_frechet_distance_of_identical_stats_is_zero_even_when_singular():
    g = np.random.default_rng(3)
    f = g.normal(size=(500, 8))
    mu, sigma = gaussian_stats(f)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # rank-deficient covariance (fewer samples than dimensions) goes through the eps fallback
    mu_s, sigma_s = gaussian_stats(g.normal(size=(5, 20)))
    assert np.linalg.matrix_rank(sigma_s) < 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = frechet_distance(mu_s, sigma_s, mu_s, sigma_s)
    assert math.isfinite(d) and d == pytest.approx(0.0, abs=1e-3)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------------------------
# FeatureNet, FID, IS, nearest neighbour: no files needed


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_feature_net_shapes(channels, size):
    net = FeatureNet(in_channels=channels, num_classes=7).eval()
    x = torch.rand(4, channels, size, size)
    assert net.features(x).shape == (4, net.feature_dim)
    assert net(x).shape == (4, 7)
    with pytest.raises(ValueError, match="built for"):
        net.features(torch.rand(4, 4 - channels if channels == 1 else 1, size, size))


def test_random_feature_net_is_seeded():
    x = torch.rand(8, 3, 32, 32)
    a, b, c = random_feature_net(3, seed=5), random_feature_net(3, seed=5), random_feature_net(3, seed=6)
    assert torch.equal(a.features(x), b.features(x))
    assert not torch.equal(a.features(x), c.features(x))


def test_fid_random_net_separates_shapes_from_noise():
    net = random_feature_net(3, seed=0)
    a, b = draw_shapes(600, seed=1), draw_shapes(600, seed=2)
    noise = torch.rand(600, 3, 32, 32)
    same = fid(net, a, b)
    far = fid(net, a, noise)
    assert same < 0.1 * far, (same, far)
    # precomputed real stats give the same number as the images
    assert fid(net, feature_stats(net, a), b) == pytest.approx(same, rel=1e-9)


def test_train_feature_net_learns_shapes_and_scores_is():
    # label = rectangle (0) or disc (1): drawn the same way as draw_shapes but with known classes
    g = np.random.default_rng(0)
    size, n = 28, 800
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.zeros((n, 1, size, size), dtype=np.float32)
    labels = g.integers(0, 2, size=n)
    for i in range(n):
        cx, cy = g.integers(9, 19, size=2)
        r = g.integers(5, 9)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        rect = (abs(xx - cx) <= r - 1) & (abs(yy - cy) <= r - 1)
        imgs[i, 0][disc if labels[i] else rect] = 1.0
    x, y = torch.from_numpy(imgs), torch.from_numpy(labels)
    net = train_feature_net(x[:600], y[:600], num_classes=2, steps=120, batch_size=32, seed=0)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert classifier_accuracy(net, x[600:], y[600:]) > 0.9
    is_mean, is_std = inception_score(net, x[600:], splits=4)
    # both classes, confidently: IS near 2 (its maximum); one class only: IS near 1
    assert 1.7 < is_mean <= 2.0 + 1e-6 and is_std >= 0.0
    one_class, _ = inception_score(net, x[600:][y[600:] == 1], splits=2)
    assert one_class < 1.2
    with pytest.raises(ValueError, match="trained classifier"):
        inception_score(random_feature_net(1), x[:10])


def test_nearest_neighbour_distance_is_zero_for_copies_and_positive_otherwise():
    train = draw_shapes(300, seed=3)
    copies = train[torch.tensor([5, 17, 250])]
    assert nearest_neighbour_distance(copies, train) == pytest.approx(0.0, abs=1e-5)
    # uint8 copies of uint8 training images: also 0
    assert nearest_neighbour_distance((copies * 255).round().to(torch.uint8), (train * 255).round().to(torch.uint8)) < 1e-5
    # a constant image at 0.5 vs an all-zero training set: RMS distance is exactly 0.5
    d = nearest_neighbour_distances(torch.full((2, 3, 32, 32), 0.5), torch.zeros(10, 3, 32, 32))
    assert torch.allclose(d, torch.full((2,), 0.5))
    assert nearest_neighbour_distance(torch.rand(20, 3, 32, 32), train, batch_size=7) > 0.2
    with pytest.raises(ValueError, match="differs"):
        nearest_neighbour_distance(torch.rand(2, 1, 28, 28), train)


def test_inception_fid_without_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CREAGEN_INCEPTION_WEIGHTS", raising=False)
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(InceptionUnavailable, match="CREAGEN_INCEPTION_WEIGHTS"):
        inception_fid(x, x)
    with pytest.raises(InceptionUnavailable, match="not found"):
        inception_fid(x, x, weights_path=tmp_path / "missing.pt")
    bad = tmp_path / "not-torchscript.pt"
    bad.write_bytes(b"not a model")
    digest = hashlib.sha256(b"not a model").hexdigest()
    monkeypatch.delenv("CREAGEN_INCEPTION_SHA256", raising=False)
    with pytest.raises(InceptionUnavailable, match=f"configure its sha256.*{digest}"):  # TorchScript runs code
        inception_fid(x, x, weights_path=bad)
    with pytest.raises(InceptionUnavailable, match="refusing"):
        inception_fid(x, x, weights_path=bad, sha256="0" * 64)
    with pytest.raises(InceptionUnavailable, match="TorchScript"):
        inception_fid(x, x, weights_path=bad, sha256=digest)


def test_inception_fid_plumbing_with_a_stand_in_torchscript_detector(tmp_path):
    # Stand-in with the NVIDIA detector's calling convention: uint8 [N, 3, H, W], return_features=True.
    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3 * 4 * 4, 6)

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
            return self.proj(pooled)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in 2.13
        path = tmp_path / "inception-2015-12-05.pt"
        torch.jit.script(Detector()).save(str(path))
    a, b = draw_shapes(200, size=16, channels=1, seed=1), draw_shapes(200, size=16, channels=1, seed=2)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    same = inception_fid(a, b, weights_path=path, sha256=digest)
    far = inception_fid(a, torch.rand(200, 1, 16, 16), weights_path=path, sha256=digest)
    assert 0.0 <= same < far


# ----------------------------------------------------------------------------------------------
# MNIST (../shared/data)


@pytest.mark.shared
def test_feature_net_classifies_mnist(mnist, mnist_net):
    acc = classifier_accuracy(mnist_net, mnist["eval_x"], mnist["eval_y"])
    assert acc > 0.93, acc  # measured 0.962 after 200 steps on 2000 images (0.968 after 300)


@pytest.mark.shared
def test_mnist_fid_real_vs_real_far_below_real_vs_noise(mnist, mnist_net):
    ev = mnist["eval_x"]
    a, b = ev[0::2], ev[1::2]  # interleaved halves of the evaluation split (1000 each)
    real_real = fid(mnist_net, a, b)
    real_noise = fid(mnist_net, a, torch.rand(1000, 1, 28, 28))
    # training images vs evaluation images: same distribution, so also small
    real_train = fid(mnist_net, a, mnist["train_x"][2000:3000])
    assert real_real < 0.02 * real_noise, (real_real, real_noise)
    assert real_train < 0.02 * real_noise, (real_train, real_noise)
    # one digit class only is a different distribution: clearly worse than real vs real
    only_ones = mnist["train_x"][mnist["train_y"] == 1][:500]
    assert fid(mnist_net, a, only_ones) > 5 * real_real


@pytest.mark.shared
def test_mnist_inception_score_and_copy_check(mnist, mnist_net):
    ev = mnist["eval_x"]
    is_real, _ = inception_score(mnist_net, ev, splits=5)
    is_noise, _ = inception_score(mnist_net, torch.rand(500, 1, 28, 28), splits=5)
    assert is_real > 7.0 and is_noise < 2.0, (is_real, is_noise)
    train = mnist["train_x"][:3000]
    assert nearest_neighbour_distance(train[100:164], train) == pytest.approx(0.0, abs=1e-5)
    held_out = nearest_neighbour_distance(ev[:64], train)
    assert 0.05 < held_out < 0.4, held_out


# ----------------------------------------------------------------------------------------------
# text


def test_perplexity_and_bits():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(65)) == pytest.approx(65.0)  # uniform over tinyshakespeare's 65 characters
    assert bits_per_token(math.log(2)) == pytest.approx(1.0)
    assert bits_per_token(1.886) == pytest.approx(2.7209, abs=1e-4)  # nanoGPT's CPU val loss in bpc


def test_distinct_n_on_known_strings():
    assert distinct_n("abab", 1) == pytest.approx(2 / 4)
    assert distinct_n("abab", 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["aa", "aa"], 2) == pytest.approx(1 / 2)  # n-grams do not cross samples
    assert distinct_n(["the cat the dog", "the cat"], 1, unit="word") == pytest.approx(3 / 6)
    assert distinct_n(["the cat the dog", "the cat"], 2, unit="word") == pytest.approx(3 / 4)
    assert diversity(["abcd"]) == {"distinct_1": 1.0, "distinct_2": 1.0}
    assert math.isnan(distinct_n(["a"], 2))
    with pytest.raises(ValueError):
        distinct_n("abc", 1, unit="token")


SMALL_CORPUS = "the quick brown fox jumps over the lazy dog. " * 3 + "a stitch in time saves nine."


def test_novelty_is_zero_for_copies_and_one_for_unseen_text():
    index = NGramIndex(SMALL_CORPUS, n=8)
    assert index.novelty(["quick brown fox jumps", "a stitch in time"]) == 0.0
    assert index.novelty("zzzzzzzzzzzzzzzz") == 1.0
    # "the lazy dog" is copied; "QQQQQQQQ" is not: 5 of 5+8 windows are copied ("the lazy dogQQQQQQQQ" has 13)
    assert index.novelty("the lazy dogQQQQQQQQ") == pytest.approx(8 / 13)
    assert math.isnan(index.novelty(["short"]))  # shorter than n: no 8-grams at all
    assert novelty("jumps over the", SMALL_CORPUS) == 0.0
    # words: 2-grams of whitespace words; an unseen word makes its n-grams novel
    words = NGramIndex(SMALL_CORPUS, n=2, unit="word")
    assert words.novelty("the lazy dog.") == 0.0
    assert words.novelty("the lazy cat") == pytest.approx(1 / 2)
    assert words.novelty("zebra zebra zebra") == 1.0


@pytest.mark.shared
def test_novelty_on_tinyshakespeare(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    index = NGramIndex(text[:split], n=8)
    assert 400_000 < len(index) < index.num_ngrams
    assert index.novelty(text[1000:6000]) == 0.0
    rng = random.Random(0)
    alphabet = sorted(set(text))
    samples = ["".join(rng.choice(alphabet) for _ in range(400)) for _ in range(10)]
    assert index.novelty(samples) > 0.99
    # real held-out Shakespeare is partly novel at the 8-character level (measured ~0.50)
    assert 0.3 < index.novelty(text[split:]) < 0.7
    assert index.novelty("".join(rng.choice(string.ascii_letters) for _ in range(100))) > 0.99


def test_sample_lm_is_cached_next_to_the_data_keyed_by_it(tmp_path):
    """The text-GAN sample metrics' reference LM: trained once per data + settings, then loaded from
    `<data>/sample_lm/`; a broken cache file is retrained and replaced; safetensors round trip is exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_sample_lm_cache(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_sample_lm_cache(tmp_path):
    from creagen_ray.data.prepare import PreparedData
    from creagen_ray.metrics.text import CharLM
    from creagen_ray.tokenizer import ByteTokenizer
    from creagen_ray.training.sample_metrics import UNKNOWN, data_vocab, reference_lm

    text = "def add(x, y):\n    return x + y\n" * 40
    held = ["return y + x\n"]
    prepared = PreparedData(tmp_path, {"source_sha256": "abc", "config": {"seq_len": 32}, "tokenizer": ByteTokenizer().to_dict()})
    vocab = data_vocab(prepared, text, held)
    assert UNKNOWN in vocab and set(text).union(*held) <= set(vocab)

    lm = reference_lm(prepared, text, vocab, steps=10)
    (cache,) = (tmp_path / "sample_lm").glob("*.safetensors")
    again = CharLM.from_bytes(cache.read_bytes())
    assert again.chars == vocab and again.nats_per_char(held) == lm.nats_per_char(held)
    assert lm.nats_per_char(held) < math.log(len(vocab))  # it learned something

    planted = CharLM.fit(text, vocab, steps=1, seed=5)  # a different LM under the same key is what comes back
    cache.write_bytes(planted.to_bytes())
    assert reference_lm(prepared, text, vocab, steps=10).nats_per_char(held) == planted.nats_per_char(held)

    other = PreparedData(tmp_path, {**prepared.manifest, "source_sha256": "other data"})
    reference_lm(other, text, vocab, steps=10)
    assert len(list((tmp_path / "sample_lm").glob("*.safetensors"))) == 2  # another data checksum, another key

    cache.write_bytes(b"not a safetensors file")
    fixed = reference_lm(prepared, text, vocab, steps=10)
    assert fixed.nats_per_char(held) == lm.nats_per_char(held)  # retrained (deterministic) and replaced
    assert CharLM.from_bytes(cache.read_bytes()).nats_per_char(held) == lm.nats_per_char(held)
    with pytest.raises(ValueError, match="not a CharLM"):
        CharLM.from_bytes(b"junk")
