"""Vision Transformers (timm) and MAE: the token passes against timm's own forward, MAE's
masking, encoder and loss, layer-wise lr decay, and MAE in the loop (exact resume) and on
two Ray Train workers (exact restart)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_states_equal, timm_or_skip
from conftest import one_process_loop as _loop

timm_or_skip()

from rayssl.config import validate_train_config  # noqa: E402
from rayssl.errors import ConfigError  # noqa: E402
from rayssl.methods import mae  # noqa: E402
from rayssl.methods.registry import build_method  # noqa: E402
from rayssl.nets import vision_transformer as vits  # noqa: E402
from rayssl.runs.state import load_state, save_state  # noqa: E402

IMAGES = {"name": "synthetic", "shape": [3, 16, 16], "num_samples": 64, "batch_size": 16}
VIT = {"name": "vit", "size": "tiny", "patch_size": 4, "depth": 2}
SMALL_DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def _mae(**section):
    cfg = validate_train_config(
        {"method": "mae", "data": IMAGES, "backbone": VIT, "mae": {**SMALL_DECODER, **section}}
    )
    return build_method(cfg, (3, 16, 16), 4)


def _resumes_exactly(run, tmp_path, *, rng_noise: int = 0) -> list[dict]:
    """An uninterrupted 3-epoch run of `run`, and one saved after epoch 1 and restored into a
    fresh loop (after drawing `rng_noise` from this process's generator: the masks must
    come from the restored per-rank one) end with equal weights and losses; returns the
    uninterrupted run's history."""
    straight = _loop(run)
    history = list(straight.epochs())
    first = _loop(run)
    next(first.epochs())
    save_state(first.state_dict(), tmp_path)
    torch.manual_seed(rng_noise)
    second = _loop(run)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())
    assert second.state.history[-1]["train_loss"] == history[-1]["train_loss"]
    return history


def test_encode_is_timms_forward_and_drops_or_masks_patch_tokens():
    torch.manual_seed(0)
    model = vits.vit((3, 16, 16), size="tiny", patch_size=4, depth=2).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        timm_tokens = model.forward_features(x)
        assert torch.allclose(vits.encode(model, x), timm_tokens, atol=1e-6)
        assert torch.allclose(model(x), timm_tokens[:, 0], atol=1e-6)  # the CLS token
        # every patch kept, in order: timm's forward again; a subset: CLS + those patches
        assert torch.allclose(
            vits.encode(model, x, keep=torch.arange(16).expand(3, 16)), timm_tokens, atol=1e-6
        )
        assert vits.encode(model, x, keep=torch.tensor([[0, 5]] * 3)).shape == (3, 3, 192)
        # a 8-px crop: the position embedding is interpolated to its 2 x 2 grid
        assert vits.encode(model, x[..., :8, :8]).shape == (3, 5, 192)
        # masked patches: the mask token in place of the patch's pixels, position kept
        mask = torch.zeros(3, 16, dtype=torch.bool)
        mask[:, 3] = True
        token = torch.randn(192)
        other = x.clone()
        other[:, :, 0:4, 12:16] = 7.0  # patch 3, in raster order
        a = vits.encode(model, x, mask=mask, mask_token=token)
        b = vits.encode(model, other, mask=mask, mask_token=token)
        assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, timm_tokens, atol=1e-3)


