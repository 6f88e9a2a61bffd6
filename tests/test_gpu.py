"""On an NVIDIA GPU: the image loop with the GPU switches, exact resume on CUDA, and a Ray
Train run over NCCL. Skipped where torch sees no CUDA device (CI has none); run on a GPU
machine with `pytest tests/test_gpu.py`."""

from pathlib import Path

import pytest
import torch
from conftest import assert_states_equal

from rayssl.config import validate_train_config
from rayssl.data import load_splits
from rayssl.data.demo import write_digit_images
from rayssl.engine import Loop
from rayssl.methods.registry import build_method
from rayssl.runs.state import load_state, save_state
from rayssl.seeds import seed_everything

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digit_images(root, train=512, test=128, seed=0)
    return root


def _cfg(digits: Path, method: str, **overrides):
    from rayssl.config import deep_merge

    base = {
        "method": method,
        "epochs": 2,
        "num_workers": 1,
        "use_gpu": True,
        "data": {
            "name": "images",
            "path": str(digits / "train"),
            "test_path": str(digits / "test"),
            "batch_size": 128,
            "augment": {"preset": "simclr" if method == "simclr" else "byol"},
        },
        "backbone": {"name": "cnn2d", "width": 16, "depth": 3},
        "eval": {"every": 1, "linear_probe": False},
    }
    return validate_train_config(deep_merge(base, overrides))


def _loop(cfg) -> Loop:
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    return Loop(method, splits, cfg, device="cuda")


