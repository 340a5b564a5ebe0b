"""The shared Stepper: full-batch gd, the optimizers, warmup + cosine, clipping, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from creagen_ray.config import OptimizerConfig
from creagen_ray.optim import Stepper, build_optimizer, lr_factor


def _toy(seed: int = 0) -> tuple[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A linear regression model and 4 batches of data."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    batches = [(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(4)]
    return model, batches


def _loss(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = xy
    return (model(x) - y).pow(2).mean()


def test_gd_takes_exactly_one_full_batch_step_per_epoch():
    model, batches = _toy()
    cfg = OptimizerConfig(name="gd", lr=0.1, grad_clip=None)
    stepper = Stepper(model.parameters(), cfg)
    before = [p.detach().clone() for p in model.parameters()]
    # the full-batch gradient, computed directly: mean of the per-batch gradients
    full = torch.autograd.grad(sum(_loss(model, b) for b in batches) / len(batches), list(model.parameters()))

    for epoch in range(2):
        for b in batches:
            assert stepper.backward(_loss(model, b)) is False
            assert stepper.steps == epoch  # no step inside the epoch ...
        if epoch == 0:
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # ... params untouched
        assert stepper.end_epoch() is True
        assert stepper.steps == epoch + 1  # ... exactly one at its end
        if epoch == 0:
            for p, q, g in zip(model.parameters(), before, full):
                assert torch.allclose(p, q - 0.1 * g, atol=1e-6)
    assert stepper.end_epoch() is False  # nothing accumulated: no extra step
    assert stepper.steps == 2


def test_sgd_steps_every_batch_and_end_epoch_is_a_no_op():
    model, batches = _toy()
    stepper = Stepper(model.parameters(), OptimizerConfig(name="sgd", lr=0.1))
    for b in batches:
        assert stepper.backward(_loss(model, b)) is True
    assert stepper.steps == len(batches)
    assert stepper.end_epoch() is False and stepper.steps == len(batches)


@pytest.mark.parametrize(
    "kw, cls",
    [
        ({"name": "sgd", "momentum": 0.9}, torch.optim.SGD),
        ({"name": "sgd", "momentum": 0.9, "nesterov": True}, torch.optim.SGD),
        ({"name": "gd"}, torch.optim.SGD),
        ({"name": "adam", "betas": (0.8, 0.99)}, torch.optim.Adam),
        ({"name": "adamw", "weight_decay": 0.1}, torch.optim.AdamW),
    ],
)
def test_optimizers_build_with_their_settings(kw, cls):
    model, batches = _toy()
    cfg = OptimizerConfig(lr=0.01, **kw)
    opt = build_optimizer(model.parameters(), cfg)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01
    for key in ("momentum", "nesterov", "betas", "weight_decay"):
        if key in kw:
            assert group[key] == kw[key]
    # and each one actually moves the parameters
    stepper = Stepper(model.parameters(), cfg)
    before = model.weight.detach().clone()
    stepper.backward(_loss(model, batches[0]))
    stepper.end_epoch()
    assert not torch.equal(model.weight, before)


def test_nesterov_without_momentum_is_a_config_error():
    with pytest.raises(ValueError, match="nesterov"):
        OptimizerConfig(name="sgd", nesterov=True, momentum=0.0)


def test_warmup_then_cosine_lr_values():
    cfg = OptimizerConfig(lr=1.0, schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    total = 14
    assert [lr_factor(s, cfg, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg, total) == pytest.approx(1.0)
    assert lr_factor(9, cfg, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert lr_factor(14, cfg, total) == pytest.approx(0.1)
    assert lr_factor(100, cfg, total) == pytest.approx(0.1)  # stays at the floor past the end
    # the Stepper's live lr follows the same curve, one value per step
    model, batches = _toy()
    stepper = Stepper(model.parameters(), cfg.model_copy(update={"lr": 0.5}), total_steps=total)
    seen = []
    for s in range(total):
        seen.append(stepper.lr)
        stepper.backward(_loss(model, batches[s % 4]))
    assert seen == pytest.approx([0.5 * lr_factor(s, cfg, total) for s in range(total)])
    # constant schedule: warmup then flat
    const = OptimizerConfig(lr=1.0, warmup_steps=2)
    assert [lr_factor(s, const, 10) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_grad_clip_bounds_the_update_norm():
    model, batches = _toy()
    x, y = batches[0]
    big = lambda: (model(x * 100.0) - y).pow(2).mean()  # noqa: E731 - a loss with a huge gradient
    raw = torch.autograd.grad(big(), list(model.parameters()))
    raw_norm = torch.sqrt(sum(g.pow(2).sum() for g in raw))
    assert raw_norm > 100

    for clip, bound in ((0.5, 0.5), (None, raw_norm)):
        model2 = nn.Linear(3, 1)
        model2.load_state_dict(model.state_dict())
        before = [p.detach().clone() for p in model2.parameters()]
        stepper = Stepper(model2.parameters(), OptimizerConfig(name="sgd", lr=1.0, grad_clip=clip))
        stepper.backward((model2(x * 100.0) - y).pow(2).mean())
        # plain SGD with lr=1 moves the params by exactly the (clipped) gradient
        delta = torch.sqrt(sum((p - q).pow(2).sum() for p, q in zip(model2.parameters(), before)))
        assert delta.item() == pytest.approx(float(bound), rel=1e-4)


def test_stepper_state_round_trips_and_training_continues_identically():
    model, batches = _toy()
    cfg = OptimizerConfig(name="adam", lr=0.05, schedule="cosine", warmup_steps=2)
    stepper = Stepper(model.parameters(), cfg, total_steps=20)
    for b in batches[:3]:
        stepper.backward(_loss(model, b))
    state, weights = stepper.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}

    model2 = nn.Linear(3, 1)
    model2.load_state_dict(weights)
    stepper2 = Stepper(model2.parameters(), cfg, total_steps=20)
    stepper2.load_state_dict(state)
    assert stepper2.steps == 3 and stepper2.lr == stepper.lr
    for b in batches:
        stepper.backward(_loss(model, b))
        stepper2.backward(_loss(model2, b))
    assert stepper2.steps == stepper.steps == 7
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_set_hyperparameters_changes_the_live_lr():
    model, _ = _toy()
    stepper = Stepper(model.parameters(), OptimizerConfig(lr=0.01, weight_decay=0.0))
    stepper.set_hyperparameters(OptimizerConfig(lr=0.02, weight_decay=0.1))
    assert stepper.lr == pytest.approx(0.02)
    assert stepper.optimizer.param_groups[0]["weight_decay"] == 0.1