def test_global_pool_avg_gives_the_mean_patch_token_and_a_bad_pool_is_named():
    """backbone.global_pool avg: the features are the mean of the 16 patch tokens (the CLS
    token left out), then the final LayerNorm (timm's fc_norm, as MAE's fine-tuning), not the
    CLS token; another value, or MAE / iBOT (they read the normed tokens), is one line."""
    torch.manual_seed(0)
    model = vits.vit((3, 16, 16), size="tiny", patch_size=4, depth=2, global_pool="avg").eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert torch.allclose(model(x), model.fc_norm(tokens[:, 1:].mean(dim=1)), atol=1e-6)
        assert not torch.allclose(model(x), tokens[:, 0], atol=1e-3)
    with pytest.raises(ConfigError, match="backbone.global_pool 'max'"):
        vits.vit((3, 16, 16), size="tiny", patch_size=4, global_pool="max")
    cfg = validate_train_config(
        {"method": "dino", "data": IMAGES, "backbone": {**VIT, "global_pool": "avg"}}
    )
    features = build_method(cfg, (3, 16, 16), 4).backbone(x)
    assert features.shape == (3, 192)
    for method in ("mae", "ibot"):
        cfg = validate_train_config(
            {"method": method, "data": IMAGES, "backbone": {**VIT, "global_pool": "avg"}}
        )
        with pytest.raises(ConfigError, match=f"{method} reads the ViT's tokens"):
            build_method(cfg, (3, 16, 16), 4)


def test_patchify_is_the_patch_embeddings_raster_order():
    """Against torch's unfold (channels first within a patch), reordered to (row, col, C)."""
    x = torch.randn(2, 3, 8, 12)
    unfolded = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, N, C * 4 * 4)
    expected = unfolded.reshape(2, 6, 3, 4, 4).permute(0, 1, 3, 4, 2).reshape(2, 6, 48)
    assert torch.equal(vits.patchify(x, 4), expected)


def test_mae_hides_the_ratio_of_every_image_and_keeps_the_rest_visible():
    torch.manual_seed(0)
    keep, mask = mae.hidden_patches(5, 64, 0.75, "cpu")
    assert keep.shape == (5, 16) and mask.shape == (5, 64)
    assert (mask.sum(1) == 48).all()
    assert (mask.gather(1, keep) == 0).all()  # a kept patch is never hidden
    assert len({tuple(k.sort().values.tolist()) for k in keep}) == 5  # each image its own


def test_mae_encoder_sees_the_visible_patches_only():
    method = _mae()
    seen = []
    method.backbone.blocks[0].register_forward_pre_hook(lambda m, i: seen.append(i[0].shape))
    method.training_step((torch.randn(4, 3, 16, 16), None))
    assert seen == [(4, 1 + 4, 192)]  # CLS + 25 % of 16 patches


class FixedPrediction(torch.nn.Module):
    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, latent, keep, patches, prefix, grid):
        return self.pred


def test_mae_loss_is_the_error_on_hidden_patches_of_per_patch_normalised_pixels(monkeypatch):
    method = _mae()
    x = torch.rand(2, 3, 16, 16) * 4 + 1
    hidden = torch.zeros(2, 16)
    hidden[:, 4:] = 1.0  # patches 0-3 visible
    monkeypatch.setattr(mae, "hidden_patches", lambda *a: (torch.arange(4).expand(2, 4), hidden))
    patches = F.unfold(x, 4, stride=4).transpose(1, 2).reshape(2, 16, 3, 4, 4)
    patches = patches.permute(0, 1, 3, 4, 2).reshape(2, 16, 48)
    mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    target = (patches - mean) / std

    def loss(pred):
        method.decoder = FixedPrediction(pred)
        return float(method.training_step((x, None))["loss"])

    assert loss(target) == pytest.approx(0, abs=1e-9)
    assert loss(target + 3 * (1 - hidden).unsqueeze(-1)) == pytest.approx(0, abs=1e-9)
    assert loss(target + 2 * hidden.unsqueeze(-1)) == pytest.approx(4)
    method.norm_pix_loss = False  # raw pixels as targets
    assert loss(patches) == pytest.approx(0, abs=1e-9)


