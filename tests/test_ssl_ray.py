"""Self-supervised methods on real 2-worker Ray Train runs (gloo): every rank ends with the
same weights (BYOL's target included, LFR's selected targets included), and a run whose
workers crash after an epoch and are restarted by FailureConfig ends exactly where an
uninterrupted run ends."""

import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch
from conftest import assert_states_equal, needs_timm

from rayssl.cluster import fit
from rayssl.config import load_train_config
from rayssl.runs.state import load_state

# Ray ships the dumping train function to its workers by value (tests/ is not importable there).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# 16-px images with 2 global views and 2 local crops of 8 px per sample (DINO, SwAV, iBOT)
MULTI_CROP_IMAGES = {
    "shape": [3, 16, 16],
    "num_samples": 128,
    "batch_size": 32,
    "augment": {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}},
}
METHODS = {
    "byol": {"byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "base_momentum": 0.9}},
    "simclr": {"simclr": {"proj_hidden": 16, "proj_dim": 8, "temperature": 0.2}},
    "lfr": {
        "lfr": {
            "num_projectors": 6,
            "num_targets": 3,
            "proj_dim": 8,
            "proj_hidden": 16,
            "pred_hidden": 16,
            "predictor_training_epochs": 1,
        }
    },
    # the large-batch tools ride along: LARS (its momentum buffers resume) and BatchNorm
    # over the global batch (rayssl's CPU SyncBatchNorm under gloo)
    "barlow_twins": {
        "barlow_twins": {"proj_hidden": 16, "proj_dim": 16},
        "optimizer": {"name": "lars", "lr": 0.2, "weight_decay": 1e-4},
        "model": {"sync_batchnorm": True},
    },
    "vicreg": {
        "vicreg": {"proj_hidden": 16, "proj_dim": 16},
        "model": {"sync_batchnorm": True},
    },
    # multi-crop: 2 global views of 16 px and 2 local crops of 8 px per sample, all drawn
    # per (seed, epoch, rank); the teacher's centre (all-reduced) and temperature warm-up
    "dino": {
        "dino": {
            "out_dim": 32,
            "hidden_dim": 16,
            "bottleneck_dim": 8,
            "warmup_teacher_temp_steps": 6,
            "teacher_temp": 0.07,
            "base_momentum": 0.9,
        },
        "data": MULTI_CROP_IMAGES,
        "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
        # and the online linear probe, whose head and optimizer resume with the rest
        "eval": {"every": 0, "linear_probe": False, "online_linear": True},
    },
    "moco": {
        "moco": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "base_momentum": 0.9},
    },
    # the support set, gathered from both ranks, full within epoch 1 and restored
    "nnclr": {"nnclr": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "queue_length": 64}},
    # per-view BatchNorm and the predictor's lr held outside the schedule
    "simsiam": {"simsiam": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 4}},
    # multi-crop with Sinkhorn's sums all-reduced over the ranks, and the queue (two global
    # batches, full within epoch 1: the restart after epoch 1 restores it)
    "swav": {
        "swav": {
            "proj_hidden": 16,
            "proj_dim": 8,
            "num_prototypes": 12,
            "queue_length": 64,
            "queue_start_epoch": 0,
        },
        "data": MULTI_CROP_IMAGES,
        "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
    },
    # DINO's settings above plus the masks; one head for the CLS and patch tokens
    "ibot": {
        "ibot": {
            "out_dim": 32,
            "hidden_dim": 16,
            "bottleneck_dim": 8,
            "warmup_teacher_temp_steps": 6,
            "teacher_temp": 0.07,
            "teacher_patch_temp": 0.07,
            "base_momentum": 0.9,
            "mask_probability": 1.0,
        },
        "data": MULTI_CROP_IMAGES,
        "backbone": {"name": "vit", "size": "tiny", "patch_size": 4, "depth": 2},
        "optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.04},
        "eval": {"every": 0, "linear_probe": False, "online_linear": True},
    },
    "mae": {
        "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "data": {
            "shape": [3, 16, 16],
            "num_samples": 128,
            "batch_size": 32,
            "augment": {"preset": "byol"},
        },
        "backbone": {"name": "vit", "size": "tiny", "patch_size": 4, "depth": 2},
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
    },
}


