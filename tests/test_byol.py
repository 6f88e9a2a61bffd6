import copy
import math

import pytest
import torch
from torch import nn

from rayssl.engine.dummy import DummyTrainer
from rayssl.methods.byol import BYOL, cosine_schedule, deactivate_requires_grad, update_momentum


def test_cosine_schedule_endpoints_and_hold():
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(250, 100, 0.996, 1.0) == pytest.approx(1.0)


def test_update_momentum_is_the_ema_of_params_and_buffers():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = copy.deepcopy(online)
    online(torch.randn(8, 3))  # moves BatchNorm running stats of the online net
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    before = copy.deepcopy(target)
    update_momentum(online, target, 0.9)
    for b, o, t in zip(before.parameters(), online.parameters(), target.parameters(), strict=False):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
    assert torch.allclose(
        target[1].running_mean, 0.9 * before[1].running_mean + 0.1 * online[1].running_mean
    )
    assert target[1].num_batches_tracked == online[1].num_batches_tracked


def test_target_is_frozen_and_out_of_the_optimizer():
    model = BYOL(nn.Sequential(nn.Flatten(), nn.Linear(8, 16)), learning_rate=0.1)
    assert all(not p.requires_grad for p in model.backbone_momentum.parameters())
    stepped = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not stepped & {id(p) for p in model.backbone_momentum.parameters()}
    assert model.projection_head[0].in_features == 16  # default heads: input size inferred
    deactivate_requires_grad(model.backbone)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_momentum_follows_global_steps_and_target_trails_online():
    trainer = DummyTrainer(
        {"method": "byol", "epochs": 2, "byol": {"schedule": 20, "base_momentum": 0.9}}
    )
    list(trainer.loop.epochs())
    steps = trainer.loop.state.global_step
    assert trainer.method.momentum == pytest.approx(cosine_schedule(steps, 20, 0.9, 1.0))
    online = dict(trainer.method.backbone.named_parameters())
    target = dict(trainer.method.backbone_momentum.named_parameters())
    assert any(not torch.equal(online[k], target[k]) for k in online)
    # schedule: null runs the cosine over all optimizer steps of the run
    whole = DummyTrainer({"method": "byol", "epochs": 2, "byol": {"schedule": None}})
    list(whole.loop.epochs())
    assert whole.method.momentum == pytest.approx(1.0)


def test_momentum_at_interior_steps_of_the_schedule():
    # 1 - (1 - 0.9) * (cos(pi * s / 20) + 1) / 2, worked out by hand
    model = BYOL(nn.Sequential(nn.Flatten(), nn.Linear(8, 16)), base_momentum=0.9, schedule=20)
    assert model.momentum_at(5, 1000) == pytest.approx(0.914644661, abs=1e-9)
    assert model.momentum_at(10, 1000) == pytest.approx(0.95, abs=1e-12)
    assert model.momentum_at(15, 1000) == pytest.approx(0.985355339, abs=1e-9)


def test_target_after_k_steps_is_the_ema_applied_k_times():
    trainer = DummyTrainer(
        {"method": "byol", "epochs": 2, "byol": {"schedule": 20, "base_momentum": 0.9}}
    )
    method = trainer.method
    expected = {k: v.clone() for k, v in method.backbone_momentum.named_parameters()}
    momenta = []
    for stats in trainer.iterate(6):
        m = 1 - 0.1 * (math.cos(math.pi * stats.iteration / 20) + 1) / 2
        momenta.append(method.momentum)
        for name, online in method.backbone.named_parameters():
            expected[name] = m * expected[name] + (1 - m) * online.detach()
    assert momenta == pytest.approx(
        [1 - 0.05 * (math.cos(math.pi * s / 20) + 1) for s in range(1, 7)]
    )
    for name, target in method.backbone_momentum.named_parameters():
        assert torch.allclose(target, expected[name], atol=1e-6), name
    # an EMA that never ran would leave the target at its initial copy: it moved
    assert not all(
        torch.equal(t, o)
        for t, o in zip(
            method.backbone_momentum.parameters(), method.backbone.parameters(), strict=True
        )
    )
