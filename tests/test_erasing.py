"""Random erasing (rayssl.data.erasing; `data.augment.image.erase`): the boxes against
timm's RandomErasing, the noise, and its place after normalisation in the training views."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import one_process_loop
from pydantic import ValidationError

from rayssl.config import EraseConfig, ImageViewsConfig
from rayssl.data.erasing import random_erase

OFFSET = 50.0  # far from any N(0, 1) draw: erased pixels are those below 10


def _erased(p: float = 0.25, n: int = 4000, h: int = 24, w: int = 32, seed: int = 0):
    x = torch.full((n, 3, h, w), OFFSET)
    out = random_erase(x, EraseConfig(p=p), torch.Generator().manual_seed(seed))
    return x, out, out < 10


def _boxes(mask: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Each sample's erased box (top, left, height, width), checked to be one rectangle of
    every channel; None where nothing is erased."""
    boxes = []
    for m in mask:
        assert torch.equal(m[0], m[1]) and torch.equal(m[0], m[2])  # every channel
        rows, cols = m[0].any(1).nonzero().squeeze(1), m[0].any(0).nonzero().squeeze(1)
        if not len(rows):
            boxes.append(None)
            continue
        top, left = int(rows[0]), int(cols[0])
        height, width = len(rows), len(cols)
        assert bool(m[0, top : top + height, left : left + width].all())  # a filled rectangle
        assert int(m[0].sum()) == height * width
        boxes.append((top, left, height, width))
    return boxes


def _timm_boxes(n: int, h: int, w: int, p: float) -> list[tuple[int, int, int, int] | None]:
    from timm.data.random_erasing import RandomErasing

    random.seed(0)
    torch.manual_seed(0)
    x = torch.full((n, 3, h, w), OFFSET)
    RandomErasing(probability=p, mode="pixel", device="cpu")(x)
    return _boxes(x < 10)


def test_boxes_are_drawn_as_timms_random_erasing():
    """The same distribution as timm's (mode pixel, MAE's p 0.25), over 4,000 samples: the
    share erased, the boxes' mean area and aspect, their spread over the image."""
    _, out, mask = _erased()
    ours = _boxes(mask)
    theirs = _timm_boxes(4000, 24, 32, 0.25)

    def stats(boxes):
        drawn = [b for b in boxes if b is not None]
        area = torch.tensor([b[2] * b[3] / (24 * 32) for b in drawn])
        aspect = torch.tensor([b[2] / b[3] for b in drawn]).log()
        centre = torch.tensor([(b[0] + b[2] / 2) / 24 for b in drawn])
        return len(drawn) / len(boxes), area.mean(), aspect.mean(), aspect.std(), centre.mean()

    share, area, log_aspect, spread, centre = stats(ours)
    want = stats(theirs)
    assert abs(share - want[0]) < 0.03  # ~0.25; 3 standard errors of a share of 4,000
    assert abs(area - want[1]) < 0.02  # ~0.17 of the image
    assert abs(log_aspect - want[2]) < 0.1 and abs(spread - want[3]) < 0.1
    assert abs(centre - want[4]) < 0.03
    # within the ranges: area in [0.02, 1/3] up to rounding, inside the image
    for top, left, height, width in filter(None, ours):
        assert top + height <= 24 and left + width <= 32 and height < 24 and width < 32


def test_the_erased_pixels_are_standard_normal_and_the_rest_untouched():
    x, out, mask = _erased(p=1.0, n=500)
    noise = out[mask]
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    assert torch.equal(out[~mask], x[~mask])
    assert float(mask.float().mean()) > 0.1  # p = 1: every sample erased where a try fits


def test_the_sync_free_form_erases_the_same_boxes_with_standard_normal_noise():
    x = torch.full((500, 3, 24, 32), OFFSET)
    cpu = random_erase(x, EraseConfig(p=0.5), torch.Generator().manual_seed(4), masked=False)
    masked = random_erase(x, EraseConfig(p=0.5), torch.Generator().manual_seed(4), masked=True)
    assert torch.equal(cpu < 10, masked < 10)
    noise = masked[masked < 10]
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1) < 0.02
    assert torch.equal(x, torch.full_like(x, OFFSET))  # the input is left as it was


def test_p_zero_erases_nothing_and_the_generator_decides_the_boxes():
    assert torch.equal(_erased(p=0.0, n=100)[1], torch.full((100, 3, 24, 32), OFFSET))
    assert torch.equal(_erased(seed=1, n=100)[1], _erased(seed=1, n=100)[1])
    assert not torch.equal(_erased(seed=1, n=100)[1], _erased(seed=2, n=100)[1])


def test_a_supervised_runs_training_views_are_erased_after_normalisation():
    """What the network sees: boxes of N(0, 1) noise in the normalised, channels_last views;
    its evaluation inputs are clean."""
    image = {"crop_scale": [1.0, 1.0], "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}
    image.update(blur_p=0.0, erase={"p": 1.0})
    data = {"name": "synthetic", "shape": [3, 16, 16], "augment": {"image": image}}
    loop = one_process_loop(
        {
            "method": "supervised",
            "data": data,
            "backbone": {"name": "cnn2d", "width": 8, "depth": 2},
            "performance": {"channels_last": True},
        }
    )
    x = torch.rand(8, 3, 16, 16)
    seen = loop.inputs.views(x.clone(), torch.Generator().manual_seed(0))
    clean = loop.inputs.layout(x)
    changed = (seen != clean).all(dim=1)  # (B, H, W): replaced in every channel
    assert bool(changed.flatten(1).any(1).all())  # p = 1: a box in every sample
    box = changed.unsqueeze(1).expand_as(seen)
    assert torch.equal(seen[~box], clean[~box])
    assert abs(float(seen[box].std()) - 1) < 0.1  # N(0, 1) in the normalised units
    assert seen.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(loop.inputs.evaluation(x.clone(), torch.Generator()), clean)


@pytest.mark.parametrize(
    "erase, field",
    [({"p": 2}, "p"), ({"scale": [0.5, 0.1]}, "scale"), ({"ratio": [0, 1]}, "ratio")],
)
def test_bad_erase_parameters_name_the_field(erase, field):
    with pytest.raises(ValidationError, match=field):
        ImageViewsConfig(erase=erase)