def test_dino_multi_crop_views_are_made_on_the_gpu_in_bf16_and_channels_last(digits):
    cfg = _cfg(
        digits,
        "dino",
        performance={"amp": "bf16", "channels_last": True},
        data={"augment": {"image": {"local_crops": {"number": 4, "size": 16}}}},
    )
    loop = _loop(cfg)
    seen = []
    conv = next(m for m in loop.method.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(
        lambda m, i, out: seen.append(
            (i[0].device.type, i[0].is_contiguous(memory_format=torch.channels_last), out.dtype)
        )
    )
    history = list(loop.epochs())
    assert seen and {(device, layout) for device, layout, _ in seen} == {("cuda", True)}
    assert torch.bfloat16 in {dtype for *_, dtype in seen}  # training steps autocast
    assert all(p.is_cuda and p.dtype == torch.float32 for p in loop.method.parameters())
    assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))
    assert "knn_acc" in history[-1]


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_a_restored_gpu_run_equals_the_uninterrupted_one(digits, tmp_path, method):
    """2 epochs straight == 1 epoch + checkpoint + restore in a fresh loop + 1 epoch, on
    CUDA (views from the device's generator; cuDNN held to its deterministic kernels)."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    cfg = _cfg(digits, method)
    straight = _loop(cfg)
    list(straight.epochs())

    first = _loop(cfg)
    next(first.epochs())
    save_state(first.state_dict(), tmp_path)
    torch.manual_seed(999)
    torch.cuda.manual_seed_all(999)
    second = _loop(cfg)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert second.state.global_step == straight.state.global_step
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())


def test_fit_trains_on_a_gpu_worker_over_nccl_with_lars(digits, tmp_path, ray_session):
    from rayssl.cluster import fit

    cfg = _cfg(
        digits,
        "byol",
        storage_path=str(tmp_path / "runs"),
        optimizer={"name": "lars", "lr": 0.5},
        model={"sync_batchnorm": True},
        performance={"amp": "bf16", "channels_last": True},
    )
    summary = fit(cfg)
    assert summary["epochs_run"] == 2
    state = load_state(summary["checkpoint"])
    weights = [v for v in state["model"].values() if v.is_floating_point()]
    assert weights and all(torch.isfinite(v).all() for v in weights)
    assert torch.isfinite(torch.tensor(summary["final_metrics"]["train_loss"]))
    assert "knn_acc" in summary["final_metrics"]


@pytest.mark.parametrize("preset", ["simclr", "byol"])
def test_the_sync_free_views_equal_the_gathered_ones_on_the_gpu(preset):
    from rayssl.config import AugmentConfig
    from rayssl.data.image_views import ImageViews

    x = torch.rand(512, 3, 32, 32, device="cuda")
    cfg = AugmentConfig(preset=preset).image
    for view in (0, 1):
        masked = ImageViews(cfg, view)(x, torch.Generator("cuda").manual_seed(7))
        gathered = ImageViews(cfg, view, masked=False)(x, torch.Generator("cuda").manual_seed(7))
        torch.testing.assert_close(masked, gathered, atol=1e-5, rtol=0)


def _graphed_and_eager(cfg):
    from rayssl.data.image_views import ImageViews

    eager_cfg = cfg.model_copy(update={"cuda_graph": False})
    return (
        [ImageViews(cfg, v) for v in (0, 1)],
        [ImageViews(eager_cfg, v) for v in (0, 1)],
    )


@pytest.mark.parametrize("preset", ["simclr", "byol"])
@pytest.mark.parametrize("amp", [False, True])
def test_the_graphed_views_equal_the_eager_ones_and_draw_the_same_stream(preset, amp):
    """Replayed CUDA graphs give the eager sync-free views bit for bit, over batches of
    two shapes (a short last batch is its own graph), under bf16 autocast too, and leave
    the generator where the eager views leave it; after capture they never wait on the GPU."""
    from rayssl.config import AugmentConfig

    cfg = AugmentConfig(preset=preset).image
    graphed, eager = _graphed_and_eager(cfg)
    g_graphed = torch.Generator("cuda").manual_seed(3)
    g_eager = torch.Generator("cuda").manual_seed(3)
    data = torch.rand(1100, 3, 32, 32, device="cuda")
    batches = [data[i : i + 256] for i in range(0, 1100, 256)] * 2  # 4 x 256, 1 x 76, twice
    pairs = []
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        for i, x in enumerate(batches):
            for view in (0, 1):
                if i >= len(batches) // 2:  # every shape captured: replays only, no wait
                    torch.cuda.set_sync_debug_mode("error")
                try:
                    ours = graphed[view](x, g_graphed)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                pairs.append((i, view, ours, eager[view](x, g_eager)))
    for i, view, ours, theirs in pairs:
        assert torch.equal(ours, theirs), (i, view)
    assert all(len(v._graphs.graphs) == 2 for v in graphed)  # one graph per batch shape
    assert all(c is not None for v in graphed for c in v._graphs.graphs.values())
    assert torch.equal(g_graphed.get_state(), g_eager.get_state())


def test_multi_crop_views_are_graphed_and_equal_the_eager_ones(digits):
    from rayssl.config import AugmentConfig
    from rayssl.data.augment import Augment

    raw = {"preset": "byol", "image": {"local_crops": {"number": 4, "size": 16}}}
    graphed = Augment(AugmentConfig(**raw))
    raw["image"]["cuda_graph"] = False
    eager = Augment(AugmentConfig(**raw))
    x = torch.rand(128, 3, 32, 32, device="cuda")
    g1, g2 = (torch.Generator("cuda").manual_seed(5) for _ in range(2))
    for _ in range(3):
        ours = graphed.views(x, g1, 2, multi_crop=True)
        theirs = eager.views(x, g2, 2, multi_crop=True)
        assert [v.shape[-1] for v in ours] == [32, 32, 16, 16, 16, 16]
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert graphed._local_views(32)._graphs is not None


def test_views_made_after_others_were_freed_still_capture_their_graphs():
    """Each owner's graphs share a pool that lives with them: a handle kept past its graphs
    once made every later capture fail (an allocator assert) and fall back to eager."""
    import gc

    from rayssl.config import AugmentConfig
    from rayssl.data.augment import Augment

    x = torch.rand(64, 3, 32, 32, device="cuda")
    for seed in range(3):  # each Augment freed before the next is made
        augment = Augment(AugmentConfig(preset="byol"))
        augment.views(x, torch.Generator("cuda").manual_seed(seed), 2)
        graphs = [augment._views_of(v)._graphs.graphs for v in (0, 1)]
        assert all(c is not None for g in graphs for c in g.values()), seed
        del augment, graphs
        gc.collect()
