"""Augmentations applied to whole batches on their device, drawn from an explicit generator.

No per-sample Python: each op draws one random tensor for the batch. The generator is
seeded from (seed, epoch, rank), so a run and its resumed twin draw identical views.
"""

from __future__ import annotations

import torch

from rayssl.config import AugmentConfig
from rayssl.data.image_views import ImageViews
from rayssl.data.view_graphs import GraphPool


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each sample along the last axis by an integer in [-max_shift, max_shift],
    repeating the edge value (no wrap-around). x: (B, ..., L)."""
    length = x.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (x.shape[0],), generator=g, device=g.device)
    positions = torch.arange(length, device=x.device)[None, :] - shifts.to(x.device)[:, None]
    index = positions.clamp_(0, length - 1).view(x.shape[0], *([1] * (x.dim() - 2)), length)
    return torch.gather(x, -1, index.expand_as(x))


def random_scale(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """Multiply each sample by a factor drawn uniformly from [1 - amount, 1 + amount]."""
    factors = 1 + amount * (2 * torch.rand(x.shape[0], generator=g, device=g.device) - 1)
    return x * factors.to(x.device).view(-1, *([1] * (x.dim() - 1)))


def jitter(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise of standard deviation `std`."""
    return x + std * torch.randn(x.shape, generator=g, device=g.device).to(x.device)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flip half of the samples along the last axis (horizontal flip for images)."""
    flip = torch.rand(x.shape[0], generator=g, device=g.device).to(x.device) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def random_stretch(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """Resample each sample along the last axis, stretched about its centre by a factor in
    [1 - amount, 1 + amount], with linear interpolation and edge values beyond the ends."""
    length = x.shape[-1]
    factors = 1 + amount * (2 * torch.rand(x.shape[0], generator=g, device=g.device) - 1)
    centre = (length - 1) / 2
    grid = torch.arange(length, device=x.device, dtype=x.dtype)[None, :] - centre
    pos = (grid / factors.to(x.device, x.dtype)[:, None] + centre).clamp_(0, length - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_(max=length - 1)
    frac = pos - lo
    shape = (x.shape[0], *([1] * (x.dim() - 2)), length)
    lo, hi, frac = lo.view(shape).expand_as(x), hi.view(shape).expand_as(x), frac.view(shape)
    return torch.gather(x, -1, lo) * (1 - frac) + torch.gather(x, -1, hi) * frac


def time_mask(x: torch.Tensor, max_len: int, g: torch.Generator) -> torch.Tensor:
    """Zero one random window of length in [0, max_len] per sample along the last axis."""
    length = x.shape[-1]
    widths = torch.randint(0, max_len + 1, (x.shape[0],), generator=g, device=g.device)
    starts = (torch.rand(x.shape[0], generator=g, device=g.device) * (length - widths + 1)).long()
    pos = torch.arange(length, device=x.device)[None, :]
    starts, widths = starts.to(x.device)[:, None], widths.to(x.device)[:, None]
    keep = ~((pos >= starts) & (pos < starts + widths))
    return x * keep.view(x.shape[0], *([1] * (x.dim() - 2)), length)


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Images (B, C, H, W): a random crop of the edge-padded image, as two axis shifts."""
    x = random_shift(x, pad, g)
    return random_shift(x.transpose(-1, -2), pad, g).transpose(-1, -2)


class Augment:
    """The configured pipeline: image views (`image` / `preset`), then crop, stretch, shift,
    scale, flip, mask and jitter."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self._image_views: dict[int | str, ImageViews] = {}
        self._graph_pool = GraphPool()  # their CUDA graphs share one memory pool

    def _views_of(self, view: int) -> ImageViews:
        """The image pipeline of one view index (kept: it holds its CUDA graphs)."""
        if view not in self._image_views:
            self._image_views[view] = ImageViews(self.cfg.image, view, graph_pool=self._graph_pool)
        return self._image_views[view]

    def _local_views(self, side: int) -> ImageViews:
        """The local crops' pipeline for global views of `side` pixels."""
        key = f"local {side}"
        if key not in self._image_views:
            image, local = self.cfg.image, self.cfg.image.local_crops
            crops = image.model_copy(
                update={
                    "size": local.size or max(2, round(side * 3 / 7)),
                    "crop_scale": tuple(local.scale),
                    "blur_p": local.blur_p,
                    "solarize_p": local.solarize_p,
                }
            )
            self._image_views[key] = ImageViews(crops, graph_pool=self._graph_pool)
        return self._image_views[key]

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(
            c.image or c.shift or c.scale or c.jitter or c.flip or c.mask or c.crop or c.stretch
        )

    def views(
        self, x: torch.Tensor, g: torch.Generator, num_views: int, multi_crop: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """`num_views` views of the batch, then, for a method that takes them (`multi_crop`),
        `augment.image.local_crops.number` smaller local crops, all from the generator `g`
        in that order (so a run without local crops draws exactly the same global views)."""
        views = [self(x, g, view) for view in range(num_views)]
        image = self.cfg.image
        local = image.local_crops if image is not None else None
        if multi_crop and local is not None and local.number:
            side = image.size or min(x.shape[-2:])
            crops = self._local_views(side)
            views += [crops(x, g) for _ in range(local.number)]
        return tuple(views)

    def __call__(self, x: torch.Tensor, g: torch.Generator, view: int = 0) -> torch.Tensor:
        """One augmented batch; `view` selects per-view probabilities (BYOL's asymmetry)."""
        c = self.cfg
        if c.image is not None:
            x = self._views_of(view)(x, g)
        if c.crop:
            x = random_crop(x, c.crop, g)
        if c.stretch:
            x = random_stretch(x, c.stretch, g)
        if c.shift:
            x = random_shift(x, c.shift, g)
        if c.scale:
            x = random_scale(x, c.scale, g)
        if c.flip:
            x = random_flip(x, g)
        if c.mask:
            x = time_mask(x, c.mask, g)
        if c.jitter:
            x = jitter(x, c.jitter, g)
        return x
