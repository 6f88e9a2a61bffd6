"""RandAugment on batches (rayssl.data.rand_augment): each op against torchvision's (or
timm's) definition with per-sample magnitudes, the policy's draws, the two forms, and its
place in the views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rayssl.config import ImageViewsConfig, RandAugmentConfig
from rayssl.data import rand_augment
from rayssl.data.image_views import ImageViews

B = 6


def _images(h: int = 20, w: int = 24) -> torch.Tensor:
    """Images on the 8-bit grid (k / 255), one with a constant channel."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (B, 3, h, w), generator=g).float() / 255
    x[0, 1] = 0.4
    return x


LEVELS = [0.0, 0.15, 0.33, 0.61, 0.9, 1.0]  # 0.9: magnitude 9
SIGNS = [1.0, -1.0, 1.0, -1.0, -1.0, 1.0]


def _params() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample levels and signs as the draws hold them (float32); the references take
    LEVELS, in float64 as timm computes them."""
    return torch.tensor(LEVELS), torch.tensor(SIGNS)


def _factor(level: float, sign: float) -> float:
    return max(0.1, 1 + sign * 0.9 * level)  # timm's _enhance_increasing_level_to_arg


# op -> the reference for one image at (level, sign), from torchvision's functional ops
REFERENCES = {
    "auto_contrast": lambda x, lv, s: TF.autocontrast(x),
    "equalize": lambda x, lv, s: TF.equalize(x),
    "invert": lambda x, lv, s: TF.invert(x),
    "posterize": lambda x, lv, s: (
        TF.posterize((x * 255).round().to(torch.uint8), 4 - math.floor(4 * lv)).float() / 255
    ),
    "solarize": lambda x, lv, s: (
        x if lv < 1 / 256 else TF.solarize(x, (256 - math.floor(256 * lv)) / 255)
    ),  # threshold 256 (level 0): nothing inverted, which torchvision refuses to be asked
    "color": lambda x, lv, s: TF.adjust_saturation(x, _factor(lv, s)),
    "contrast": lambda x, lv, s: TF.adjust_contrast(x, _factor(lv, s)),
    "brightness": lambda x, lv, s: TF.adjust_brightness(x, _factor(lv, s)),
    "sharpness": lambda x, lv, s: TF.adjust_sharpness(x, _factor(lv, s)),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_each_colour_op_is_torchvisions_at_each_samples_own_magnitude(name):
    x = _images()
    level, sign = _params()
    out = rand_augment.FUNCTIONS[name](x.clone(), level, sign)
    for i in range(B):
        want = REFERENCES[name](x[i], LEVELS[i], SIGNS[i])
        # torchvision's grey weighs red 0.2989; PIL's (timm's) and ITU-R 601-2's, 0.299
        atol = 1e-4 if name in ("color", "contrast") else 2e-6
        torch.testing.assert_close(out[i], want, atol=atol, rtol=0, msg=f"{name} sample {i}")


def test_solarize_add_is_timms_pil_lookup_table():
    """timm's own op on a PIL image: add floor(110 level) to the bytes below 128."""
    from PIL import Image
    from timm.data.auto_augment import solarize_add

    x = _images()
    level, sign = _params()
    out = rand_augment.solarize_add(x, level, sign)
    for i in range(B):
        pil = Image.fromarray((x[i] * 255).round().byte().permute(1, 2, 0).numpy())
        want = torch.from_numpy(np.array(solarize_add(pil, math.floor(110 * LEVELS[i]))))
        got = (out[i] * 255).round().byte().permute(1, 2, 0)
        assert torch.equal(got, want), i


def _inside(mask: torch.Tensor) -> torch.Tensor:
    """Pixels that torchvision's warp reads wholly inside or wholly outside the image (its
    edge pixels blend the fill by another rule than bilinear padding's)."""
    return (mask == 1) | (mask == 0)


GEOMETRY = {  # op -> torchvision's affine arguments at (level, sign) for an (h, w) image
    # affine's angle turns clockwise, rotate's (and PIL's) counter-clockwise
    "rotate": lambda lv, s, h, w: {"angle": -s * 30 * lv},
    "shear_x": lambda lv, s, h, w: {"shear": [math.degrees(math.atan(s * 0.3 * lv)), 0.0]},
    "shear_y": lambda lv, s, h, w: {"shear": [0.0, math.degrees(math.atan(s * 0.3 * lv))]},
    "translate_x": lambda lv, s, h, w: {"translate": [s * 0.45 * lv * w, 0.0]},
    "translate_y": lambda lv, s, h, w: {"translate": [0.0, s * 0.45 * lv * h]},
}


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_each_geometric_op_is_torchvisions_affine_with_timms_grey_fill(name):
    x = _images(20, 24)
    level, sign = _params()
    out = rand_augment.FUNCTIONS[name](x, level, sign)
    for i in range(B):
        args = {"angle": 0.0, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0]}
        args.update(GEOMETRY[name](LEVELS[i], SIGNS[i], 20, 24))
        bilinear = InterpolationMode.BILINEAR
        want = TF.affine(x[i], **args, interpolation=bilinear, fill=[0.5] * 3)
        mask = TF.affine(torch.ones(1, 20, 24), **args, interpolation=bilinear, fill=[0.0])
        keep = _inside(mask).expand_as(want)
        assert keep.float().mean() > 0.5
        torch.testing.assert_close(out[i][keep], want[keep], atol=1e-5, rtol=0)
    if name.startswith("translate"):  # a whole-pixel shift moves the image: no resampling
        shift = rand_augment.FUNCTIONS[name](x, torch.tensor([4 / 0.45 / 24] * B), -torch.ones(B))
        if name == "translate_x":
            assert torch.allclose(shift[..., :-4], x[..., 4:], atol=1e-6)
            assert torch.allclose(shift[..., -4:], torch.full_like(shift[..., -4:], 0.5))