def test_mae_fixes_the_encoders_positions_and_decays_weights_only():
    method = _mae()
    pos = method.backbone.pos_embed
    assert not pos.requires_grad and torch.equal(pos[0, 0], torch.zeros(192))
    assert torch.allclose(pos[0, 1:], vits.sincos_position(192, (4, 4)))
    decayed, exempt = method.param_groups()
    assert exempt["weight_decay"] == 0.0 and "weight_decay" not in decayed
    names = {id(p): n for n, p in method.named_parameters()}
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in decayed["params"])
    assert {names[id(p)] for p in exempt["params"]} >= {
        "backbone.norm.weight",
        "decoder.embed.bias",
    }
    assert id(pos) not in {id(p) for g in (decayed, exempt) for p in g["params"]}
    assert "backbone.cls_token" in {names[id(p)] for p in decayed["params"]}  # as MAE's code
    learned = _mae(fixed_position=False)
    assert learned.backbone.pos_embed.requires_grad


def test_mae_and_layer_decay_refuse_what_they_cannot_use_in_one_line():
    with pytest.raises(ConfigError, match="mae needs a ViT backbone: set backbone.name: vit"):
        build_method(
            validate_train_config({"method": "mae", "data": IMAGES, "backbone": {"name": "cnn2d"}}),
            (3, 16, 16),
            4,
        )
    with pytest.raises(ConfigError, match="optimizer.layer_decay decays a supervised"):
        validate_train_config(
            {"method": "mae", "data": IMAGES, "backbone": VIT, "optimizer": {"layer_decay": 0.75}}
        )
    cfg = validate_train_config(
        {"data": IMAGES, "backbone": {"name": "cnn2d"}, "optimizer": {"layer_decay": 0.75}}
    )
    with pytest.raises(ConfigError, match="layer_decay decays the lr block by block of a ViT"):
        build_method(cfg, (3, 16, 16), 4)
    with pytest.raises(ConfigError, match="patch_size 5 does not divide the image size 16"):
        vits.vit((3, 16, 16), patch_size=5)
    crops = {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 6}}}
    dino = {"method": "dino", "data": {**IMAGES, "augment": crops}, "backbone": VIT}
    with pytest.raises(ConfigError, match=r"local_crops.size \(6\) is not a multiple of backbone"):
        validate_train_config(dino)
    crops["image"]["local_crops"]["size"] = None
    with pytest.raises(ConfigError, match="local_crops.size: set it to a multiple of backbone"):
        validate_train_config(dino)


def test_layer_decay_gives_each_block_its_lr_and_exempts_norms_positions_and_cls():
    """depth 2, decay 0.5, lr 0.1: embeddings 0.1 x 0.5^3, block 0 x 0.5^2, block 1 x 0.5,
    final norm and head at 0.1; no weight decay on biases, norms, pos_embed, cls_token."""
    cfg = validate_train_config(
        {
            "data": IMAGES,
            "backbone": VIT,
            "optimizer": {"name": "adamw", "lr": 0.1, "weight_decay": 0.05, "layer_decay": 0.5},
        }
    )
    method = build_method(cfg, (3, 16, 16), 4)
    names = {id(p): n for n, p in method.named_parameters()}
    lr_of, wd_of = {}, {}
    for group in method.configure_optimizers(10, 5)[0].param_groups:
        for p in group["params"]:
            lr_of[names[id(p)]], wd_of[names[id(p)]] = group["lr"], group["weight_decay"]
    assert lr_of.keys() == set(names.values())  # every parameter once
    expected = {
        "backbone.patch_embed.proj.weight": 0.1 * 0.5**3,
        "backbone.cls_token": 0.1 * 0.5**3,
        "backbone.blocks.0.attn.qkv.weight": 0.1 * 0.5**2,
        "backbone.blocks.1.mlp.fc2.weight": 0.1 * 0.5,
        "backbone.norm.weight": 0.1,
        "fc.weight": 0.1,
    }
    assert {k: lr_of[k] for k in expected} == pytest.approx(expected)
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.norm.weight", "fc.bias"):
        assert wd_of[name] == 0.0, name
    for name in ("backbone.blocks.0.attn.qkv.weight", "fc.weight"):
        assert wd_of[name] == 0.05, name


