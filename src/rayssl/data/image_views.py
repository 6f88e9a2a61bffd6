"""The SimCLR / BYOL image views, on whole `(B, C, H, W)` batches on their device.

Every random parameter of a batch is drawn from the caller's `torch.Generator` (seeded from
(seed, epoch, rank) by the loop), one value per sample, so a resumed run draws the same
views and a p = 0.2 grayscale greys a fifth of the samples, not a fifth of the batches.
All parameters are drawn on every call, even where an op's probability gates it off, so
the generator's stream has the same shape whatever the configuration's probabilities.

Why hand-written (checked in the libraries' sources): torchvision.transforms.v2 draws
one set of parameters per call and takes no generator; kornia.augmentation draws per-sample
parameters from the global RNG only (its `generator` argument is ignored) and picks one
colour-jitter order per batch. kornia's functional hue kernel takes per-sample factors
but costs 4-5x the closed form below (`_hue`). Brightness, contrast and saturation follow
torchvision's definitions (blends with black, the mean grey and the grey image), which
kornia's functional `adjust_contrast` / `adjust_saturation` do not (they scale).

Inputs are floats in [0, 1]; outputs stay in [0, 1] (normalisation is separate: it applies
to evaluation inputs too).

Two forms of the same views, chosen by the batch's device: on the CPU each op runs only on
the samples that draw it (gathered rows: arithmetic is what costs there); on a GPU every op
runs on the whole batch and each sample keeps its own op's result (`torch.where`): no
data-dependent shape, so no host-device sync (the gathered form waits on the GPU about 20
times per view, which made a view of 256 small images take 8-11 ms on an H200; see
BENCHMARKS.md). Both give each sample the same values (tested).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rayssl.data import rand_augment
from rayssl.data.colour import (
    brightness,
    channel_constant,
    contrast,
    grayscale,
    per_sample,
    saturation,
)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=g.device)


def _coin(n: int, p: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) < p


def sample_crop_boxes(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    image_aspect: float = 1.0,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop boxes as fractions of the image: width, height, centre x, centre y.

    As torchvision's RandomResizedCrop: area fraction ~ U(scale), log aspect ratio (in
    pixels) ~ U(log ratio), up to `attempts` tries for a box inside the image, else the
    largest centred box of an allowed ratio. The tries are drawn for every sample at once
    (a fixed number of draws, no data-dependent loop); the first that fits is kept.
    `image_aspect` is the image's width / height.
    """
    area = _uniform(n * attempts, scale[0], scale[1], g).view(n, attempts)
    log_ratio = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), g)
    aspect = log_ratio.exp().view(n, attempts)
    width = (area * aspect / image_aspect).sqrt()
    height = (area * image_aspect / aspect).sqrt()
    fits = (width <= 1) & (height <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # index of the first box that fits
    width, height = width.gather(1, first).squeeze(1), height.gather(1, first).squeeze(1)
    # torchvision's fallback: the whole image, narrowed to the nearest allowed ratio
    fallback_w = min(1.0, ratio[1] / image_aspect)
    fallback_h = min(1.0, image_aspect / ratio[0])
    none_fit = ~fits.any(dim=1)
    width = torch.where(none_fit, torch.full_like(width, fallback_w), width)
    height = torch.where(none_fit, torch.full_like(height, fallback_h), height)
    cx = width / 2 + (1 - width) * torch.rand(n, generator=g, device=g.device)
    cy = height / 2 + (1 - height) * torch.rand(n, generator=g, device=g.device)
    return width, height, cx, cy


def resized_crop_and_flip(
    x: torch.Tensor,
    boxes: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    flip: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Crop each sample's box, resize it to `size` (bilinear) and mirror where `flip`:
    one `grid_sample` for the whole batch. The boxes are axis-aligned, so the sampling grid
    is an outer sum of one row of x and one column of y coordinates per sample: built by
    broadcasting, it equals `F.affine_grid`'s (align_corners=False) without its batched
    matrix product over every output pixel (a third of the crop's time at 224 px on a CPU)."""
    width, height, cx, cy = (t.to(x.device, x.dtype).view(-1, 1, 1) for t in boxes)
    sign = 1.0 - 2.0 * flip.to(x.device, x.dtype).view(-1, 1, 1)
    h, w = size
    # affine_grid's pixel centres in [-1, 1] with align_corners=False: (2i + 1) / n - 1
    base_x = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1
    base_y = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
    grid_x = width * sign * base_x.view(1, 1, w) + (2 * cx - 1)  # (B, 1, W)
    grid_y = height * base_y.view(1, h, 1) + (2 * cy - 1)  # (B, H, 1)
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# HSV -> RGB per channel: channel = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6 hue) mod 6
_HSV_OFFSETS = (5.0, 3.0, 1.0)  # n for R, G, B


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` turns (torchvision's hue_factor, in [-0.5, 0.5]): HSV's hue
    moved, its saturation and value kept, as torchvision's and kornia's adjust_hue.

    Hand-written: both libraries convert to an HSV image and back with chains of
    `torch.where` over the three channels (kornia 0.9's took 4-5x this function's time on a
    batch of 64 224-px images on one CPU thread, most of the views' time). Here the hue is
    the only plane built: the value V (max) and chroma C (max - min) carry through, and the
    rotated colour is the closed-form HSV -> RGB above (tested against torchvision)."""
    if x.shape[1] != 3:
        return x
    r, g, b = x.unbind(1)
    value = x.amax(1, keepdim=True)
    chroma = value - x.amin(1, keepdim=True)
    safe = torch.where(chroma == 0, 1.0, chroma).squeeze(1)  # grey: any hue gives V
    sextant = torch.where(  # hue x 6, in the sextant of the first largest channel
        (r >= g) & (r >= b),
        (g - b) / safe,
        torch.where(g >= b, 2 + (b - r) / safe, 4 + (r - g) / safe),
    )
    hue6 = sextant.unsqueeze(1) + 6 * per_sample(shift, x)
    k = torch.remainder(hue6 + channel_constant(_HSV_OFFSETS, x), 6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.addcmul(value, chroma, ramp, value=-1).clamp_(0, 1)


def color_jitter(
    x: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    masked: bool = False,
) -> torch.Tensor:
    """torchvision's ColorJitter with per-sample factors and a per-sample op order.

    factors: (B, 4) brightness, contrast, saturation (multipliers) and hue (turns);
    order: (B, 4) a permutation of the four ops per sample. Round k applies, to each sample,
    its k-th op: each op runs once per round on the samples whose k-th op it is, so every
    sample goes through each op exactly once (hue, an RGB -> HSV -> RGB round trip, is most
    of the cost; computing all four ops for every sample each round cost 4x on the CPU).
    `masked`: every op on every sample each round, each sample keeping its own (no sync).
    """
    ops = (brightness, contrast, saturation, _hue)
    order = order.to(x.device)
    factors = factors.to(x.device, x.dtype)
    if masked:
        for k in range(4):
            picks = order[:, k].view(-1, 1, 1, 1)
            x = sum(
                torch.where(picks == i, op(x, factors[:, i].view(-1, 1, 1, 1)), 0.0)
                for i, op in enumerate(ops)
            )
        return x
    for k in range(4):
        out = torch.empty_like(x)
        for i, op in enumerate(ops):
            rows = (order[:, k] == i).nonzero().squeeze(1)
            if rows.numel():  # index_select / index_copy_: row copies, unlike x[rows]'s
                picked = x.index_select(0, rows)  # general indexing (4x slower on a CPU)
                done = op(picked, factors[rows, i].view(-1, 1, 1, 1))
                out.index_copy_(0, rows, done.to(out.dtype))  # (bf16 under autocast)
        x = out
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma, as one grouped convolution per axis;
    reflect padding (torchvision's)."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).view(-1, 1)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * s**2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.unsqueeze(1).expand(b, c, kernel_size).reshape(b * c, kernel_size)
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (half, half, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    flat = F.pad(flat, (0, 0, half, half), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return flat.view(b, c, h, w)


def blur_kernel_size(height: int, width: int) -> int:
    """Odd kernel of about a tenth of the image side (SimCLR's 23 px at 224), at least 3."""
    k = max(3, int(0.1 * min(height, width)))
    return k if k % 2 else k + 1


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def _rows(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return values if rows is None else values.index_select(0, rows)


def _where_drawn(x: torch.Tensor, on: torch.Tensor, masked: bool, op) -> torch.Tensor:
    """`x` with `op(samples, rows)` in place of the samples whose coin `on` is set. Sync-free
    form: `op` on the whole batch (rows None), each sample keeping its own. On the CPU: `op`
    on those rows only (`rows` their indices on the coins' device, for the per-sample
    parameters), copied back into `x` in place (a view's own tensor: the crop made it)."""
    if masked:
        return torch.where(per_sample(on, x) > 0, op(x, None), x)
    rows = on.to(x.device).nonzero().squeeze(1)
    done = op(x.index_select(0, rows), rows.to(on.device))
    # under the step's autocast a convolution (the blur) returns bfloat16 rows; the batch
    # stays in its own dtype, as torch.where's promotion keeps it in the sync-free form
    return x.index_copy_(0, rows, done.to(x.dtype))


class _NoRandAugment(NamedTuple):
    """No op slots: `rand_augment.draw` then takes nothing from the generator."""

    num_ops: int = 0
    p: float = 0.0
    magnitude: float = 0.0
    magnitude_std: float = 0.0


_NO_RAND_AUGMENT = _NoRandAugment()


class ViewDraws(NamedTuple):
    """One view's random parameters for a batch, one value (or row) per sample: all that
    `ImageViews.draw` takes from the generator and `ImageViews.apply` needs."""

    width: torch.Tensor
    height: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    flip: torch.Tensor
    jitter_on: torch.Tensor
    factors: torch.Tensor  # (B, 4): brightness, contrast, saturation, hue
    order: torch.Tensor  # (B, 4): each sample's jitter op order
    grey_on: torch.Tensor
    blur_on: torch.Tensor
    sigma: torch.Tensor
    solarize_on: torch.Tensor
    rand: rand_augment.RandAugmentDraws  # (B, 0) each without augment.image.rand_augment


class ImageViews:
    """The configured view pipeline (`augment.image` / `augment.preset`) for one view index:
    random resized crop + flip, RandAugment (`rand_augment`), colour jitter (p), grayscale
    (p), blur (p), solarize (p).
    Per-view probabilities (BYOL's asymmetric views) come from `[view0, view1]` pairs.
    `masked`: the sync-free form (module docstring); None: on a GPU only. On a GPU the
    sync-free form is replayed as a CUDA graph (`augment.image.cuda_graph`, see
    `rayssl.data.view_graphs`); the parameters are still drawn eagerly, so the generator's
    stream, and the views, are the same either way."""

    def __init__(self, cfg, view: int = 0, masked: bool | None = None, graph_pool=None):
        self.cfg, self.view, self.masked = cfg, view, masked
        self.graph_pool = graph_pool  # a view_graphs.GraphPool shared with other views
        self._graphs = None  # a ViewGraphs, made on the first CUDA batch

    def _p(self, value) -> float:
        return value[min(self.view, len(value) - 1)] if isinstance(value, list) else value

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        draws = self.draw(x.shape[0], x.shape[-1] / x.shape[-2], g)
        masked = x.is_cuda if self.masked is None else self.masked
        if masked and x.is_cuda and self.cfg.cuda_graph:
            if self._graphs is None:
                from rayssl.data.view_graphs import ViewGraphs

                fn = lambda x, d: self.apply(x, d, masked=True)  # noqa: E731
                self._graphs = ViewGraphs(fn, self.graph_pool)
            return self._graphs(x, draws)
        return self.apply(x, draws, masked)

    def draw(self, n: int, aspect: float, g: torch.Generator) -> ViewDraws:
        """Every random parameter of a view of `n` images of width / height `aspect`, in a
        fixed order and number whatever the probabilities (see the module docstring)."""
        c = self.cfg
        boxes = sample_crop_boxes(n, tuple(c.crop_scale), tuple(c.crop_ratio), g, aspect)
        flip = _coin(n, c.flip_p, g)
        jitter_on = _coin(n, self._p(c.jitter_p), g)
        factors = torch.stack(
            [
                _uniform(n, max(0.0, 1 - c.brightness), 1 + c.brightness, g),
                _uniform(n, max(0.0, 1 - c.contrast), 1 + c.contrast, g),
                _uniform(n, max(0.0, 1 - c.saturation), 1 + c.saturation, g),
                _uniform(n, -c.hue, c.hue, g),
            ],
            dim=1,
        )
        order = torch.rand(n, 4, generator=g, device=g.device).argsort(dim=1)
        grey_on = _coin(n, self._p(c.grayscale_p), g)
        blur_on = _coin(n, self._p(c.blur_p), g)
        sigma = _uniform(n, c.blur_sigma[0], c.blur_sigma[1], g)
        solarize_on = _coin(n, self._p(c.solarize_p), g)
        # last, and only where configured: the draws of every other view stay as they were
        rand = rand_augment.draw(c.rand_augment or _NO_RAND_AUGMENT, n, g)
        return ViewDraws(
            *boxes, flip, jitter_on, factors, order, grey_on, blur_on, sigma, solarize_on, rand
        )

    def apply(self, x: torch.Tensor, d: ViewDraws, masked: bool) -> torch.Tensor:
        """The view of `x` under the parameters `d`: no randomness; in the sync-free form
        (`masked`) nothing waits on the device and no shape depends on the data."""
        c = self.cfg
        size = (c.size, c.size) if c.size else tuple(x.shape[-2:])
        x = resized_crop_and_flip(x, (d.width, d.height, d.cx, d.cy), d.flip, size)
        if c.rand_augment is not None:
            x = rand_augment.apply(x, d.rand, masked, _where_drawn)

        def applies(coin: torch.Tensor, p) -> bool:
            """Whether an op can touch a sample: from its coins on the CPU, from its
            probability alone in the sync-free form (reading the coins would wait)."""
            return self._p(p) > 0 if masked else bool(coin.any())

        if applies(d.jitter_on, c.jitter_p):
            x = _where_drawn(
                x,
                d.jitter_on,
                masked,
                lambda v, r: color_jitter(v, _rows(d.factors, r), _rows(d.order, r), masked),
            )
        if x.shape[1] == 3 and applies(d.grey_on, c.grayscale_p):
            x = _where_drawn(x, d.grey_on, masked, lambda v, r: grayscale(v).expand_as(v))
        if applies(d.blur_on, c.blur_p):
            kernel = c.blur_kernel or blur_kernel_size(*x.shape[-2:])
            kernel = min(kernel, 2 * min(x.shape[-2:]) - 1)  # reflect padding < side
            blur = lambda v, r: gaussian_blur(v, _rows(d.sigma, r), kernel)  # noqa: E731
            x = _where_drawn(x, d.blur_on, masked, blur)
        if applies(d.solarize_on, c.solarize_p):
            threshold = c.solarize_threshold
            x = _where_drawn(x, d.solarize_on, masked, lambda v, r: solarize(v, threshold))
        return x
