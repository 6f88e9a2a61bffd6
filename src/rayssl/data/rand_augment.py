"""RandAugment (Cubuk et al. 2020) as timm's `rand-m9-mstd0.5-inc1`, the policy of MAE's,
DeiT's and iBOT's fine-tuning, on whole `(B, C, H, W)` batches in [0, 1] on their device.

Each sample draws `num_ops` ops uniformly with replacement from the 15 below (timm's
`_RAND_INCREASING_TRANSFORMS`), each applied with probability `p` at a magnitude drawn from
N(magnitude, magnitude_std) clipped to [0, 10], and a random sign for the signed ops:

    auto_contrast, equalize, invert        no magnitude
    rotate                                 +-30 degrees x level
    posterize                              keep 4 - floor(4 level) bits
    solarize                               invert pixels >= (256 - floor(256 level)) / 255
    solarize_add                           add floor(110 level) / 255 below 128 / 255
    color, contrast, brightness, sharpness factor max(0.1, 1 +- 0.9 level)
    shear_x, shear_y                       +-0.3 level
    translate_x, translate_y               +-0.45 level of the side

(level = magnitude / 10). Exposed pixels take timm's fill, grey (0.5). The geometric ops
turn about the image centre, as torchvision's RandAugment; PIL's shear, which timm calls,
turns about the top-left corner (a shift of the same shear: the distribution of images is
what the signs and magnitudes make it, not the anchor).

Why hand-written: timm's RandAugment works on one PIL image at a time in a DataLoader
process and draws from Python's global RNG; torchvision's v2 RandAugment draws one op and
one magnitude per call (the whole batch alike) and takes no generator. Here every sample
draws its own ops from the caller's generator (a resumed run draws the same), and each op
runs on the rows that drew it (the CPU) or on the whole batch keeping each sample's own
(`masked`: no host sync, as `image_views`). Parameter-free equalize is torchvision's
kernel; the per-sample ops follow torchvision's definitions and are tested against them.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rayssl.data import colour

FILL = 0.5  # timm's _FILL (128, 128, 128)
OPS = (
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "solarize_add",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


class RandAugmentDraws(NamedTuple):
    """A batch's RandAugment draws, one row per sample, one column per op slot: (B, L)."""

    op: torch.Tensor  # index into OPS
    on: torch.Tensor  # the slot applies (probability p)
    level: torch.Tensor  # magnitude / 10, noised and clipped to [0, 1]
    sign: torch.Tensor  # +1 or -1, for the signed ops


def draw(cfg, n: int, g: torch.Generator) -> RandAugmentDraws:
    """Every random number of `n` samples' RandAugment, in a fixed order and number."""
    shape, dev = (n, cfg.num_ops), g.device
    op = torch.randint(len(OPS), shape, generator=g, device=dev)
    on = torch.rand(shape, generator=g, device=dev) < cfg.p
    noise = torch.randn(shape, generator=g, device=dev)
    level = ((cfg.magnitude + cfg.magnitude_std * noise) / 10).clamp_(0, 1)
    sign = torch.where(torch.rand(shape, generator=g, device=dev) < 0.5, -1.0, 1.0)
    return RandAugmentDraws(op, on, level, sign)


