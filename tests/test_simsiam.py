"""SimSiam: the stop-gradient, per-view BatchNorm, and the predictor's fixed lr through the
loop's own steps (its 2-worker restart is in test_ssl_ray)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_states_equal
from conftest import one_process_loop as make_loop
from torch import nn

from rayssl.methods.heads import MLPHead
from rayssl.methods.simsiam import SimSiam
from rayssl.runs.state import load_state, save_state


def _simsiam():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    projector = MLPHead([8, 8, 8, 4], output_batch_norm=True)
    return SimSiam(backbone, projector, MLPHead([4, 3, 4]))


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_loss_is_the_papers_with_stopped_targets_and_one_pass_per_view():
    """The loss and every gradient equal the paper's pseudocode written out here: each view
    through the network alone, D(p0, stopgrad(z1)) / 2 + D(p1, stopgrad(z0)) / 2. Without
    the stop-gradient, or with both views in one BatchNorm batch, both would differ."""
    model = _simsiam()
    v0, v1 = torch.randn(10, 6), torch.randn(10, 6)
    loss = model.training_step(((v0, v1), None))["loss"]
    got_grads, got = _grads(model, loss), loss.item()

    def reference(stop: bool, one_pass: bool = False):
        if one_pass:
            z0, z1 = model.projection_head(model.backbone(torch.cat([v0, v1]))).chunk(2)
        else:
            z0, z1 = (model.projection_head(model.backbone(v)) for v in (v0, v1))
        t0, t1 = (z0.detach(), z1.detach()) if stop else (z0, z1)
        p0, p1 = model.prediction_head(z0), model.prediction_head(z1)
        return -(F.cosine_similarity(p0, t1).mean() + F.cosine_similarity(p1, t0).mean()) / 2

    expected = reference(stop=True)
    assert got == pytest.approx(expected.item(), abs=1e-6)
    for a, b in zip(got_grads, _grads(model, expected), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    no_stop = _grads(model, reference(stop=False))
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(got_grads, no_stop, strict=True))
    assert reference(stop=True, one_pass=True).item() != pytest.approx(got, abs=1e-4)


SIMSIAM = {
    "method": "simsiam",
    "epochs": 4,
    "backbone": {"name": "mlp", "hidden": [16]},
    "simsiam": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 4},
    "optimizer": {"lr": 0.05},
    "lr_scheduler": {"name": "warmup_cosine", "warmup_epochs": 1},
}


@pytest.mark.parametrize("fixed", [True, False])
def test_predictor_lr_stays_fixed_through_the_schedule_and_a_resume(tmp_path, fixed):
    """With fixed_predictor_lr (the default) the predictor trains at optimizer.lr at every
    step, warm-up included, while the encoder follows warmup_cosine; a run saved after 2
    epochs and restored in a fresh loop holds both and ends as the straight run. Off, the
    predictor follows the schedule too."""
    config = {**SIMSIAM, "simsiam": {**SIMSIAM["simsiam"], "fixed_predictor_lr": fixed}}
    straight = make_loop(config)
    encoder, predictor = straight.step.optimizer.param_groups
    assert encoder["lr"] < 0.05 and (predictor["lr"] == 0.05) == fixed  # the first step's
    seen = []
    for _ in range(4):
        straight.run_epoch()
        seen.append((encoder["lr"], predictor["lr"]))
    encoder_lrs = [e for e, _ in seen]
    assert len(set(encoder_lrs)) == 4 and max(encoder_lrs) <= 0.05  # scheduled
    if fixed:
        assert all(p == 0.05 for _, p in seen)
    else:
        assert [p for _, p in seen] == encoder_lrs

    first = make_loop(config)
    first.run_epoch(), first.run_epoch()
    save_state(first.state_dict(), tmp_path)
    resumed = make_loop(config)
    resumed.load_state_dict(load_state(tmp_path))
    resumed.run_epoch(), resumed.run_epoch()
    assert_states_equal(straight.method.state_dict(), resumed.method.state_dict())
    assert [g["lr"] for g in resumed.step.optimizer.param_groups] == [
        g["lr"] for g in (encoder, predictor)
    ]


def test_pbt_adopting_another_lr_rescales_the_fixed_predictor_lr_too():
    """A PBT exploit loads another trial's state, then takes this trial's lr: the predictor's
    fixed lr moves with it (otherwise it would keep the old trial's lr for good)."""
    a = make_loop({**SIMSIAM, "optimizer": {"lr": 0.05}})
    a.run_epoch()
    state = a.state_dict()
    b = make_loop({**SIMSIAM, "optimizer": {"lr": 0.2}})
    b.load_state_dict(state)
    b.adopt_hyperparameters(state["config"])
    b.run_epoch()
    encoder_a, predictor_a = a.optimizer.param_groups
    a.run_epoch()
    encoder_b, predictor_b = b.optimizer.param_groups
    assert predictor_b["lr"] == pytest.approx(0.2) and predictor_a["lr"] == 0.05
    assert encoder_b["lr"] == pytest.approx(4 * encoder_a["lr"])