def test_the_draws_follow_the_policy_over_many_samples():
    cfg = RandAugmentConfig()  # timm's rand-m9-mstd0.5-inc1
    g = torch.Generator().manual_seed(0)
    d = rand_augment.draw(cfg, 30_000, g)
    assert d.op.shape == (30_000, 2)
    counts = torch.bincount(d.op.flatten(), minlength=15).float() / d.op.numel()
    assert torch.allclose(counts, torch.full((15,), 1 / 15), atol=0.005)  # uniform, 15 ops
    assert abs(d.on.float().mean() - 0.5) < 0.01
    assert abs(d.level.mean() - 0.9) < 0.01 and abs(d.level.std() - 0.05) < 0.005
    assert d.level.min() >= 0 and d.level.max() <= 1  # clipped to magnitude 10
    assert set(d.sign.unique().tolist()) == {-1.0, 1.0}
    assert abs(d.sign.mean()) < 0.02


def _views(rand_augment_cfg, masked=False, seed=0, x=None):
    cfg = ImageViewsConfig(rand_augment=rand_augment_cfg, jitter_p=0.8, blur_p=0.5)
    x = _images(16, 16) if x is None else x
    return ImageViews(cfg, masked=masked)(x, torch.Generator().manual_seed(seed))


def test_views_without_rand_augment_draw_as_before_and_p_zero_changes_nothing():
    """Its draws come last: the same crop and colours with it at p = 0 as without it."""
    plain = _views(None)
    assert torch.equal(_views({"p": 0.0}), plain)
    assert not torch.equal(_views({"p": 1.0}), plain)


def test_the_sync_free_form_gives_every_sample_the_cpu_forms_ops():
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cpu = _views({"p": 1.0, "num_ops": 3}, masked=False, x=x)
    masked = _views({"p": 1.0, "num_ops": 3}, masked=True, x=x)
    torch.testing.assert_close(masked, cpu, atol=1e-5, rtol=0)


class _HostReads(TorchDispatchMode):
    """Ops that read a tensor back to the host (a sync on CUDA, or fatal in a graph)."""

    READS = {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.is_nonzero.default,
        torch.ops.aten.nonzero.default,
        torch.ops.aten.item.default,
    }

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads.append(func)
        return func(*args, **(kwargs or {}))


def test_the_sync_free_form_reads_nothing_back():
    """The form replayed as a CUDA graph on a GPU: no data-dependent shape, no read."""
    x = torch.rand(8, 3, 16, 16)
    cfg = ImageViewsConfig(rand_augment={"p": 1.0}, jitter_p=0.0, blur_p=0.0, grayscale_p=0.0)
    views = ImageViews(cfg, masked=True)
    d = views.draw(8, 1.0, torch.Generator().manual_seed(0))
    with _HostReads() as mode:
        out = views.apply(x, d, masked=True)
    assert out.shape == x.shape and mode.reads == []


def test_views_under_bf16_autocast_on_the_cpu_stay_float32():
    x = _images(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _views({"p": 1.0}, x=x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _views({"p": 1.0}, x=x), atol=0.02, rtol=0)


@pytest.mark.parametrize("field", ["num_ops", "magnitude", "p"])
def test_bad_rand_augment_parameters_name_the_field(field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        ImageViewsConfig(rand_augment={field: 99})


def test_a_run_with_rand_augment_and_erasing_resumes_mid_epoch_exactly(tmp_path):
    """Their draws come from the views' generator, which a mid-epoch checkpoint carries: a
    loop restored from a preemption checkpoint at step 5 ends equal to an uninterrupted one."""
    from conftest import assert_states_equal, one_process_loop
    from test_loop import SaveOnNotice

    from rayssl.runs.state import load_state

    image = {"jitter_p": 0.0, "blur_p": 0.0, "rand_augment": {"p": 1.0}, "erase": {"p": 0.5}}
    overrides = {
        "method": "supervised",
        "epochs": 2,
        "data": {
            "name": "synthetic",
            "shape": [3, 16, 16],
            "num_samples": 128,
            "batch_size": 16,
            "augment": {"image": image},
        },
        "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
        "checkpoint": {"preemption_check_steps": 1},
    }
    straight = one_process_loop(overrides)
    list(straight.epochs())
    assert straight.steps_per_epoch > 5  # the notice lands inside epoch 1
    first = one_process_loop(
        overrides, sink=SaveOnNotice(lambda loop: loop.state.global_step >= 5, tmp_path)
    )
    list(first.epochs())
    torch.manual_seed(999)  # the restored draws must come from the checkpoint
    second = one_process_loop(overrides)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())
    assert second.state.history[-1]["train_loss"] == straight.state.history[-1]["train_loss"]
