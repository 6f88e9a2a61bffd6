"""Vision Transformers: timm's `VisionTransformer`, and the token-level passes the ViT
methods need (MAE's encoder on the visible patches only, iBOT's masked patch tokens).

`vit` is the built-in backbone (`backbone: {name: vit, size: tiny, patch_size: 4}`); any
timm ViT reached by name works with the same passes
(`backbone: {name: "timm:create_model", model_name: vit_small_patch16_224, num_classes: 0,
dynamic_img_size: true}`). The backbone's forward is timm's: the CLS token after the final
norm, which the probes, `rayssl embed` and the CNN-era methods read.

timm builds the network; `encode` is written here because timm's forward has no hook for
dropping or replacing patch tokens between the patch embedding and the blocks (MAE's and
iBOT's reference code each re-implement this pass over timm's modules, as it does here, from
the model's public attributes only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rayssl.errors import ConfigError

# width, depth, heads of the ViT sizes of DeiT / DINO / MAE
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


def _timm():
    try:
        import timm.layers
        import timm.models.vision_transformer
    except ImportError as exc:  # torchvision built for another torch fails here too
        raise ConfigError(
            f"backbone vit needs timm with a torchvision built for this torch ({exc}); "
            "pip install 'rayssl[vit]'"
        ) from None
    return timm


def vit(
    input_shape: Sequence[int],
    size: str = "tiny",
    patch_size: int = 16,
    image_size: int | None = None,
    depth: int | None = None,
    drop_path_rate: float = 0.0,
    global_pool: str = "token",
):
    """A ViT of `size` (tiny 192 wide, 3 heads; small 384, 6; base 768, 12; 12 blocks, or
    `depth`) on `patch_size` patches. `image_size`: the side its position embedding is laid
    out for (default: the input's); other sizes (multi-crop's local crops, another
    resolution at fine-tuning) are interpolated from it. `drop_path_rate`: stochastic depth
    (fine-tuning). Features: the CLS token's width; `global_pool`: "token" (the CLS token,
    as DINO and MAE's linear probe) or "avg" (the mean of the patch tokens, then the norm,
    as MAE's fine-tuning)."""
    if size not in SIZES:
        raise ConfigError(f"backbone.size '{size}' is not one of {', '.join(SIZES)}")
    if global_pool not in ("token", "avg"):
        raise ConfigError(f"backbone.global_pool '{global_pool}' is not one of token, avg")
    if len(input_shape) != 3:
        raise ConfigError(f"backbone vit takes images (C, H, W); samples are {list(input_shape)}")
    channels, height, width = input_shape
    side = image_size or height
    if side % patch_size or (image_size is None and width % patch_size):
        raise ConfigError(
            f"backbone.patch_size {patch_size} does not divide the image size {side}; "
            "pick a patch size that does"
        )
    dim, blocks, heads = SIZES[size]
    vision_transformer = _timm().models.vision_transformer.VisionTransformer
    return vision_transformer(
        img_size=side,
        patch_size=patch_size,
        in_chans=channels,
        num_classes=0,
        global_pool=global_pool,
        embed_dim=dim,
        depth=depth or blocks,
        num_heads=heads,
        drop_path_rate=drop_path_rate,
        dynamic_img_size=True,
    )


def is_vit(module: nn.Module) -> bool:
    """Whether `module` is laid out as timm's ViTs are (what `encode` needs)."""
    return all(hasattr(module, a) for a in ("patch_embed", "blocks", "norm", "cls_token"))


def require_token_vit(module: nn.Module, method: str, backbone_name: str) -> None:
    """A method that reads the tokens (`encode`: MAE, iBOT) needs a ViT, with the final norm
    on its tokens: timm's `global_pool="avg"` moves that norm after the pooling."""
    if not is_vit(module):
        raise ConfigError(
            f"{method} needs a ViT backbone: set backbone.name: vit (or a timm ViT), not "
            f"'{backbone_name}'"
        )
    if getattr(module, "global_pool", "token") == "avg":
        raise ConfigError(
            f"{method} reads the ViT's tokens after its final norm, which backbone.global_pool "
            "avg moves after the pooling: set backbone.global_pool: token"
        )


def patch_size(module: nn.Module) -> int:
    return int(module.patch_embed.patch_size[0])


def patchify(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, size * size * C): the pixels of each patch, in the patch
    embedding's raster order."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // size, size, w // size, size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // size) * (w // size), size * size * c)


def embed(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token=None
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The patch tokens (B, N, D) and the prefix tokens (CLS, registers; (B, P, D)), each with
    its position embedding (interpolated to this grid), and the grid (h, w). `mask` (B, N),
    True where a patch is hidden: those tokens are `mask_token` (D,) before the position is
    added (iBOT, BEiT)."""
    timm = _timm()
    tokens = model.patch_embed(x)
    if tokens.dim() == 4:  # dynamic image size: NHWC
        grid = (tokens.shape[1], tokens.shape[2])
        tokens = tokens.flatten(1, 2)
    else:
        grid = tuple(model.patch_embed.grid_size)
    if mask is not None:
        tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
    prefix = [model.cls_token.expand(len(x), -1, -1)]
    if getattr(model, "reg_token", None) is not None:
        prefix.append(model.reg_token.expand(len(x), -1, -1))
    prefix = torch.cat(prefix, dim=1)
    if model.pos_embed is not None:
        in_pos = 0 if model.no_embed_class else model.num_prefix_tokens
        pos = timm.layers.resample_abs_pos_embed(
            model.pos_embed,
            new_size=list(grid),
            old_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=in_pos,
        )
        tokens = tokens + pos[:, in_pos:]
        if in_pos:
            prefix = prefix + pos[:, :in_pos]
    return tokens, prefix, grid


def encode(
    model: nn.Module,
    x: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """All tokens after the blocks and the final norm, (B, P + N', D), prefix first: the
    same as timm's `forward_features` when neither `keep` nor `mask` is given. `keep` (B, K):
    indices of the patches that enter the blocks, the others dropped (MAE's encoder sees
    the visible patches only). `mask` / `mask_token`: see `embed`."""
    tokens, prefix, _ = embed(model, x, mask, mask_token)
    if keep is not None:
        tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    h = model.pos_drop(torch.cat([prefix, tokens], dim=1))
    h = model.norm_pre(h)
    return model.norm(model.blocks(h))


def sincos_position(dim: int, grid: tuple[int, int], device=None) -> torch.Tensor:
    """The fixed 2D sine-cosine position embedding of MAE's code, (h * w, dim)."""
    return _timm().layers.build_sincos2d_pos_embed(list(grid), dim, device=device)


def layer_id(name: str, depth: int) -> int:
    """Which layer a ViT parameter belongs to for layer-wise learning-rate decay (BEiT's and
    MAE's rule): 0 for the embeddings and prefix tokens, i + 1 for block i, depth + 1 for
    the rest (final norm; anything past the backbone)."""
    if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1
