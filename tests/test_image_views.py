"""The SimCLR / BYOL image views: per-sample statistics, determinism, the papers' presets."""

import math

import pytest
import torch

from rayssl.config import AugmentConfig, ConfigError, ImageViewsConfig, validate_train_config
from rayssl.data import Augment
from rayssl.data.image_views import (
    ImageViews,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    grayscale,
    resized_crop_and_flip,
    sample_crop_boxes,
)

OFF = {"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
FULL_CROP = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}


def _views(x, seed=0, view=0, **cfg):
    return ImageViews(ImageViewsConfig(**cfg), view)(x, torch.Generator().manual_seed(seed))


def _colour_images(n=2000, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size).contiguous()


def test_crop_boxes_stay_in_the_scale_and_ratio_ranges():
    width, height, cx, cy = sample_crop_boxes(
        20000, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)
    )
    area, ratio = width * height, width / height
    assert width.max() <= 1 and height.max() <= 1  # every box lies inside the image
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1.0 + 1e-6
    assert ratio.min() >= 0.75 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    assert (cx - width / 2).min() >= 0 and (cx + width / 2).max() <= 1 + 1e-6
    assert (cy - height / 2).min() >= 0 and (cy + height / 2).max() <= 1 + 1e-6
    # per-sample, spread over the range (not one box per batch)
    # per-sample, spread over the range (not one box per batch); large boxes are rejected
    # more often (their ratio makes them overflow), so the mean lies below U(0.08, 1)'s 0.54
    assert area.std() > 0.2 and 0.4 < float(area.mean()) < 0.54


def test_a_full_crop_without_flip_is_the_identity():
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(_views(x, **OFF, **FULL_CROP), x, atol=1e-5)


def test_the_crop_resamples_each_box_as_torchvisions_resized_crop():
    """Per-sample boxes on whole pixels, resized to 24 px and mirrored where drawn, equal
    torchvision's bilinear `resized_crop` (no antialias) of that box, then its flip: the
    sampling grid puts every output pixel where torchvision's resize reads. (Boxes at least
    the output's size: a smaller box's edge pixels blend with the pixels beside the box,
    which torchvision's crop has cut away.)"""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 64, 56, generator=g)  # H 64, W 56
    boxes = [(4, 2, 30, 24), (0, 0, 64, 56), (10, 12, 24, 37), (1, 5, 60, 25), (20, 0, 40, 56)]
    boxes.append((7, 8, 48, 48))  # top, left, height, width
    top, left, height, width = (
        torch.tensor(col, dtype=torch.float32) for col in zip(*boxes, strict=True)
    )
    fractions = (width / 56, height / 64, (left + width / 2) / 56, (top + height / 2) / 64)
    flip = torch.tensor([False, True, False, True, True, False])
    out = resized_crop_and_flip(x, fractions, flip, (24, 24))
    for i, (t, left_px, h, w) in enumerate(boxes):
        expected = tvf.resized_crop(x[i], t, left_px, h, w, [24, 24], antialias=False)
        expected = tvf.horizontal_flip(expected) if flip[i] else expected
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_flip_mirrors_about_half_of_the_samples():
    x = torch.rand(1000, 1, 6, 6)
    out = _views(x, **{**OFF, "flip_p": 0.5}, **FULL_CROP)
    mirrored = torch.tensor(
        [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x, strict=True)]
    )
    kept = torch.tensor([torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x, strict=True)])
    assert bool((mirrored | kept).all()) and abs(float(mirrored.float().mean()) - 0.5) < 0.05


def test_grayscale_share_is_p_over_a_large_batch():
    x = _colour_images(4000)
    out = _views(x, **{**OFF, "grayscale_p": 0.2}, **FULL_CROP)
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(float(grey.float().mean()) - 0.2) < 0.03
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(out[grey, 0], expected[grey], atol=1e-5)


def test_colour_jitter_draws_factors_per_sample_within_their_ranges():
    x = torch.full((2000, 3, 4, 4), 0.5)
    out = _views(
        x,
        **{**OFF, "jitter_p": 1.0, "contrast": 0, "saturation": 0, "hue": 0, "brightness": 0.4},
        **FULL_CROP,
    )
    factors = out[:, 0, 0, 0] / 0.5  # brightness multiplies: a uniform image shows it
    assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
    assert factors.std() > 0.2  # one factor per sample: U(0.6, 1.4) has std 0.23


