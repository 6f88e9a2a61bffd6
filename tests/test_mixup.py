"""Mixup and cutmix in supervised training (`supervised.mixup_alpha`, `cutmix_alpha`; timm's
Mixup, as MAE's and DeiT's fine-tuning recipes use it): what the network sees and the loss it
is trained on, checked against the definitions by hand; refusals; exact resume."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_states_equal, timm_or_skip
from conftest import one_process_loop as _loop

timm_or_skip()

from rayssl.config import validate_train_config  # noqa: E402
from rayssl.errors import ConfigError  # noqa: E402
from rayssl.methods.registry import build_method  # noqa: E402
from rayssl.runs.state import load_state, save_state  # noqa: E402

IMAGES = {"name": "synthetic", "shape": [3, 16, 16], "num_samples": 64, "batch_size": 16}
CLASSES = 4


def _method(**section):
    cfg = validate_train_config(
        {
            "num_workers": 1,
            "data": IMAGES,
            "backbone": {"name": "mlp", "hidden": [32]},  # no BatchNorm: a pure function
            "supervised": section,
        }
    )
    return build_method(cfg, (3, 16, 16), CLASSES)


def _seen_and_loss(method, x, y):
    """The input the network received in one training step, and the step's loss."""
    seen = []
    hook = method.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    loss = method.training_step((x.clone(), y))["loss"]  # timm mixes its input in place
    hook.remove()
    return seen[0], loss


def _soft_cross_entropy(logits, y, lam, smoothing):
    """The definition: targets lam * y + (1 - lam) * (y of the reversed batch), each one-hot
    smoothed towards the uniform distribution."""

    def smoothed(labels):
        return F.one_hot(labels, CLASSES).float() * (1 - smoothing) + smoothing / CLASSES

    target = lam * smoothed(y) + (1 - lam) * smoothed(y.flip(0))
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def test_mixup_blends_the_batch_with_itself_reversed_and_its_targets_alike():
    np.random.seed(0)
    torch.manual_seed(0)
    method = _method(mixup_alpha=0.8, label_smoothing=0.1)
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % CLASSES
    seen, loss = _seen_and_loss(method, x, y)
    # one weight for the whole batch: seen = lam * x + (1 - lam) * x reversed
    a, b = (x - x.flip(0)).flatten(), (seen - x.flip(0)).flatten()
    lam = float(a @ b / (a @ a))
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(seen, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        expected = _soft_cross_entropy(method(seen), y, lam, 0.1)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)
    assert method.epoch_metrics("train") == {}  # no train accuracy on mixed targets


def test_cutmix_pastes_a_box_of_the_reversed_batch_and_weights_targets_by_its_area():
    np.random.seed(3)
    torch.manual_seed(0)
    method = _method(cutmix_alpha=1.0)
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % CLASSES
    seen, loss = _seen_and_loss(method, x, y)
    pasted = (seen == x.flip(0)).all(dim=1).all(dim=0)  # (H, W): where every sample took it
    kept = (seen == x).all(dim=1).all(dim=0)
    assert bool((pasted ^ kept).all())  # each pixel is either its own or the partner's
    rows, cols = pasted.any(dim=1).nonzero().flatten(), pasted.any(dim=0).nonzero().flatten()
    assert len(rows) and len(cols)
    box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert bool(box.all()) and int(box.numel()) == int(pasted.sum())  # one rectangle
    lam = 1 - pasted.sum().item() / pasted.numel()
    with torch.no_grad():
        expected = _soft_cross_entropy(method(seen), y, lam, 0.0)
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)


def test_mixing_refuses_an_odd_worker_batch_and_cutmix_on_samples_that_are_not_images():
    with pytest.raises(ValueError, match="must be even: data.batch_size 30 over 2 worker"):
        validate_train_config(
            {
                "num_workers": 2,
                "data": {**IMAGES, "batch_size": 30},
                "supervised": {"mixup_alpha": 1},
            }
        )
    # an elastic range: every worker count's share
    with pytest.raises(ValueError, match=r"6 over 2 worker\(s\) gives 3; use a multiple of 12"):
        validate_train_config(
            {
                "num_workers": [1, 3],
                "max_failures": 1,
                "data": {**IMAGES, "batch_size": 6},
                "supervised": {"cutmix_alpha": 1},
            }
        )
    cfg = validate_train_config(
        {"num_workers": 1, "data": {"name": "synthetic", "shape": [1, 16]},
         "backbone": {"name": "cnn1d", "width": 8}, "supervised": {"cutmix_alpha": 1.0}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="cutmix_alpha pastes boxes between images"):
        build_method(cfg, (1, 16), CLASSES)


MIXED = {
    "epochs": 3,
    "data": IMAGES,
    "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
    "supervised": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1},
}


def test_a_mixed_run_restored_after_an_epoch_ends_exactly_as_an_uninterrupted_one(tmp_path):
    """timm draws from NumPy's global RNG: the checkpoint's per-rank entry carries it."""
    straight = _loop(MIXED)
    history = list(straight.epochs())
    first = _loop(MIXED)
    next(first.epochs())
    save_state(first.state_dict(), tmp_path)
    np.random.seed(123)  # the restored draws must come from the checkpoint, not from here
    second = _loop(MIXED)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())
    assert second.state.history[-1]["train_loss"] == history[-1]["train_loss"]
    assert "train_accuracy" not in history[-1] and "val_accuracy" in history[-1]
