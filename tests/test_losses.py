"""Each loss equals its reference formula; GAN losses point the right way; the GP equals autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from creagen_ray import losses


def test_cross_entropy_matches_torch_and_uniform_is_log_v():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)  # [B, T, V]
    targets = torch.randint(0, 11, (3, 7), generator=g)  # [B, T]
    ref = F.cross_entropy(logits.transpose(1, 2), targets)  # torch wants [B, V, T]
    assert torch.allclose(losses.cross_entropy(logits, targets), ref, atol=1e-6)
    assert torch.allclose(losses.cross_entropy(logits, targets, reduction="sum"), ref * 21, atol=1e-4)
    per = losses.cross_entropy(logits, targets, reduction="none")
    assert per.shape == (3, 7)
    # uniform logits cost exactly log V nats per token
    assert losses.cross_entropy(torch.zeros(2, 5, 11), targets[:2, :5]).item() == pytest.approx(math.log(11))


def test_cross_entropy_ignores_padding_in_the_mean():
    logits = torch.randn(2, 4, 5)
    targets = torch.tensor([[1, 2, 3, -100], [0, -100, -100, -100]])
    per = losses.cross_entropy(logits, targets, reduction="none")
    assert per[0, 3] == 0 and per[1, 1:].abs().sum() == 0
    assert losses.cross_entropy(logits, targets).item() == pytest.approx(per.sum().item() / 4, rel=1e-6)


def test_reconstruction_is_summed_per_item_and_averaged_over_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 6, 6, generator=g)
    logits = torch.randn(4, 1, 6, 6, generator=g)
    bce = losses.reconstruction_loss("bce", logits, x)
    ref = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / 4
    assert bce.item() == pytest.approx(ref.item(), rel=1e-5)
    values = torch.sigmoid(logits)
    mse = losses.reconstruction_loss("mse", values, x)
    assert mse.item() == pytest.approx(F.mse_loss(values, x, reduction="sum").item() / 4, rel=1e-5)
    per = losses.reconstruction_loss("bce", logits, x, reduction="none")
    assert per.shape == (4,) and per.mean().item() == pytest.approx(bce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        losses.reconstruction_loss("mse", values[:, :, :5], x)
    with pytest.raises(ValueError, match="not known"):
        losses.reconstruction_loss("l1", values, x)


def test_kl_normal_matches_torch_distributions_and_is_zero_at_the_prior():
    g = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    ref = torch.distributions.kl_divergence(q, p).sum(dim=1)  # [B]
    kl = losses.kl_normal(mu, logvar)
    assert kl.shape == (5,)
    assert torch.allclose(kl, ref, atol=1e-5)
    assert losses.kl_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


def test_bce_gan_losses_match_the_textbook_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.2, 1.0])
    D = torch.sigmoid
    ref_d = -(D(real).log().mean() + (1 - D(fake)).log().mean())
    assert losses.d_loss("bce", real, fake).item() == pytest.approx(ref_d.item(), rel=1e-5)
    assert losses.g_loss("bce", fake).item() == pytest.approx(-D(fake).log().mean().item(), rel=1e-5)
    # one-sided smoothing: the real target becomes 0.9
    smooth = losses.d_loss("bce", real, fake, label_smoothing=0.1)
    ref_s = F.binary_cross_entropy(D(real), torch.full((3,), 0.9)) - (1 - D(fake)).log().mean()
    assert smooth.item() == pytest.approx(ref_s.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["bce", "hinge", "wasserstein"])
def test_d_loss_is_lower_when_real_scores_exceed_fake(name):
    good = losses.d_loss(name, torch.full((8,), 2.0), torch.full((8,), -2.0))
    bad = losses.d_loss(name, torch.full((8,), -2.0), torch.full((8,), 2.0))
    assert good < bad
    # the generator wants its fakes scored high
    assert losses.g_loss(name, torch.full((8,), 2.0)) < losses.g_loss(name, torch.full((8,), -2.0))


def test_wasserstein_and_hinge_values():
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([0.5, -2.0])
    assert losses.d_loss("wasserstein", real, fake).item() == pytest.approx(-0.75 - 2.0)
    assert losses.g_loss("wasserstein", fake).item() == pytest.approx(0.75)
    # hinge: relu(1 - real) = [0, 0]; relu(1 + fake) = [1.5, 0]
    assert losses.d_loss("hinge", real, fake).item() == pytest.approx(0.75)
    assert losses.d_loss("hinge", real[:, None], fake[:, None]).item() == pytest.approx(0.75)  # [B, 1] ok
    with pytest.raises(ValueError, match="not known"):
        losses.d_loss("lsgan", real, fake)


def test_gradient_penalty_on_a_linear_critic_is_known_in_closed_form():
    # critic(x) = <w, x> + b has gradient w everywhere, so the penalty is (||w|| - 1)^2 exactly
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 1))
    real, fake = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    gp = losses.gradient_penalty(critic, real, fake)
    w = critic[1].weight.detach()
    assert gp.item() == pytest.approx((w.norm() - 1).pow(2).item(), rel=1e-5)
    # create_graph=True: the penalty has a gradient wrt the critic's weights, d/dw = 2 (||w|| - 1) w / ||w||
    gp.backward()
    expected = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(critic[1].weight.grad, expected, atol=1e-5)


def test_gradient_penalty_equals_direct_autograd_on_a_nonlinear_critic():
    torch.manual_seed(1)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    real, fake = torch.randn(5, 8), torch.randn(5, 8)
    eps = torch.rand(5)
    gp = losses.gradient_penalty(critic, real, fake, eps=eps)
    # direct: the gradient of each item's score wrt its own interpolate, one item at a time
    direct = []
    for i in range(5):
        x = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (gx,) = torch.autograd.grad(critic(x).sum(), x)
        direct.append((gx.norm() - 1) ** 2)
    assert gp.item() == pytest.approx(torch.stack(direct).mean().item(), rel=1e-5)
    # seeded interpolation is reproducible
    a = losses.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    b = losses.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()