def test_jitter_probability_gates_per_sample():
    x = _colour_images(4000)
    out = _views(x, **{**OFF, "jitter_p": 0.8, "brightness": 0.8}, **FULL_CROP)
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert abs(float(changed.float().mean()) - 0.8) < 0.03


def test_hue_rotation_keeps_brightness_order_and_greys_stay_grey():
    grey = torch.full((8, 3, 4, 4), 0.3)
    out = _views(
        grey,
        **{**OFF, "jitter_p": 1.0, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0.5},
        **FULL_CROP,
    )
    assert torch.allclose(out, grey, atol=1e-4)  # hue has no effect on grey


def test_hue_rotation_matches_the_hsv_definition():
    """Each sample's hue turns by its own shift, as colorsys (the standard library's HSV)
    defines it: a hue op that does nothing, or turns every sample alike, fails here."""
    import colorsys

    n = 64
    g = torch.Generator().manual_seed(5)
    rgb = torch.rand(n, 3, generator=g) * 0.8 + 0.1
    shift = torch.rand(n, generator=g) - 0.5  # torchvision's hue_factor range
    x = rgb.view(n, 3, 1, 1).expand(n, 3, 2, 2).contiguous()
    out = color_jitter(x, _factors(hue=shift), torch.tensor([[3, 0, 1, 2]] * n))
    expected = []
    for (r, g_, b), turn in zip(rgb.tolist(), shift.tolist(), strict=True):
        h, s, v = colorsys.rgb_to_hsv(r, g_, b)
        expected.append(colorsys.hsv_to_rgb((h + turn) % 1.0, s, v))
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor(expected), atol=2e-3, rtol=0)
    assert (out - x).abs().amax() > 0.1  # it did rotate


def _factors(brightness=None, contrast=None, saturation=None, hue=None, n=64):
    ones = torch.ones(n)
    return torch.stack(
        [
            ones if brightness is None else brightness,
            ones if contrast is None else contrast,
            ones if saturation is None else saturation,
            torch.zeros(n) if hue is None else hue,
        ],
        dim=1,
    )


def test_colour_jitter_matches_torchvision_per_sample_factors_and_order():
    """Brightness, contrast, saturation and hue, each sample with its own factors and op
    order, equal torchvision's functional ops applied to that sample in that order
    (torchvision is a benchmark extra: skipped where it is not installed)."""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    n = 24
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, 3, 8, 8, generator=g)
    factors = torch.stack(
        [
            0.2 + 1.6 * torch.rand(n, generator=g),
            0.2 + 1.6 * torch.rand(n, generator=g),
            0.2 + 1.6 * torch.rand(n, generator=g),
            torch.rand(n, generator=g) - 0.5,
        ],
        dim=1,
    )
    order = torch.rand(n, 4, generator=g).argsort(dim=1)
    out = color_jitter(x, factors, order)
    ops = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)
    for i in range(n):
        expected = x[i]
        for op in order[i].tolist():
            expected = ops[op](expected, float(factors[i, op]))
        torch.testing.assert_close(out[i], expected, atol=2e-3, rtol=0)


def test_blur_uses_a_per_sample_sigma_and_preserves_the_mean():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # not the global RNG
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 2.0])
    out = gaussian_blur(x, sigma, blur_kernel_size(32, 32))
    assert blur_kernel_size(32, 32) == 3 and blur_kernel_size(224, 224) == 23
    spread = out.std(dim=(1, 2, 3))
    assert spread[0] > spread[2] > spread[4]  # more blur, less variance
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02)
    assert torch.allclose(gaussian_blur(x, torch.full((6,), 1e-3), 3), x, atol=1e-5)


def test_a_wider_blur_kernel_keeps_large_sigmas_from_being_truncated():
    """At 32 px the paper's tenth-of-the-side kernel is 3 taps: sigma 2 then blurs little more
    than sigma 0.5. `blur_kernel: 13` (+-3 sigma at sigma 2, what PIL's blur covers) blurs
    sigma 2 far more; with a sigma of 0.1 both are the identity."""
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    strong = {**OFF, **FULL_CROP, "blur_p": 1.0, "blur_sigma": (2.0, 2.0)}
    paper = _views(x, **strong).std(dim=(1, 2, 3)).mean()
    wide = _views(x, **strong, blur_kernel=13).std(dim=(1, 2, 3)).mean()
    assert wide < 0.6 * paper
    faint = {**strong, "blur_sigma": (0.1, 0.1)}
    assert torch.allclose(_views(x, **faint, blur_kernel=13), x, atol=1e-4)
    # a kernel wider than a small crop is clamped to what reflect padding allows
    small = _views(x[:, :, :4, :4], **strong, blur_kernel=13)
    assert small.shape == (64, 3, 4, 4) and torch.isfinite(small).all()


