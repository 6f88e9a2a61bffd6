import copy

import pytest
import torch
from torch import nn

from rayssl.engine.dummy import DummyTrainer
from rayssl.methods.heads import MLPHead
from rayssl.methods.lfr import (
    LearnFromRandomnessModel,
    RandomProjector,
    RepeatedModuleList,
    _StackedHeads,
    select_targets_dpp,
)


def test_repeated_module_list_instances_differ():
    heads = RepeatedModuleList(3, nn.Linear, 4, 2)
    assert len(heads) == 3 and not torch.equal(heads[0].weight, heads[1].weight)


def test_stacked_heads_match_a_per_head_loop():
    model = LearnFromRandomnessModel(
        nn.Linear(6, 5),
        projectors=RepeatedModuleList(4, RandomProjector, 6, 8, 3),
        predictors=RepeatedModuleList(4, MLPHead, [5, 8, 3], batch_norm=False),
    )
    feats = torch.randn(10, 5)
    model._predictor_stack.loop = False  # vmap, as on an accelerator (CPU loops by default)
    stacked = model._predictor_stack(feats)
    looped = torch.stack([p(feats) for p in model.predictors])
    assert torch.allclose(stacked, looped, atol=1e-6)
    stacked.sum().backward()  # gradients reach each head's own parameters
    assert all(p[0].weight.grad is not None for p in model.predictors)


def test_vmapped_heads_with_batchnorm_match_a_loop_in_eval_mode():
    class Head(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten())

    heads = RepeatedModuleList(3, Head)
    for h in heads:  # distinct running statistics per head
        h[1].running_mean.normal_()
        h[1].running_var.uniform_(0.5, 2.0)
    heads.eval()
    x = torch.randn(7, 1, 10)
    stacked = _StackedHeads(heads, loop=False)(x)
    assert torch.allclose(stacked, torch.stack([h(x) for h in heads]), atol=1e-5)


def _lfr(**lfr):
    return DummyTrainer(
        {
            "method": "lfr",
            "epochs": 4,
            "data": {"num_samples": 256, "batch_size": 32},
            "lfr": {
                "num_projectors": 6,
                "num_targets": 3,
                "proj_dim": 8,
                "proj_hidden": 16,
                "pred_hidden": 16,
                **lfr,
            },
        }
    )


def test_projectors_never_change_and_are_not_optimized():
    trainer = _lfr()
    method = trainer.method
    assert len(method.projectors) == 3 and method.selected is not None
    before = copy.deepcopy(method.projectors.state_dict())
    stepped = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not stepped & {id(p) for p in method.projectors.parameters()}
    list(trainer.loop.epochs())
    for k, v in method.projectors.state_dict().items():
        assert torch.equal(v, before[k])


def test_phases_freeze_the_backbone_in_predictor_epochs():
    trainer = _lfr(predictor_training_epochs=1)
    method, epochs = trainer.method, trainer.loop.epochs()
    snapshots = [copy.deepcopy(method.backbone.state_dict())]
    for _ in range(3):
        next(epochs)
        snapshots.append(copy.deepcopy(method.backbone.state_dict()))
    changed = [
        any(not torch.equal(a[k], b[k]) for k in a if "running" not in k and "num_batches" not in k)
        for a, b in zip(snapshots, snapshots[1:], strict=False)
    ]
    assert changed == [True, False, True]  # epochs 0 and 2 train the backbone, epoch 1 does not
    steps_per_epoch = trainer.loop.steps_per_epoch
    assert method.backbone_training_steps == 2 * steps_per_epoch


def test_max_backbone_training_steps_ends_training():
    trainer = _lfr(max_backbone_training_steps=5)
    history = list(trainer.loop.epochs())
    assert trainer.method.backbone_training_steps == 5 and trainer.loop.state.global_step == 5
    assert len(history) == 1 and "knn_acc" in history[-1]


# ---------------------------------------------------------------- correctness (issue 13)


def test_dpp_finds_the_unique_diverse_subset():
    """5 orthonormal rows among 15 shorter near-copies of the first: the subset of largest
    determinant is rows 0-4, and no other comes close (a random 5 of 20 hits it with
    probability 1 / 15504)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.eye(5, 12)
    copies = 0.9 * torch.nn.functional.normalize(
        basis[:1] + 0.01 * torch.randn(15, 12, generator=g), dim=1
    )
    rows = torch.cat([basis, copies])
    order = torch.randperm(20, generator=g)  # the diverse rows sit anywhere
    chosen = select_targets_dpp(rows[order], 5)
    assert sorted(int(order[i]) for i in chosen) == [0, 1, 2, 3, 4]


def test_dpp_buffers_live_on_the_features_device():
    rows = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    torch.set_default_device("meta")  # a buffer allocated without device= lands here
    try:
        chosen = select_targets_dpp(rows, 3)
    finally:
        torch.set_default_device("cpu")
    assert len(set(chosen)) == 3


def test_repeated_module_list_refuses_a_non_module_class():
    with pytest.raises(AssertionError, match="subclass of torch.nn.Module"):
        RepeatedModuleList(2, dict)


def test_negative_predictor_training_epochs_trains_the_backbone_every_epoch():
    model = LearnFromRandomnessModel(
        nn.Linear(6, 5),
        projectors=RepeatedModuleList(2, RandomProjector, 6, 8, 3),
        predictors=RepeatedModuleList(2, MLPHead, [5, 8, 3], batch_norm=False),
        predictor_training_epochs=-1,
    )
    for epoch in range(4):
        model.on_training_epoch_start(epoch)
        assert model.backbone_trains


def test_frozen_phase_keeps_batchnorm_statistics_too():
    trainer = _lfr(predictor_training_epochs=1)
    method, epochs = trainer.method, trainer.loop.epochs()
    next(epochs)  # epoch 0 trains the backbone
    before = copy.deepcopy(method.backbone.state_dict())
    assert any("running_mean" in k for k in before)
    next(epochs)  # epoch 1: predictors only
    for key, value in method.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_step_budget_holds_across_a_restore(tmp_path):
    from rayssl.runs.state import load_state, save_state

    trainer = _lfr(max_backbone_training_steps=5)
    list(trainer.loop.epochs())
    save_state(trainer.loop.state_dict(), tmp_path)
    again = _lfr(max_backbone_training_steps=5)
    again.loop.load_state_dict(load_state(tmp_path))
    assert list(again.loop.epochs()) == []
    assert again.method.backbone_training_steps == 5 and again.loop.state.global_step == 5


def test_load_extra_state_restores_the_saved_selection():
    trainer = _lfr()
    saved = trainer.method.extra_state()
    fresh = LearnFromRandomnessModel(
        nn.Linear(6, 5),
        projectors=RepeatedModuleList(6, RandomProjector, 6, 8, 3),
        predictors=RepeatedModuleList(6, MLPHead, [5, 8, 3], batch_norm=False),
        num_targets=3,
    )
    fresh.load_extra_state(saved)
    assert fresh.selected == saved["selected"] and len(fresh.projectors) == 3