def assert_extras_equal(a, b):
    """A method's extra state, tensors (SwAV's queue) compared bit for bit."""
    assert a.keys() == b.keys()
    for key in a:
        same = torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key]
        assert same, key


def dumping_train_func(config):
    """rayssl's own worker function, then each rank saves its final method state."""
    import ray.train

    from rayssl.cluster.worker import run_worker

    loop = run_worker(config)
    rank = ray.train.get_context().get_world_rank()
    out = Path(config["args"].config["storage_path"]) / f"rank{rank}.pt"
    torch.save({"model": loop.method.state_dict(), "extra": loop.method.extra_state()}, out)


# SimCLR's 2-worker restart is also exact in test_image_views_restart_exactly_on_two_workers,
# and its global-batch loss is checked on a gloo group in test_losses: slow here.
# VICReg's global-batch loss is checked on a gloo group in test_losses, and a VICReg by
# import path restarts exactly in test_user_method's default run: slow here.
@pytest.mark.parametrize(
    "method",
    [
        # BYOL's EMA is unit-tested (test_byol); iBOT's default run checks the same EMA
        # teacher (BYOL's update_momentum) reaching every rank and restarting exactly: slow
        pytest.param("byol", marks=pytest.mark.slow),
        pytest.param("simclr", marks=pytest.mark.slow),
        "lfr",
        # Barlow Twins' loss is checked on a gloo group in test_losses; LARS and the CPU
        # SyncBatchNorm restart exactly in test_user_method's default run: slow here
        pytest.param("barlow_twins", marks=pytest.mark.slow),
        pytest.param("vicreg", marks=pytest.mark.slow),
        # iBOT is DINO plus masked patch tokens: its default run below restarts DINO's
        # multi-crop views, EMA teacher, centre, teacher-temperature warm-up and online
        # probe exactly (on a ViT; DINO's class is iBOT's base): slow here
        pytest.param("dino", marks=pytest.mark.slow),
        # MoCo v3 is BYOL's two networks with a contrastive loss (checked on gloo in
        # test_losses); iBOT's default run restarts the same EMA teacher exactly
        pytest.param("moco", marks=pytest.mark.slow),
        # SwAV's loss is checked on a gloo group in test_losses, its multi-crop views are
        # DINO's and iBOT's (whose default run restarts them exactly): slow here
        pytest.param("swav", marks=pytest.mark.slow),
        # SimSiam has no state beyond its weights and optimizer; its loss and fixed
        # predictor lr are checked in one process (test_simsiam): slow here
        pytest.param("simsiam", marks=pytest.mark.slow),
        # NNCLR's support set is an EmbeddingQueue as SwAV's queue, whose restart is above;
        # its loss is checked on a gloo group in test_losses: slow here
        pytest.param("nnclr", marks=pytest.mark.slow),
        # MAE's masks come from each rank's restored generator, as iBOT's (default run
        # below); its one-process resume is exact in test_vit: slow here
        pytest.param("mae", marks=[needs_timm, pytest.mark.slow]),
        # a ViT (timm) through the whole Ray path: DINO's machinery (above) plus masks
        # from each rank's restored generator and the patch centre over both ranks
        pytest.param("ibot", marks=needs_timm),
    ],
)
def test_ranks_agree_and_restart_is_exact(ray_session, write_config, tmp_path, method):
    overrides = {
        "method": method,
        "epochs": 3,
        "num_workers": 2,
        "data": {"augment": {"shift": 2, "jitter": 0.05, "mask": 3}},
        "eval": {"every": 0, "linear_probe": False},
        **METHODS[method],
    }
    straight_dir, retried_dir = tmp_path / "straight", tmp_path / "retried"
    straight = fit(
        load_train_config(write_config({**overrides, "storage_path": str(straight_dir)}, name="a")),
        train_fn=dumping_train_func,
    )
    rank0, rank1 = (torch.load(straight_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert_states_equal(rank0["model"], rank1["model"])  # incl. BYOL's momentum target
    assert_extras_equal(rank0["extra"], rank1["extra"])  # LFR's targets, SwAV's queue
    if method == "lfr":  # DPP chose 3 of the 6 projectors, on rank 0, for every rank
        assert len(rank0["extra"]["selected"]) == 3
        assert len({k.split(".")[1] for k in rank0["model"] if k.startswith("projectors.")}) == 3
    assert "knn_acc" in straight["final_metrics"]

    retried = fit(
        load_train_config(
            write_config(
                {**overrides, "max_failures": 1, "storage_path": str(retried_dir)}, name="b"
            )
        ),
        crash_after_epoch=1,
    )
    a = load_state(Path(straight["checkpoint"]))
    b = load_state(Path(retried["checkpoint"]))
    assert_states_equal(a["model"], b["model"])
    assert_extras_equal(a["method_extra"], b["method_extra"])
    assert a["loop"]["global_step"] == b["loop"]["global_step"]
    if method in ("swav", "nnclr"):  # the queue was full when the restart restored it
        assert a["method_extra"]["filled"] == 64
    if method == "barlow_twins":  # LARS's state and the synchronised BatchNorms resumed
        assert a["optimizer"]["state"] and all(
            "momentum_buffer" in v for v in a["optimizer"]["state"].values()
        )
    if method in ("dino", "ibot"):  # the online probe's head and optimizer resumed too
        assert_states_equal(a["online_probe"], b["online_probe"])
        assert [h["online_linear_acc"] for h in retried["history"]] == [
            h["online_linear_acc"] for h in straight["history"]
        ]
    if method == "lfr":
        steps = a["loop"]["global_step"] // 3
        assert a["method_extra"]["backbone_training_steps"] == 2 * steps  # epochs 1 and 3 only

    # TensorBoard: the restarted run's curves hold each epoch once, with the run's values
    curves = _curves(Path(retried["checkpoint"]).parent / "tensorboard")
    history = retried["history"]
    assert curves["train_loss"] == [(h["epoch"], pytest.approx(h["train_loss"])) for h in history]
    assert [step for step, _ in curves["lr"]] == [1, 2, 3]
    if method in ("dino", "ibot"):  # the teacher temperature warms up over steps, then holds
        temps = [v for _, v in curves["teacher_temp"]]
        assert temps[0] < temps[1] == temps[2] == pytest.approx(0.07)
    if method == "ibot":  # the patch tokens' too
        temps = [v for _, v in curves["teacher_patch_temp"]]
        assert temps[0] < temps[1] == temps[2] == pytest.approx(0.07)
    if method in ("byol", "moco"):  # the momentum rises on its cosine towards 1
        momentum = [v for _, v in curves["momentum"]]
        assert len(momentum) == 3 and 0.9 < momentum[0] < momentum[1] < momentum[2] <= 1.0
    if method == "lfr":  # the phase: the backbone trains in epochs 1 and 3
        assert [v for _, v in curves["backbone_trains"]] == [1.0, 0.0, 1.0]


def _curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars as TensorBoard shows them (its own reader: it applies purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


@pytest.mark.slow  # the default suite checks the same with BYOL's views (test_user_method)
def test_image_views_restart_exactly_on_two_workers(ray_session, write_config, tmp_path):
    """SimCLR with the paper's image views on RGB images: a run whose 2 workers crash after
    epoch 2 and restart ends torch.equal to an uninterrupted one (views come from the
    (seed, epoch, rank) generator, per sample)."""
    overrides = {
        "method": "simclr",
        "epochs": 3,
        "data": {
            "shape": [3, 16, 16],
            "num_samples": 128,
            "batch_size": 32,
            "augment": {"preset": "simclr"},
        },
        "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
        "eval": {"every": 0, "linear_probe": False},
        **METHODS["simclr"],
    }
    runs = []
    for name, extra in (("a", {}), ("b", {"max_failures": 1})):
        cfg = {**overrides, **extra, "storage_path": str(tmp_path / name)}
        runs.append(
            fit(
                load_train_config(write_config(cfg, name=name)),
                crash_after_epoch=2 if extra else None,
            )
        )
    a, b = (load_state(Path(r["checkpoint"])) for r in runs)
    # epoch 2's checkpoint, or epoch 1's if Ray Train had not registered epoch 2's yet
    assert runs[1]["resumed_at"] in ([1], [2])
    assert_states_equal(a["model"], b["model"])