MAE_RUN = {
    "method": "mae",
    "epochs": 3,
    "data": {**IMAGES, "augment": {"preset": "byol"}},
    "backbone": VIT,
    "mae": SMALL_DECODER,
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    "eval": {"linear_probe": False},
}


def test_mae_trains_in_the_loop_and_a_restored_run_ends_exactly_as_an_uninterrupted_one(tmp_path):
    history = _resumes_exactly(MAE_RUN, tmp_path, rng_noise=123)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "knn_acc" in history[-1]


DINO_VIT_RUN = {
    "method": "dino",
    "epochs": 3,
    "data": {
        **IMAGES,
        "augment": {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}},
    },
    "backbone": {**VIT, "drop_path_rate": 0.1},
    "dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "warmup_teacher_temp_steps": 4},
    "optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4},
    "grad_clip": 3.0,
    "grad_clip_mode": "per_parameter",
    "eval": {"linear_probe": False},
}


def test_dino_with_a_vit_takes_every_crop_size_and_resumes_exactly(tmp_path):
    """DINO's ViT recipe: 16-px global and 8-px local crops through one ViT (its positions
    interpolated to each grid), stochastic depth, per-parameter clipping and the
    weight-decay schedule; a restored run ends as an uninterrupted one."""
    straight = _loop(DINO_VIT_RUN)
    grids = []
    straight.method.backbone.blocks[0].register_forward_pre_hook(
        lambda m, i: grids.append(i[0].shape[1])
    )
    history = list(straight.epochs())
    assert {1 + 16, 1 + 4} <= set(grids)  # CLS + 4 x 4 patches, CLS + 2 x 2 patches
    assert all(h["train_loss"] == h["train_loss"] for h in history)  # finite
    _resumes_exactly(DINO_VIT_RUN, tmp_path)


def test_koleo_adds_its_weight_times_the_term_of_each_global_crops_features():
    """DINOv2's KoLeo in DINO's and iBOT's losses: with the same networks, the loss at
    koleo_weight w less the loss at 0 is w * (koleo(CLS of crop 0) + koleo(CLS of crop 1)),
    the student's backbone features (iBOT's: of its masked crops)."""
    from rayssl.methods.losses import koleo

    crops = (torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16), torch.randn(6, 3, 8, 8))
    for method, section in (
        ("dino", {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}),
        ("ibot", {**IBOT_SECTION, "mask_probability": 0.0}),
    ):

        def build(weight, method=method, section=section):
            torch.manual_seed(0)
            cfg = validate_train_config(
                {
                    "method": method,
                    "data": {**IMAGES, "augment": MULTI_CROP},
                    "backbone": VIT,
                    method: {**section, "koleo_weight": weight},
                }
            )
            return build_method(cfg, (3, 16, 16), 4)

        plain, regularised = build(0.0), build(0.5)
        with torch.no_grad():
            term = sum(koleo(plain.backbone(c)) for c in crops[:2])
        difference = (
            regularised.validation_step((crops, None))["loss"]
            - plain.validation_step((crops, None))["loss"]
        )
        assert float(difference) == pytest.approx(0.5 * float(term), rel=1e-4), method
        assert float(term) != 0.0


def test_per_parameter_clipping_scales_each_gradient_by_its_own_norm():
    """DINO's clip_gradients written out: coefficient clip / (norm + 1e-6) where below 1."""
    from rayssl.engine.step import clip_each

    big, small = torch.full((4,), 5.0), torch.full((3,), 0.1)  # norms 10 and 0.17
    clip_each([big, small], 3.0)
    assert torch.allclose(big, torch.full((4,), 5.0) * 3.0 / (10.0 + 1e-6))
    assert torch.equal(small, torch.full((3,), 0.1))


# ----------------------------------------------------------------------------- iBOT

IBOT_SECTION = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}
MULTI_CROP = {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}}