def _enhance_factor(level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return (1 + sign * 0.9 * level).clamp_(min=0.1)


def auto_contrast(x: torch.Tensor, level=None, sign=None) -> torch.Tensor:
    """Each channel stretched to [0, 1] (a constant channel kept): torchvision's
    autocontrast, written without its boolean-mask assignment (a host sync on CUDA)."""
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    scale = torch.where(flat, 1.0, high - low)
    return ((x - torch.where(flat, 0.0, low)) / scale).clamp_(0, 1)


def equalize(x: torch.Tensor, level=None, sign=None) -> torch.Tensor:
    from torchvision.transforms.v2.functional import equalize as tv_equalize

    return tv_equalize(x)


def invert(x: torch.Tensor, level=None, sign=None) -> torch.Tensor:
    return 1.0 - x


def _as_bytes(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats on the 0-255 grid the 8-bit ops are defined on, as torchvision's float
    -> uint8 conversion (x times 256 less a thousandth, truncated: k / 255 gives k)."""
    return (x * (256 - 1e-3)).clamp_(0, 255).floor_()


def _floor(v: torch.Tensor) -> torch.Tensor:
    """floor, of a float32 level times a constant: timm computes these in float64, where
    0.9 x 110 is 99, not float32's 98.99999."""
    return (v + 1e-4).floor()


def posterize(x: torch.Tensor, level: torch.Tensor, sign=None) -> torch.Tensor:
    bits = 4 - _floor(4 * level)
    step = colour.per_sample(torch.pow(2.0, 8 - bits), x)
    return (_as_bytes(x) / step).floor_() * step / 255


def solarize(x: torch.Tensor, level: torch.Tensor, sign=None) -> torch.Tensor:
    threshold = colour.per_sample((256 - _floor(256 * level)) / 255, x)
    return torch.where(x >= threshold, 1.0 - x, x)


def solarize_add(x: torch.Tensor, level: torch.Tensor, sign=None) -> torch.Tensor:
    add = colour.per_sample(_floor(110 * level).clamp_(max=128), x)
    v = _as_bytes(x)
    return torch.where(v < 128, (v + add).clamp_(max=255), v) / 255


def color(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return colour.saturation(x, colour.per_sample(_enhance_factor(level, sign), x))


def contrast(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return colour.contrast(x, colour.per_sample(_enhance_factor(level, sign), x))


def brightness(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return colour.brightness(x, colour.per_sample(_enhance_factor(level, sign), x))


def sharpness(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3 x 3, centre 5 / 13, the rest 1 / 13) inside a
    one-pixel border that stays as it was: torchvision's adjust_sharpness. The filter is
    the 3 x 3 box sum (two shifted sums) plus 4 x the centre: on a CPU about a third to a
    half of torchvision's depthwise convolution's time (benchmarks/rand_augment.py)."""
    if min(x.shape[-2:]) <= 2:
        return x
    rows = x[..., :, :-2] + x[..., :, 1:-1] + x[..., :, 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    inner = x[..., 1:-1, 1:-1]
    out = x.clone()
    smooth = (box + 4 * inner) / 13
    factor = colour.per_sample(_enhance_factor(level, sign), x)
    out[..., 1:-1, 1:-1] = torch.lerp(smooth, inner, factor).clamp_(0, 1)  # PIL's blend
    return out


def _warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each sample where `matrix` (B, 2, 2) sends its output pixels (in pixels about
    the centre), shifted by `matrix`'s translation column when (B, 2, 3); grey outside."""
    b, _, h, w = x.shape
    if matrix.shape[-1] == 2:
        matrix = torch.cat([matrix, matrix.new_zeros(b, 2, 1)], dim=2)
    # pixels about the centre -> affine_grid's [-1, 1] (x / (w / 2), y / (h / 2)): the
    # matrix conjugated by diag(w / 2, h / 2), written out (no constant tensor to copy)
    units = ((1.0, h / w, 2 / w), (w / h, 1.0, 2 / h))
    theta = torch.stack(
        [torch.stack([matrix[:, i, j] * units[i][j] for j in range(3)], 1) for i in range(2)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + FILL


def rotate(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise by sign x 30 level degrees (torchvision's and PIL's sense)."""
    a = (sign * 30 * level * math.pi / 180).to(x.device, x.dtype)
    cos, sin = a.cos(), a.sin()
    # an output pixel reads the input at the output position turned back (y points down)
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    return _warp(x, matrix)


def _shear(x: torch.Tensor, amount: torch.Tensor, axis: int) -> torch.Tensor:
    k = amount.to(x.device, x.dtype)
    eye = torch.eye(2, device=x.device, dtype=x.dtype).expand(len(k), 2, 2).clone()
    eye[:, axis, 1 - axis] = k
    return _warp(x, eye)


def shear_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Rows shifted in proportion to their height above the centre (torchvision's
    affine(shear=[atan(k) degrees, 0])), k = sign x 0.3 level."""
    return _shear(x, sign * 0.3 * level, 0)


def shear_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return _shear(x, sign * 0.3 * level, 1)


def _translate(x: torch.Tensor, fraction: torch.Tensor, axis: int) -> torch.Tensor:
    shift = fraction.to(x.device, x.dtype) * x.shape[3 - axis]  # width for x, height for y
    matrix = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(len(shift), 2, 3).clone()
    matrix[:, axis, 2] = -shift
    return _warp(x, matrix)


def translate_x(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Content moved right by sign x 0.45 level of the width (torchvision's affine
    translate)."""
    return _translate(x, sign * 0.45 * level, 0)


def translate_y(x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return _translate(x, sign * 0.45 * level, 1)


FUNCTIONS = {name: globals()[name] for name in OPS}


def apply(x: torch.Tensor, d: RandAugmentDraws, masked: bool, where_drawn) -> torch.Tensor:
    """`x` after each sample's drawn ops, slot by slot. `where_drawn(x, on, masked, op)` is
    the views' row selection (`image_views._where_drawn`): on the CPU an op runs on the
    rows that drew it, in the sync-free form on every row, each keeping its own."""
    for slot in range(d.op.shape[1]):
        level, sign = d.level[:, slot], d.sign[:, slot]
        for k, name in enumerate(OPS):
            on = d.on[:, slot] & (d.op[:, slot] == k)
            if not masked and not bool(on.any()):
                continue
            x = where_drawn(x, on, masked, partial(_on_rows, FUNCTIONS[name], level, sign))
    return x


def _on_rows(fn, level: torch.Tensor, sign: torch.Tensor, v: torch.Tensor, rows) -> torch.Tensor:
    """`fn` on the samples `v` (the rows `rows` of the batch; None: all of it)."""
    if rows is not None:
        level, sign = level.index_select(0, rows), sign.index_select(0, rows)
    return fn(v, level, sign)