def test_solarize_inverts_above_the_threshold_with_probability_p():
    x = torch.rand(4000, 1, 2, 2)
    always = _views(x, **{**OFF, "solarize_p": 1.0}, **FULL_CROP)
    assert torch.allclose(always, torch.where(x >= 0.5, 1 - x, x), atol=1e-5)
    some = _views(x, **{**OFF, "solarize_p": 0.2}, **FULL_CROP)
    changed = (some - x).abs().amax(dim=(1, 2, 3)) > 1e-6
    share_above = float((x >= 0.5).any(dim=(1, 2, 3)).float().mean())
    assert abs(float(changed.float().mean()) - 0.2 * share_above) < 0.03


def test_views_are_reproducible_from_the_generator_and_differ_across_seeds():
    x = torch.rand(16, 3, 16, 16)
    cfg = AugmentConfig(preset="simclr")
    a = Augment(cfg)(x, torch.Generator().manual_seed(7))
    b = Augment(cfg)(x, torch.Generator().manual_seed(7))
    c = Augment(cfg)(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # the stream has the same shape whatever the probabilities: the next draw agrees
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    Augment(AugmentConfig(preset="simclr"))(x, g1)
    Augment(AugmentConfig(preset="byol"))(x, g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_presets_hold_the_papers_parameters_and_keys_override_them():
    simclr = AugmentConfig(preset="simclr").image
    assert (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue) == (
        0.8,
        0.8,
        0.8,
        0.2,
    )
    assert simclr.blur_p == 0.5 and simclr.grayscale_p == 0.2 and simclr.jitter_p == 0.8
    byol = AugmentConfig(preset="byol").image
    assert (byol.brightness, byol.contrast, byol.saturation, byol.hue) == (0.4, 0.4, 0.2, 0.1)
    assert byol.blur_p == [1.0, 0.1] and byol.solarize_p == [0.0, 0.2]
    assert tuple(byol.crop_scale) == (0.08, 1.0) and byol.flip_p == 0.5
    assert AugmentConfig(preset="byol", image={"blur_p": 0.3}).image.blur_p == 0.3


def test_byols_views_are_asymmetric():
    x = torch.rand(2000, 3, 8, 8)
    cfg = ImageViewsConfig(**{**OFF, **FULL_CROP, "solarize_p": [0.0, 1.0]})
    first = ImageViews(cfg, 0)(x, torch.Generator().manual_seed(0))
    second = ImageViews(cfg, 1)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(first, x, atol=1e-5) and not torch.allclose(second, x, atol=1e-2)


def test_bad_view_parameters_name_the_field():
    with pytest.raises(ConfigError, match="augment.image.blur_p must be in"):
        validate_train_config({"data": {"augment": {"image": {"blur_p": [1.0, 1.5]}}}})
    with pytest.raises(ConfigError, match="crop_scale"):
        validate_train_config({"data": {"augment": {"image": {"crop_scale": [0.5, 0.1]}}}})
    with pytest.raises(ConfigError, match="preset"):
        validate_train_config({"data": {"augment": {"preset": "moco"}}})


def test_grayscale_helper_matches_itu_601():
    x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert math.isclose(float(grayscale(x)), 0.299, rel_tol=1e-6)


def test_views_that_cannot_take_the_data_fail_before_ray_in_one_line(write_config, tmp_path):
    """Image views on 1-D samples, and an augment.image.size the backbone cannot take, were
    a worker's traceback (exit 1); preflight runs the views on the driver."""
    from click.testing import CliRunner

    from rayssl.cli import main

    cases = [
        (
            {"data": {"name": "synthetic", "shape": [1, 16], "augment": {"preset": "simclr"}}},
            "data.augment cannot make views of samples of shape (1, 16)",
        ),
        (
            {
                "data": {
                    "name": "synthetic",
                    "shape": [3, 16, 16],
                    "augment": {"image": {"size": 40}},
                },
                "backbone": {"name": "mlp", "hidden": [8]},
            },
            "resized to 40x40 by data.augment.image.size",
        ),
    ]
    for overrides, expected in cases:
        config = write_config({"method": "simclr", **overrides})
        result = CliRunner().invoke(main, ["train", str(config)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.output
        assert not (tmp_path / "runs").exists()


def test_multi_crop_adds_small_local_crops_after_unchanged_global_views():
    """augment.image.local_crops (DINO): after the two global views come `number` local
    crops at `size`, from the same generator; the global views are exactly those of the
    same config without local crops, and a method that takes no multi-crop gets two views."""
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    local = {"number": 3, "size": 8, "scale": [0.05, 0.4]}
    multi = Augment(AugmentConfig(preset="byol", image={"local_crops": local}))
    plain = Augment(AugmentConfig(preset="byol"))
    views = multi.views(x, torch.Generator().manual_seed(1), 2, multi_crop=True)
    assert [tuple(v.shape) for v in views] == [(6, 3, 16, 16)] * 2 + [(6, 3, 8, 8)] * 3
    expected = plain.views(x, torch.Generator().manual_seed(1), 2)
    assert all(torch.equal(a, b) for a, b in zip(views[:2], expected, strict=True))
    again = multi.views(x, torch.Generator().manual_seed(1), 2, multi_crop=True)
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    assert not torch.equal(views[2], views[3])  # each local crop draws its own boxes
    assert len(multi.views(x, torch.Generator().manual_seed(1), 2)) == 2
    # the default side is 3/7 of the global views' (DINO's 96 for 224)
    default = Augment(AugmentConfig(preset="byol", image={"local_crops": {"number": 1}}))
    assert default.views(x, torch.Generator(), 2, multi_crop=True)[2].shape[-1] == 7


def test_local_crops_are_refused_for_a_method_that_pairs_two_views():
    image = {"shape": [3, 16, 16], "augment": {"preset": "byol", "image": {"local_crops": {}}}}
    with pytest.raises(ConfigError, match="simclr pairs two views and takes no local crops"):
        validate_train_config({"method": "simclr", "data": image})
    assert validate_train_config({"method": "dino", "data": image}).method == "dino"


@pytest.mark.parametrize("preset", ["simclr", "byol"])
@pytest.mark.parametrize("view", [0, 1])
def test_the_sync_free_gpu_form_gives_every_sample_the_cpu_forms_view(preset, view):
    """The GPU form (every op on the whole batch, kept per sample by torch.where) and the
    CPU form (each op on the samples that draw it) make the same views from one generator
    state; here both run on the CPU, chosen explicitly."""
    x = torch.rand(512, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    cfg = AugmentConfig(preset=preset).image
    gathered = ImageViews(cfg, view, masked=False)(x, torch.Generator().manual_seed(7))
    masked = ImageViews(cfg, view, masked=True)(x, torch.Generator().manual_seed(7))
    assert not torch.allclose(gathered, x, atol=1e-2)  # the views did something
    torch.testing.assert_close(masked, gathered, atol=2e-6, rtol=0)


def test_the_sync_free_colour_jitter_applies_each_samples_ops_in_its_order():
    n = 256
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g)
    factors = torch.stack(
        [1 + 0.8 * (torch.rand(n, generator=g) - 0.5) for _ in range(3)]
        + [0.2 * (torch.rand(n, generator=g) - 0.5)],
        dim=1,
    )
    order = torch.rand(n, 4, generator=g).argsort(dim=1)
    torch.testing.assert_close(
        color_jitter(x, factors, order, masked=True),
        color_jitter(x, factors, order),
        atol=2e-6,
        rtol=0,
    )


@pytest.mark.parametrize("preset", ["simclr", "byol"])
def test_views_made_under_bf16_autocast_on_the_cpu_stay_float32(preset):
    """The loop makes the views under the step's autocast (`performance.amp: bf16`): the
    blur's convolution then returns bfloat16 rows, which go back into the float32 batch (a
    CPU run in bf16 with blurred views failed here before: index_copy_ of BFloat16 rows into
    a Float batch). The views stay float32, within bfloat16's rounding of the fp32 ones."""
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    views = ImageViews(AugmentConfig(preset=preset).image, 0, masked=False)
    plain = views(x, torch.Generator().manual_seed(7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = views(x, torch.Generator().manual_seed(7))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, atol=3e-2, rtol=0)


def test_an_image_ssl_run_trains_in_bf16_on_the_cpu():
    from conftest import one_process_loop

    loop = one_process_loop(
        {
            "method": "simclr",
            "epochs": 1,
            "data": {"name": "synthetic", "shape": [3, 16, 16], "num_samples": 32,
                     "batch_size": 16, "augment": {"preset": "simclr"}},
            "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
            "performance": {"amp": "bf16"},
        }
    )  # fmt: skip
    (epoch,) = list(loop.epochs())
    assert math.isfinite(epoch["train_loss"])