def _ibot(**section):
    cfg = validate_train_config(
        {
            "method": "ibot",
            "data": {**IMAGES, "augment": MULTI_CROP},
            "backbone": VIT,
            "ibot": {**IBOT_SECTION, **section},
        }
    )
    return build_method(cfg, (3, 16, 16), 4)


def test_ibot_masks_blocks_of_patches_in_the_share_asked_for_reproducibly():
    from rayssl.methods.ibot import block_masks

    torch.manual_seed(0)
    masks = block_masks(400, (14, 14), 0.5, (0.1, 0.5), (0.3, 1 / 0.3))
    shares = masks.float().mean(1)
    masked = shares > 0
    assert 0.4 < float(masked.float().mean()) < 0.6  # half the crops
    assert float(shares.max()) <= 0.5 and float(shares[masked].min()) >= 0.04  # a 4 x 4 block
    grids = masks.view(400, 14, 14)
    # blockwise, not scattered: most hidden patches have a hidden neighbour in their row
    hidden = grids[masked]
    paired = (hidden[..., 1:] & hidden[..., :-1]).sum() * 2
    assert float(paired) / float(hidden.sum()) > 0.7
    torch.manual_seed(0)
    assert torch.equal(block_masks(400, (14, 14), 0.5, (0.1, 0.5), (0.3, 1 / 0.3)), masks)
    assert not block_masks(10, (4, 4), 0.0, (0.1, 0.5), (0.3, 3.3)).any()


def test_ibot_patch_loss_is_the_cross_entropy_over_each_images_hidden_patches():
    """Against the definition written out image by image: teacher softmax((t - c) / T_t),
    student log_softmax(s / T_s), summed over prototypes, averaged over an image's hidden
    patches (an image with none counts 0), then over images."""
    from rayssl.methods.ibot import PatchLoss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    masks = torch.zeros(4, 6, dtype=torch.bool)
    masks[0, :2], masks[1, 5], masks[3, :] = True, True, True  # image 2 hides nothing
    loss = PatchLoss(5, student_temp=0.1, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, 1, 5, generator=g))
    expected = []
    for b in range(4):
        terms = []
        for n in range(6):
            if masks[b, n]:
                p = torch.softmax((teacher[b, n] - loss.center[0, 0]) / 0.07, -1)
                terms.append(float(-(p * torch.log_softmax(student[b, n] / 0.1, -1)).sum()))
        expected.append(sum(terms) / len(terms) if terms else 0.0)
    got = loss(student, teacher, masks, teacher_temp=0.07)
    assert float(got) == pytest.approx(sum(expected) / 4, rel=1e-5)


def _patch_centre_worker(rank, world, rendezvous, teacher, out):
    from conftest import gloo_group, leave_gloo_group

    from rayssl.methods.ibot import PatchLoss

    gloo_group(rank, world, rendezvous)
    b = len(teacher) // world
    loss = PatchLoss(teacher.shape[-1], 0.1, center_momentum=0.9)
    loss.update_center(teacher[rank * b : (rank + 1) * b])
    if rank == 0:
        torch.save(loss.center, out)
    leave_gloo_group()


def test_ibot_patch_centre_moves_towards_the_global_batch_mean_on_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    from rayssl.methods.ibot import PatchLoss

    teacher = torch.randn(8, 5, 6)
    teacher[4:] += 3.0  # the ranks' halves differ
    out = tmp_path / "centre.pt"
    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(_patch_centre_worker, args=(2, rendezvous, teacher, str(out)), nprocs=2, join=True)
    single = PatchLoss(6, 0.1, center_momentum=0.9)
    single.update_center(teacher)
    assert torch.allclose(torch.load(out), single.center, atol=1e-6)
    assert torch.allclose(single.center[0], 0.1 * teacher.mean((0, 1)).unsqueeze(0), atol=1e-6)


