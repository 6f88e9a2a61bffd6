"""Large-batch tools: LARS against its update rule, and global-batch BatchNorm on a real
2-process gloo group against one BatchNorm on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import gloo_group, leave_gloo_group
from torch import nn

from rayssl.nets.batchnorm import GlobalBatchNorm2d, convert_sync_batchnorm
from rayssl.optim.lars import LARS


def _lars_by_hand(weights, grads_per_step, lr, momentum, wd, eta):
    """The rule, written out per tensor: 2-D tensors get weight decay and the trust ratio
    eta*|w|/|g + wd*w|; 1-D ones (bias) plain momentum SGD."""
    w = {k: v.clone().double() for k, v in weights.items()}
    buf = {}
    for grads in grads_per_step:
        for k, g in grads.items():
            g = g.double()
            if w[k].dim() > 1:
                u = g + wd * w[k]
                u = u * (eta * w[k].norm() / u.norm())
            else:
                u = g
            buf[k] = u if k not in buf else momentum * buf[k] + u
            w[k] = w[k] - lr * buf[k]
    return w


def test_lars_follows_its_update_rule_and_spares_biases():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    start = {k: v.detach().clone() for k, v in layer.named_parameters()}
    opt = LARS(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.02)
    grads = []
    for step in range(3):
        layer.zero_grad()
        x = torch.randn(8, 5, generator=torch.Generator().manual_seed(step))
        layer(x).pow(2).mean().backward()
        grads.append({k: p.grad.clone() for k, p in layer.named_parameters()})
        opt.step()
    expected = _lars_by_hand(start, grads, 0.5, 0.9, 0.1, 0.02)
    for k, p in layer.named_parameters():
        assert torch.allclose(p.double(), expected[k], atol=1e-6), k
    # the weight moved by a trust-ratio-sized step, far less than plain SGD at lr 0.5 would
    sgd_step = 0.5 * grads[0]["weight"].norm()
    assert (layer.weight - start["weight"]).norm() < sgd_step
    # zero weights (a fresh zero-initialised layer) still move: the ratio falls back to 1
    zero = nn.Parameter(torch.zeros(2, 2))
    zero.grad = torch.ones(2, 2)
    LARS([zero], lr=0.1).step()
    assert torch.equal(zero.detach(), torch.full((2, 2), -0.1))


def _bn_worker(rank, world, rendezvous, x, out):
    gloo_group(rank, world, rendezvous)
    torch.manual_seed(0)
    model = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)))
    assert type(model[1]) is GlobalBatchNorm2d
    b = len(x) // world
    y = model(x[rank * b : (rank + 1) * b])
    y.pow(3).mean().backward()  # a loss that is not invariant to the normalisation
    grads = [p.grad / world for p in model.parameters()]  # what DDP's averaging gives
    for g in grads:
        dist.all_reduce(g)
    parts = [torch.zeros_like(y) for _ in range(world)]
    dist.all_gather(parts, y.detach())
    if rank == 0:
        torch.save({"y": torch.cat(parts), "grads": grads, "state": model[1].state_dict()}, out)
    leave_gloo_group()


def test_sync_batchnorm_on_two_gloo_processes_equals_one_batchnorm_on_the_global_batch(tmp_path):
    x = torch.randn(8, 2, 3, 3) * 3 + 1
    x[4:] += 5  # the ranks' halves differ: per-rank statistics would give another answer
    rendezvous = str(tmp_path / "rendezvous")  # a file: no TCP port picked in advance
    out = tmp_path / "bn.pt"
    mp.spawn(_bn_worker, args=(2, rendezvous, x, str(out)), nprocs=2, join=True)
    got = torch.load(out)
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    y = reference(x)
    y.pow(3).mean().backward()
    assert torch.allclose(got["y"], y.detach(), atol=1e-5)
    for g, p in zip(got["grads"], reference.parameters(), strict=True):
        assert torch.allclose(g, p.grad, atol=1e-5)
    for key, value in reference[1].state_dict().items():  # running mean/var, counter
        assert torch.allclose(got["state"][key].double(), value.double(), atol=1e-5), key
    # same keys as the BatchNorm it replaced (and torch's SyncBatchNorm): checkpoints move
    # between them
    assert got["state"].keys() == reference[1].state_dict().keys()


def test_weight_decay_schedule_is_a_cosine_from_start_to_end_per_group():
    """optimizer.weight_decay_end (DINO's 0.04 -> 0.4): values by hand for 5 steps,
    end + (start - end) * (1 + cos(pi * k / 4)) / 2; a group with its own decay keeps its
    ratio to the configured one, a group without decay stays at 0."""
    from rayssl.optim.schedules import WeightDecaySchedule

    w = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    opt = torch.optim.AdamW(
        [
            {"params": [w[0]]},
            {"params": [w[1]], "weight_decay": 0.08},
            {"params": [w[2]], "weight_decay": 0.0},
        ],
        lr=0.1,
        weight_decay=0.04,
    )
    schedule = WeightDecaySchedule(opt, start=0.04, end=0.4, total_steps=5)
    expected = [0.04, 0.0927208, 0.22, 0.3472792, 0.4]
    for step, value in enumerate(expected):
        assert schedule.set(step) == pytest.approx(value, abs=1e-7)
        decays = [g["weight_decay"] for g in opt.param_groups]
        assert decays == pytest.approx([value, 2 * value, 0.0], abs=1e-7)
    assert schedule.set(9) == pytest.approx(0.4)  # past the end it stays at the end
