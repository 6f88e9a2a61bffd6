"""Random erasing (Zhong et al. 2020) as timm's `RandomErasing(mode="pixel")`, the last of
MAE's, DeiT's and iBOT's fine-tuning views: with probability `p` a sample has one box of
`scale` of its area (aspect ratio log-uniform in `ratio`, up to 10 tries to fit, none
erased if none fits) replaced by standard normal noise, per pixel and channel. It runs on
normalised batches (timm's place, after Normalize), so the noise is N(0, 1) in the
network's input units.

Why hand-written: timm's class draws from Python's global RNG and loops over samples in
Python; here every box and its noise come from the views' generator (a resumed run erases
the same), and on a GPU the erasing is one masked blend with no host sync.
"""

from __future__ import annotations

import math

import torch

ATTEMPTS = 10  # timm's tries per box


def erase_boxes(
    n: int, h: int, w: int, cfg, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(erased, top, left, height, width) per sample, in pixels, as timm draws them: a
    sample is erased with probability p and only where one of its tries fits inside the
    image (height < h and width < w, as timm's test)."""
    dev = g.device
    on = torch.rand(n, generator=g, device=dev) < cfg.p
    low, high = cfg.scale
    area = (low + (high - low) * torch.rand(n, ATTEMPTS, generator=g, device=dev)) * (h * w)
    log_low, log_high = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    aspect = log_low + (log_high - log_low) * torch.rand(n, ATTEMPTS, generator=g, device=dev)
    heights = (area * aspect.exp()).sqrt().round()
    widths = (area / aspect.exp()).sqrt().round()
    fits = (heights < h) & (widths < w)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first try that fits
    height, width = heights.gather(1, first).squeeze(1), widths.gather(1, first).squeeze(1)
    # timm's randint(0, side - box), inclusive: floor(U * (side - box + 1))
    top = (torch.rand(n, generator=g, device=dev) * (h - height + 1)).floor()
    left = (torch.rand(n, generator=g, device=dev) * (w - width + 1)).floor()
    return on & fits.any(dim=1), top, left, height, width


def random_erase(
    x: torch.Tensor, cfg, g: torch.Generator, masked: bool | None = None
) -> torch.Tensor:
    """`x` (B, C, H, W), normalised, with each drawn box replaced by N(0, 1) noise.

    Two forms, as the views (`masked`; None: on a GPU only): on the CPU the noise is drawn
    for each erased box alone, in sample order, and written into a copy (drawing it for the
    whole batch cost more than the rest of MAE's views together at 224 px); the sync-free
    form draws it for every pixel and keeps it inside the boxes (no data-dependent shape,
    nothing read back). The boxes are the same in both; the noise is the same in law."""
    b, c, h, w = x.shape
    on, top, left, height, width = erase_boxes(b, h, w, cfg, g)
    if not (x.is_cuda if masked is None else masked):
        x = x.clone()
        for i in on.nonzero().squeeze(1).tolist():
            t, lf, bh, bw = (int(v[i]) for v in (top, left, height, width))
            noise = torch.randn((c, bh, bw), generator=g, device=g.device)
            x[i, :, t : t + bh, lf : lf + bw] = noise.to(x.device, x.dtype)
        return x
    on, top, left, height, width = (
        t.to(x.device).view(-1, 1, 1) for t in (on, top, left, height, width)
    )
    noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device, x.dtype)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return torch.where((inside & on).unsqueeze(1), noise, x)