def _patch_targets_worker(rank, world, rendezvous, teacher, masks, out):
    from conftest import gloo_group, leave_gloo_group

    from rayssl.methods.ibot import PatchLoss

    gloo_group(rank, world, rendezvous)
    b = len(teacher) // world
    loss = PatchLoss(teacher.shape[-1], 0.1, 0.9, centering="sinkhorn_knopp")
    for name, m in masks.items():
        mine = slice(rank * b, (rank + 1) * b)
        torch.save(loss.targets(teacher[mine], m[mine], 0.05), f"{out}.{name}.{rank}")
    leave_gloo_group()


def test_ibot_sinkhorn_knopp_spans_the_hidden_patches_of_every_rank(tmp_path):
    """DINOv2's patch centering: Sinkhorn-Knopp over the hidden patches of the global batch
    (the SwAV algorithm written out in numpy on those rows), 0 elsewhere. On 2 gloo
    processes that hide 5 and 1 patches, or 4 and none, each rank's targets are those
    rows of the single-process targets."""
    import torch.multiprocessing as mp
    from test_losses import _sinkhorn_reference

    from rayssl.methods.ibot import PatchLoss

    torch.manual_seed(0)
    teacher = torch.rand(4, 5, 6) * 2 - 1
    masks = {
        "uneven": torch.zeros(4, 5, dtype=torch.bool),
        "none": torch.zeros(4, 5, dtype=torch.bool),
    }
    masks["uneven"][0, :3] = masks["uneven"][1, 1:3] = masks["uneven"][3, 4] = True
    masks["none"][0, :2] = masks["none"][1, 3:] = True
    single = PatchLoss(6, 0.1, 0.9, centering="sinkhorn_knopp")
    out = str(tmp_path / "targets")
    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(_patch_targets_worker, args=(2, rendezvous, teacher, masks, out), nprocs=2, join=True)
    for name, m in masks.items():
        whole = single.targets(teacher, m, 0.05)
        reference = _sinkhorn_reference(teacher[m].double().numpy(), 0.05, 3)
        assert np.allclose(whole[m].numpy(), reference, atol=1e-5), name
        assert torch.equal(whole[~m], torch.zeros_like(whole[~m]))
        ranks = torch.cat([torch.load(f"{out}.{name}.{r}") for r in range(2)])
        assert torch.allclose(ranks, whole, atol=1e-5), name
    single.update_center(teacher)
    assert torch.equal(single.center, torch.zeros(1, 1, 6))
    # through iBOT's step: both losses under Sinkhorn-Knopp, the centres left at 0
    ibot = _ibot(centering="sinkhorn_knopp", mask_probability=1.0)
    crops = (torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8))
    loss = ibot.training_step((crops, None))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and ibot.mask_token.grad.abs().sum() > 0
    assert not ibot.criterion.center.any() and not ibot.patch_criterion.center.any()


def test_ibot_without_masks_or_patch_loss_is_dino_on_the_same_networks():
    from rayssl.methods.dino import DINO

    torch.manual_seed(0)
    ibot = _ibot(mask_probability=0.0, patch_weight=0.0)
    dino = DINO(ibot.backbone, ibot.head, out_dim=32, teacher_temp=0.07, warmup_teacher_temp=0.04)
    dino.backbone_momentum.load_state_dict(ibot.backbone_momentum.state_dict())
    dino.head_momentum.load_state_dict(ibot.head_momentum.state_dict())
    crops = (torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8))
    a = ibot.validation_step((crops, None))["loss"]
    b = dino.validation_step((crops, None))["loss"]
    assert torch.allclose(a, b, atol=1e-5)
    # with the masks and the patch loss on, the student's hidden patches are mask tokens
    masked = _ibot(mask_probability=1.0)
    masked.training_step((crops, None))["loss"].backward()
    assert masked.mask_token.grad.abs().sum() > 0


