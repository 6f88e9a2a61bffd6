"""MAE (He et al. 2022): masked autoencoders. A random 75 % of each image's patches is
hidden; the ViT encoder sees the visible patches only, a light decoder fills in mask tokens
and predicts every patch's pixels, and the loss is the mean squared error on the hidden
patches, against pixels normalised per patch."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from rayssl.config.base import MethodConfig
from rayssl.errors import ConfigError
from rayssl.methods.base import Builtin, Method, Parts
from rayssl.nets import vision_transformer as vits
from rayssl.optim.groups import weights_decay_only


class MAEConfig(MethodConfig):
    """The paper's defaults (ViT-B/16 on ImageNet): 75 % of the patches hidden, an 8-block
    512-wide decoder with 16 heads, the loss on per-patch normalised pixels."""

    mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of each image's patches hidden")
    decoder_dim: int = Field(512, ge=8, description="decoder width")
    decoder_depth: int = Field(8, ge=1, description="decoder blocks")
    decoder_heads: int = Field(16, ge=1, description="decoder attention heads")
    norm_pix_loss: bool = Field(
        True, description="targets: each patch's pixels standardised by its own mean and std"
    )
    fixed_position: bool = Field(
        True,
        description="the encoder's position embedding fixed to 2D sine-cosine, as the "
        "paper's code (false: the backbone's own, learned)",
    )


DEFAULTS = MAEConfig()  # the class's defaults are its section's


def hidden_patches(batch: int, patches: int, ratio: float, device) -> tuple[torch.Tensor, ...]:
    """A random subset of each sample's patches to hide, by sorting uniform noise (the
    paper's code): `keep` (B, K) the visible patches' indices, `mask` (B, N) 1 where hidden.
    Draws from the global generator (per rank, in every checkpoint)."""
    visible = max(1, int(patches * (1 - ratio)))
    order = torch.rand(batch, patches, device=device).argsort(dim=1)
    keep = order[:, :visible]
    mask = torch.ones(batch, patches, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


class Decoder(nn.Module):
    """Visible tokens in, every patch's pixels out: a linear map to the decoder's width, a
    mask token at each hidden patch, fixed sine-cosine positions, transformer blocks, a norm
    and a linear map to a patch's pixels."""

    def __init__(self, width: int, patch_pixels: int, c: MAEConfig):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(width, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.Sequential(
            *(Block(c.decoder_dim, c.decoder_heads, qkv_bias=True) for _ in range(c.decoder_depth))
        )
        self.norm = nn.LayerNorm(c.decoder_dim)
        self.pred = nn.Linear(c.decoder_dim, patch_pixels)

    def forward(self, latent, keep, patches: int, prefix: int, grid) -> torch.Tensor:
        """`latent` (B, prefix + K, D): the encoder's output; returns (B, N, patch_pixels)."""
        h = self.embed(latent)
        b, d = h.shape[0], h.shape[-1]
        tokens = self.mask_token.to(h.dtype).expand(b, patches, d).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, d), h[:, prefix:])
        tokens = tokens + vits.sincos_position(d, grid, h.device).to(h.dtype)
        h = self.blocks(torch.cat([h[:, :prefix], tokens], dim=1))
        return self.pred(self.norm(h))[:, prefix:]


class MAE(Method):
    """ViT encoder on the visible patches -> decoder -> pixels of every patch; loss = mean
    squared error over the hidden patches. Batches are `(x, y)` (one augmented view); y is
    ignored. The encoder is `backbone`, a timm ViT (`nets/vision_transformer.py`); probes
    and `rayssl embed` read its CLS token on the whole image."""

    def __init__(
        self,
        backbone: nn.Module,
        decoder: nn.Module | None = None,
        mask_ratio: float = DEFAULTS.mask_ratio,
        norm_pix_loss: bool = DEFAULTS.norm_pix_loss,
        fixed_position: bool = DEFAULTS.fixed_position,
        **setup: Any,
    ):
        super().__init__()
        if not vits.is_vit(backbone):
            raise ConfigError(
                f"mae needs a ViT backbone (backbone.name: vit, or a timm ViT); "
                f"{type(backbone).__name__} is not one"
            )
        self.backbone = backbone
        self.patch = vits.patch_size(backbone)
        pixels = self.patch**2 * backbone.patch_embed.proj.in_channels
        self.decoder = decoder or Decoder(backbone.embed_dim, pixels, DEFAULTS)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        if fixed_position and backbone.pos_embed is not None:
            fix_position(backbone)
        self.take_setup(**setup)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        target = vits.patchify(x, self.patch)
        b, patches = target.shape[:2]
        keep, mask = hidden_patches(b, patches, self.mask_ratio, x.device)
        latent = vits.encode(self.backbone, x, keep=keep)
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        prefix = self.backbone.num_prefix_tokens
        pred = self.decoder(latent, keep, patches, prefix, grid)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = (pred.float() - target.float()).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def training_step(self, batch):
        return {"loss": self._loss(batch[0])}

    def validation_step(self, batch):
        """The same loss on other random masks (drawn from the global generator, as
        training's: the rank's stream, restored with every checkpoint)."""
        return {"loss": self._loss(batch[0])}

    def param_groups(self) -> list[dict[str, Any]]:
        """As MAE's code: weights decay, biases and norm parameters do not."""
        return weights_decay_only([(n, p) for n, p in self.named_parameters() if p.requires_grad])


def fix_position(backbone: nn.Module) -> None:
    """The encoder's position embedding as MAE's code has it: 2D sine-cosine of the
    backbone's grid, the prefix tokens' rows zero, not trained."""
    grid = tuple(backbone.patch_embed.grid_size)
    fixed = vits.sincos_position(backbone.embed_dim, grid)
    rows = backbone.pos_embed.shape[1] - fixed.shape[0]
    with torch.no_grad():
        backbone.pos_embed.zero_()
        backbone.pos_embed[0, rows:] = fixed
    backbone.pos_embed.requires_grad_(False)


def decoder(parts: Parts) -> nn.Module:
    backbone, c = parts.backbone, parts.section
    pixels = vits.patch_size(backbone) ** 2 * backbone.patch_embed.proj.in_channels
    return Decoder(backbone.embed_dim, pixels, c)


def build(parts: Parts) -> Method:
    """The method as its section configures it."""
    vits.require_token_vit(parts.backbone, "mae", parts.cfg.backbone.name)
    return MAE(parts.backbone, decoder(parts), **parts.options_for(MAE), **parts.setup)


BUILTIN = Builtin("mae", MAE, MAEConfig, build, "MAE, masked autoencoders (He et al. 2022)")