def test_ibot_defaults_are_its_sections_and_it_refuses_a_cnn():
    from rayssl.methods.ibot import DEFAULTS, IBOT

    direct = IBOT(vits.vit((3, 16, 16), patch_size=4, depth=1))
    assert direct.criterion.center.shape[1] == DEFAULTS.out_dim == 8192
    assert direct.teacher_temp == 0.07 and direct.teacher_patch_temp == 0.07
    assert direct.head.last_layer.parametrizations.weight.original0.requires_grad  # not normed
    with pytest.raises(ConfigError, match="ibot needs a ViT backbone: set backbone.name: vit"):
        build_method(
            validate_train_config(
                {
                    "method": "ibot",
                    "data": {**IMAGES, "augment": MULTI_CROP},
                    "backbone": {"name": "cnn2d"},
                }
            ),
            (3, 16, 16),
            4,
        )


IBOT_RUN = {
    **DINO_VIT_RUN,
    "method": "ibot",
    "ibot": {**IBOT_SECTION, "warmup_teacher_temp_steps": 4},
}
IBOT_RUN.pop("dino")


def test_ibot_trains_in_the_loop_and_a_restored_run_ends_exactly_as_an_uninterrupted_one(tmp_path):
    history = _resumes_exactly(IBOT_RUN, tmp_path, rng_noise=7)
    assert history[-1]["teacher_patch_temp"] == pytest.approx(0.07)


def test_the_cli_refuses_a_vit_method_on_a_cnn_in_one_line_with_exit_2(write_config, tmp_path):
    import subprocess
    import sys

    config = write_config(
        {"method": "ibot", "data": {**IMAGES, "augment": MULTI_CROP}, "backbone": {"name": "cnn2d"}}
    )
    done = subprocess.run(
        [sys.executable, "-m", "rayssl.cli", "train", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rayssl: error: ibot needs a ViT backbone: set backbone.name: vit (or a timm ViT), "
        "not 'cnn2d'"
    ]
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.slow
def test_pbt_moves_a_vit_recipes_lr_and_weight_decay_and_keeps_the_exempt_group(
    write_config, tmp_path
):
    """PBT over DINO-ViT's learning rate and weight decay (under its weight-decay schedule):
    a trial that copies the other continues under its own values, and the group DINO
    exempts from weight decay (biases, norms, CLS, positions) stays at 0 through the copy."""
    import csv

    import yaml
    from click.testing import CliRunner

    from rayssl.cli import main
    from rayssl.optim.groups import INITIAL_WEIGHT_DECAY

    base = write_config(
        {**DINO_VIT_RUN, "epochs": 4, "num_workers": 0, "eval": {"every": 1}}, name="dino_vit"
    )
    search = tmp_path / "search.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "base": base.name,
                "space": {
                    "optimizer.lr": {"loguniform": [1.0e-4, 3.0e-3]},
                    "optimizer.weight_decay": {"choice": [0.01, 0.04, 0.1]},
                },
                "metric": "knn_acc",
                "mode": "max",
                "num_samples": 2,
                "scheduler": {
                    "name": "pbt",
                    "perturbation_interval": 2,
                    "quantile_fraction": 0.5,
                    "synch": True,
                },
                "storage_path": str(tmp_path / "tune"),
            }  # fmt: skip
        )
    )
    result = CliRunner().invoke(main, ["tune", str(search)])
    assert result.exit_code == 0, result.output
    (experiment,) = (tmp_path / "tune").iterdir()
    rows = list(csv.DictReader(open(experiment / "results.csv")))
    assert len(rows) == 2 and all(r["epochs"] == "4" for r in rows)
    states = [load_state(p.parent) for p in experiment.glob("*/checkpoint_*/state.pt")]
    copied = [s for s in states if s["loop"]["resumed_at"]]
    assert copied  # a trial restarted from the other's checkpoint
    for state in states:
        wd = state["config"]["optimizer"]["weight_decay"]
        decayed, exempt = state["optimizer"]["param_groups"]
        assert decayed[INITIAL_WEIGHT_DECAY] == pytest.approx(wd)  # the schedule's base
        assert exempt["weight_decay"] == 0.0 and exempt[INITIAL_WEIGHT_DECAY] == 0.0
