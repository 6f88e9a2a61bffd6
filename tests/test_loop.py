import pytest
import torch
from conftest import TINY, assert_states_equal, gloo_group, leave_gloo_group
from conftest import one_process_loop as _loop

from rayssl.config import validate_train_config
from rayssl.data import load_splits
from rayssl.engine import Loop, NonFiniteLossError, NoSink, TrainingIterationStats
from rayssl.engine.checkpoint import LoopState
from rayssl.engine.dummy import DummyTrainer
from rayssl.engine.randomness import TrainingRandomness
from rayssl.errors import ConfigError
from rayssl.methods.registry import build_method
from rayssl.runs.state import load_state, save_state
from rayssl.seeds import seed_everything


class SaveOnNotice(NoSink):
    """A sink whose preemption notice comes once `notice(loop)` says so; a mid-epoch report
    saves the loop's state (RNG of this process) to `directory`."""

    def __init__(self, notice, directory):
        self.notice, self.directory = notice, directory

    def preempted(self, loop) -> bool:
        return self.notice(loop)

    def report(self, loop, metrics, kind) -> None:
        if kind == "preemption":
            save_state(loop.state_dict(), self.directory)


def test_dummy_trainer_iterate_yields_stats_across_epochs():
    trainer = DummyTrainer({"data": {"num_samples": 128, "batch_size": 32}})
    stats = list(trainer.iterate(10))  # 3 steps per epoch: crosses three epoch boundaries
    assert [s.iteration for s in stats] == list(range(1, 11))
    assert all(isinstance(s, TrainingIterationStats) and s.time > 0 for s in stats)
    assert trainer.loop.steps_per_epoch == 3 and trainer.loop.state.epoch == 3
    with pytest.raises(ValueError, match="positive"):
        next(trainer.iterate(0))


def test_training_reduces_loss_on_learnable_data():
    loop = _loop(
        {
            "epochs": 15,
            "data": {"num_samples": 512},
            "optimizer": {"lr": 1e-2},
            "backbone": {"name": "mlp", "hidden": [64]},
        }
    )
    history = list(loop.epochs())
    assert len(history) == 15
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.4  # chance is 0.1
    assert "test_accuracy" in history[-1] and "test_accuracy" not in history[0]


def test_nan_loss_stops_with_epoch_and_step():
    loop = _loop()
    loop.method.fc.weight.data.fill_(float("nan"))
    with pytest.raises(
        NonFiniteLossError, match=r"loss became nan at epoch 1, step 1 \(global step 1\)"
    ):
        next(loop.epochs())


def test_early_stopping_stops_after_patience():
    # lr so small nothing improves by min_delta: stops after 1 + patience epochs.
    loop = _loop(
        {
            "epochs": 20,
            "optimizer": {"lr": 1e-9},
            "early_stopping": {
                "monitor": "val_loss",
                "mode": "min",
                "patience": 2,
                "min_delta": 0.1,
            },
        }
    )
    history = list(loop.epochs())
    assert len(history) == 3 and loop.state.best_epoch == 1
    assert "test_loss" in history[-1]


def test_early_stopping_on_unknown_metric_names_the_choices():
    from rayssl.config import ConfigError

    with pytest.raises(ConfigError, match="'val_f1' is not reported .* choose one of: .*val_acc"):
        _loop({"early_stopping": {"monitor": "val_f1"}})


@pytest.mark.parametrize("performance", [{}, {"amp": "bf16"}], ids=["fp32", "bf16"])
def test_state_round_trip_resumes_exactly(tmp_path, performance):
    """Single process: 2 epochs + save + restore in a fresh loop + 2 epochs == 4 epochs; in
    bf16 autocast on the CPU too (what performance.amp runs on CPUs with AMX)."""
    overrides = {
        "epochs": 4,
        "data": {"augment": {"shift": 2, "jitter": 0.1}},
        "backbone": {"name": "mlp", "hidden": [16], "dropout": 0.2},
        "performance": performance,
    }
    straight = _loop(overrides)
    list(straight.epochs())

    first = _loop(overrides)
    epochs = first.epochs()
    next(epochs), next(epochs)
    save_state(first.state_dict(), tmp_path)
    torch.manual_seed(999)  # the restore must not depend on this process's RNG
    second = _loop(overrides)
    second.load_state_dict(load_state(tmp_path))
    rest = list(second.epochs())
    assert [h["epoch"] for h in rest] == [3, 4]
    assert second.state.global_step == straight.state.global_step
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())

    def timeless(h):
        return {k: v for k, v in h.items() if k not in ("samples_per_s", "epoch_time_s")}

    assert [timeless(h) for h in second.state.history] == [
        timeless(h) for h in straight.state.history
    ]


def test_bf16_autocast_runs_forward_in_bfloat16():
    loop = _loop({"epochs": 1, "performance": {"amp": "bf16"}})
    seen = []
    loop.method.fc.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    history = list(loop.epochs())
    assert seen and set(seen) == {torch.bfloat16}  # train and eval forwards
    assert all(p.dtype == torch.float32 for p in loop.method.parameters())  # weights stay fp32
    assert history[-1]["train_loss"] == history[-1]["train_loss"]  # finite, not NaN


def test_channels_last_reaches_the_convolutions():
    loop = _loop(
        {
            "epochs": 1,
            "data": {"name": "digits", "batch_size": 64},
            "backbone": {"name": "cnn2d", "width": 8},
            "performance": {"channels_last": True},
        }
    )
    formats = []
    conv = next(m for m in loop.method.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_pre_hook(
        lambda m, i: formats.append(i[0].is_contiguous(memory_format=torch.channels_last))
    )
    list(loop.epochs())
    assert formats and all(formats)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_compiled_step_trains_like_the_eager_one():
    # backend "eager" runs Dynamo's graph capture without generating C++ (no compiler in CI)
    eager = _loop({"epochs": 1})
    compiled = _loop({"epochs": 1, "performance": {"compile": True, "compile_backend": "eager"}})
    assert type(compiled.model).__name__ == "OptimizedModule"
    a, b = list(eager.epochs())[-1], list(compiled.epochs())[-1]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_adopting_another_configs_lr_rescales_the_schedule_in_place():
    a = _loop({"epochs": 2, "optimizer": {"lr": 1e-3, "weight_decay": 0.01}})
    list(a.iterate())  # one epoch: the warmup_cosine schedule has moved
    state = a.state_dict()
    b = _loop({"epochs": 2, "optimizer": {"lr": 4e-3, "weight_decay": 0.05}})
    b.load_state_dict(state)
    b.adopt_hyperparameters(state["config"])
    group_a, group_b = a.optimizer.param_groups[0], b.optimizer.param_groups[0]
    assert group_b["lr"] == pytest.approx(4 * group_a["lr"])
    assert group_b["weight_decay"] == 0.05
    a.lr_scheduler.step()
    b.lr_scheduler.step()
    assert group_b["lr"] == pytest.approx(4 * group_a["lr"])  # same position, 4x the scale


# ---------------------------------------------------------------- correctness (issue 13)


def test_evaluation_sees_clean_inputs_whatever_the_training_views():
    """Supervised val/test metrics are predictions on the un-augmented split: heavy training
    views (noise far above the signal) must not reach evaluation."""
    loop = _loop({"epochs": 2, "data": {"augment": {"jitter": 5.0, "shift": 4, "scale": 0.5}}})
    list(loop.epochs())
    x, y = loop.splits.val
    expected_acc = float((loop.method.predict(x).argmax(1) == y).float().mean())
    expected_loss = float(torch.nn.functional.cross_entropy(loop.method.predict(x), y))
    metrics = loop.evaluate("val")
    assert metrics["val_accuracy"] == pytest.approx(expected_acc, abs=1e-6)
    assert metrics["val_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_early_stopping_on_a_probe_metric_stops_on_probe_epochs():
    loop = _loop(
        {
            "method": "simclr",
            "epochs": 12,
            "optimizer": {"lr": 1e-9},
            "eval": {"every": 2, "linear_probe": False},
            "simclr": {"proj_hidden": 16, "proj_dim": 8},
            "early_stopping": {
                "monitor": "knn_acc",
                "mode": "max",
                "patience": 4,
                "min_delta": 0.5,
            },
        }
    )
    history = list(loop.epochs())
    # probes at epochs 2, 4, 6: the first sets the best, two more without improvement = 4 epochs
    assert [h["epoch"] for h in history][-1] == 6
    assert loop.state.best_epoch == 2 and "knn_acc" in history[-1] and "test_loss" in history[-1]


def test_an_early_stopped_run_stays_stopped_after_a_restore(tmp_path):
    overrides = {
        "epochs": 20,
        "optimizer": {"lr": 1e-9},
        "early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 0.1},
    }
    first = _loop(overrides)
    history = list(first.epochs())
    assert len(history) == 3
    save_state(first.state_dict(), tmp_path)
    second = _loop(overrides)
    second.load_state_dict(load_state(tmp_path))
    assert list(second.epochs()) == [] and second.state.global_step == first.state.global_step
    assert second.state.finished


def test_non_finite_gradient_with_a_finite_loss_stops_before_the_step():
    loop = _loop({"epochs": 1})
    before = {k: v.clone() for k, v in loop.method.named_parameters()}
    loop.method.fc.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"gradient became non-finite at epoch 1, step 1"):
        next(loop.epochs())
    for key, value in loop.method.named_parameters():
        assert torch.equal(value, before[key]), key
    # the optimizer never stepped: it skipped every step on the device (its moments and step
    # counts are as a fresh optimizer's)
    for state in loop.optimizer.state.values():
        assert float(state["step"]) == 0
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()


def test_restoring_another_world_size_records_the_resize(tmp_path, capsys):
    first = _loop({"epochs": 2})
    next(first.epochs())
    state = first.state_dict(rng_states=[first.rank_state()] * 2)  # as if 2 workers
    state["world_size"] = 2
    second = _loop({"epochs": 2})
    second.load_state_dict(state)
    out = capsys.readouterr().out
    assert "resized from 2 to 1 workers at epoch 2" in out
    steps = first.steps_per_epoch
    assert second.state.resizes == [{"epoch": 1, "step": steps, "from": 2, "to": 1}]
    last = list(second.epochs())[-1]
    assert last["epoch"] == 2 and last["step"] == 2 * steps and last["workers"] == 1


def test_lfr_keeps_its_targets_and_phase_across_a_resize():
    """LFR restored by another world size: the chosen targets, the backbone-step budget and
    the phase schedule carry on, and the resize is recorded."""
    overrides = {
        "method": "lfr",
        "epochs": 3,
        "lfr": {"num_projectors": 4, "num_targets": 2, "predictor_training_epochs": 1},
    }
    first = _loop(overrides, select_targets=True)
    next(first.epochs())
    state = first.state_dict(rng_states=[first.rank_state()] * 2)  # as if 2 workers
    state["world_size"] = 2
    second = _loop(overrides, select_targets=True)
    second.load_state_dict(state)
    assert second.method.selected == first.method.selected and len(first.method.selected) == 2
    assert second.method.backbone_training_steps == first.method.backbone_training_steps
    assert second.state.resizes == [{"epoch": 1, "step": first.steps_per_epoch, "from": 2, "to": 1}]
    rest = list(second.epochs())
    assert [h["backbone_trains"] for h in rest] == [0.0, 1.0]  # epoch 2 predictors only


def test_a_preemption_checkpoint_mid_epoch_resumes_exactly(tmp_path):
    """A notice at global step 10 (epoch 2 of 3) saves mid-epoch; a fresh loop restored from
    that state ends torch.equal to an uninterrupted run, its epoch 2 loss included."""
    overrides = {
        "epochs": 3,
        "data": {"augment": {"shift": 2, "jitter": 0.1}},
        "backbone": {"name": "mlp", "hidden": [16], "dropout": 0.2},
        "checkpoint": {"preemption_check_steps": 2},
    }
    straight = _loop(overrides)
    list(straight.epochs())
    steps = straight.steps_per_epoch
    assert steps < 10 < 2 * steps  # the notice lands inside epoch 2

    asked: list[int] = []

    def notice(loop) -> bool:
        asked.append(loop.state.global_step)
        return loop.state.global_step >= 10

    first = _loop(overrides, sink=SaveOnNotice(notice, tmp_path))
    list(first.epochs())
    assert asked == [2, 4, 6, 8, 10]  # every 2 steps, until the first notice is saved
    torch.manual_seed(999)  # the restore must not depend on this process's RNG
    second = _loop(overrides)
    state = load_state(tmp_path)
    assert state["loop"]["epoch"] == 1 and state["loop"]["step_in_epoch"] == 10 - steps
    second.load_state_dict(state)
    rest = list(second.epochs())
    assert [h["epoch"] for h in rest] == [2, 3]
    assert second.state.global_step == straight.state.global_step == 3 * steps
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())
    resumed, expected = second.state.history[1], straight.state.history[1]
    assert resumed["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
    assert resumed["val_loss"] == expected["val_loss"] and resumed["lr"] == expected["lr"]


def test_a_resume_from_a_notice_in_epoch_0_does_not_start_training_again(tmp_path):
    """`on_training_start` runs once per run, before its first step: a state saved by a
    preemption notice mid-epoch 0 has taken steps, so the resumed loop skips it."""
    overrides = {"epochs": 1, "checkpoint": {"preemption_check_steps": 2}}
    first = _loop(overrides, sink=SaveOnNotice(lambda loop: loop.state.global_step >= 2, tmp_path))
    assert first.steps_per_epoch > 2
    list(first.epochs())
    state = load_state(tmp_path)
    assert state["loop"]["epoch"] == 0 and state["loop"]["step_in_epoch"] == 2
    second = _loop(overrides)
    second.load_state_dict(state)
    starts: list[int] = []
    second.method.on_training_start = lambda: starts.append(second.state.global_step)
    list(second.epochs())
    assert starts == []
    fresh = _loop(overrides)
    fresh.method.on_training_start = lambda: starts.append(fresh.state.global_step)
    list(fresh.epochs())
    assert starts == [0]  # a new run still starts


def _two_rank_worker(rank, rendezvous, out_dir, poison_rank):
    """One rank of a real 2-process gloo group running a DDP-wrapped Loop: records the
    method's lifecycle hooks, then (if `poison_rank` is set) the first step with a NaN
    loss on that rank only."""

    from torch.nn.parallel import DistributedDataParallel

    gloo_group(rank, 2, rendezvous)
    torch.set_num_threads(1)
    cfg = validate_train_config({**TINY, "epochs": 2, "data": {**TINY["data"], "batch_size": 32}})
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    events: list[str] = []
    for hook in (
        "on_training_start",
        "on_training_epoch_start",
        "on_training_epoch_end",
        "on_validation_start",
        "on_validation_end",
        "on_testing_start",
        "on_testing_end",
        "on_training_end",
    ):
        setattr(method, hook, lambda *a, name=hook: events.append(f"{name}{list(a)}"))
    loop = Loop(method, splits, cfg, rank=rank, world_size=2, wrap_model=DistributedDataParallel)
    result: dict = {}
    if poison_rank is None:
        list(loop.epochs())
        result["events"] = events
    else:
        if rank == poison_rank:
            method.backbone.register_forward_hook(lambda m, i, out: out * float("nan"))
        before = {k: v.clone() for k, v in method.named_parameters()}
        try:  # the guard reads its flag at the epoch's end (or every log_every steps)
            list(loop.iterate())
            result["error"] = None
        except NonFiniteLossError as exc:
            result["error"] = str(exc)
        result["unchanged"] = all(torch.equal(v, before[k]) for k, v in method.named_parameters())
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    leave_gloo_group()


def _run_two_ranks(tmp_path, poison_rank):

    import torch.multiprocessing as mp

    rendezvous = str(tmp_path / "rendezvous")  # a file: no TCP port picked in advance
    mp.spawn(_two_rank_worker, args=(rendezvous, str(tmp_path), poison_rank), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def _two_rank_preemption_worker(rank, rendezvous, out_dir):
    """One rank of a 2-process gloo group: an uninterrupted run, then a run that saves on a
    notice mid-epoch 2 (the ranks' RNG and view states gathered, as the Ray worker does),
    then a fresh loop restored from that state. Saves rank 0's results."""

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    gloo_group(rank, 2, rendezvous)
    torch.set_num_threads(1)
    cfg = validate_train_config(
        {
            **TINY,
            "epochs": 3,
            "data": {**TINY["data"], "augment": {"shift": 2, "jitter": 0.1}},
            "backbone": {"name": "mlp", "hidden": [16], "dropout": 0.2},
            "checkpoint": {"preemption_check_steps": 1},
        }
    )
    splits = load_splits(cfg.data, cfg.seed)

    def loop(sink=None) -> Loop:
        seed_everything(cfg.seed)
        method = build_method(cfg, splits.sample_shape, splits.num_classes)
        return Loop(
            method,
            splits,
            cfg,
            rank=rank,
            world_size=2,
            wrap_model=DistributedDataParallel,
            sink=sink,
        )

    straight = loop()
    list(straight.epochs())
    at = straight.steps_per_epoch + 2  # the notice lands inside epoch 2

    class GatherAndSave(NoSink):
        """As the Ray worker's sink: every rank's RNG gathered, rank 0 saves."""

        def preempted(self, loop) -> bool:
            return loop.state.global_step >= at

        def report(self, loop, metrics, kind) -> None:
            rng_states = [None, None]
            dist.all_gather_object(rng_states, loop.rank_state())
            if rank == 0:
                save_state(loop.state_dict(rng_states), out_dir)
            dist.barrier()

    first = loop(GatherAndSave())
    list(first.epochs())
    torch.manual_seed(999 + rank)  # the restore must not depend on this process's RNG
    second = loop()
    second.load_state_dict(load_state(out_dir))
    rest = list(second.epochs())
    if rank == 0:
        torch.save(
            {
                "straight": (straight.method.state_dict(), straight.state.history),
                "resumed": (second.method.state_dict(), second.state.history),
                "rest_epochs": [h["epoch"] for h in rest],
                "at": at,
            },
            f"{out_dir}/preemption.pt",
        )
    leave_gloo_group()


def test_a_mid_epoch_preemption_checkpoint_on_two_ranks_resumes_exactly(tmp_path):
    """2 gloo processes, per-rank augmentation and dropout: a state saved at a notice mid-
    epoch 2 resumes torch.equal to an uninterrupted run, the epoch's loss reduced across
    ranks included."""

    import torch.multiprocessing as mp

    rendezvous = str(tmp_path / "rendezvous")  # a file: no TCP port picked in advance
    mp.spawn(_two_rank_preemption_worker, args=(rendezvous, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "preemption.pt", weights_only=False)
    saved = load_state(tmp_path)
    assert saved["loop"]["epoch"] == 1 and saved["loop"]["step_in_epoch"] == 2
    assert len(saved["rng"]) == 2 and saved["world_size"] == 2
    assert result["rest_epochs"] == [2, 3]
    (expected, straight), (resumed, history) = result["straight"], result["resumed"]
    assert_states_equal(expected, resumed)
    assert history[1]["train_loss"] == pytest.approx(straight[1]["train_loss"], rel=1e-6)
    assert history[-1]["val_loss"] == straight[-1]["val_loss"]


def test_a_nan_loss_on_one_rank_stops_every_rank_before_its_step(tmp_path):
    results = _run_two_ranks(tmp_path, poison_rank=1)
    for result in results:  # rank 0's loss was finite: it must not step on NaN gradients
        assert result["error"] is not None and result["unchanged"]
        assert "at epoch 1, step 1 (global step 1) on rank 1;" in result["error"]
    assert results[1]["error"].startswith("loss became nan")  # the rank that saw it
    assert results[0]["error"].startswith("loss became non-finite")


def test_lifecycle_hooks_run_in_order_on_every_rank(tmp_path):
    rank0, rank1 = (r["events"] for r in _run_two_ranks(tmp_path, poison_rank=None))
    assert (
        rank0
        == rank1
        == [
            "on_training_start[]",
            "on_training_epoch_start[0]",
            "on_training_epoch_end[0]",
            "on_validation_start[1]",
            "on_validation_end[1]",
            "on_training_epoch_start[1]",
            "on_training_epoch_end[1]",
            "on_validation_start[2]",
            "on_validation_end[2]",
            "on_testing_start[]",
            "on_testing_end[]",
            "on_training_end[]",
        ]
    )


def test_dataset_normalisation_reaches_training_evaluation_and_probes():
    """digits lie in [0, 1] (mean about 0.3): with normalize 'dataset' every input the
    network sees, training view or clean evaluation batch, is standardised per channel."""
    loop = _loop(
        {
            "epochs": 1,
            "method": "simclr",
            "data": {
                "name": "digits",
                "batch_size": 64,
                "normalize": "dataset",
                "augment": {"flip": True},
            },
            "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
            "simclr": {"proj_hidden": 8, "proj_dim": 4},
            "eval": {"linear_probe": False},
        }
    )
    seen: list[torch.Tensor] = []
    first = next(m for m in loop.method.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    loop.probe()  # clean inputs of the whole train split
    probed = torch.cat(seen)
    assert abs(float(probed.mean())) < 1e-3 and abs(float(probed.std()) - 1) < 1e-2
    seen.clear()
    next(loop.iterate())  # training views: normalised after augmentation
    assert abs(float(seen[0].mean())) < 0.2 and float(seen[0].min()) < -0.3


def test_per_sample_normalisation_standardises_every_input_by_its_own_statistics():
    """normalize 'sample': each input the network sees, clean evaluation batch or training
    view, has mean 0 and std 1 per channel over its own pixels, whatever its colour cast."""
    loop = _loop(
        {
            "epochs": 1,
            "method": "simclr",
            "data": {
                "name": "synthetic",
                "shape": [3, 16, 16],
                "num_samples": 64,
                "normalize": "sample",
                "augment": {"preset": "simclr"},
            },
            "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
            "simclr": {"proj_hidden": 8, "proj_dim": 4},
            "eval": {"linear_probe": False},
        }
    )
    seen: list[torch.Tensor] = []
    first = next(m for m in loop.method.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(lambda m, i: seen.append(i[0].detach()))
    loop.probe()
    next(loop.iterate())
    assert len(seen) >= 2
    for i, batch in enumerate(seen):  # clean inputs first, then the training views
        per_channel = batch.flatten(2)
        assert per_channel.mean(-1).abs().max() < 1e-4
        # std 1 up to instance norm's eps (1e-5 on the variance), which shrinks the rare
        # near-flat view (a dark, grayscaled crop) a little
        tolerance = 1e-3 if i == 0 else 5e-2
        assert (per_channel.std(-1, unbiased=False) - 1).abs().max() < tolerance
    assert loop.inputs.record["normalize"] == "sample"  # what checkpoints and exports carry


def _digits_loop(normalize="dataset"):
    return _loop(
        {
            "epochs": 1,
            "data": {"name": "digits", "batch_size": 64, "normalize": normalize},
            "backbone": {"name": "mlp", "hidden": [8]},
        }
    )


def test_a_resumed_run_normalises_by_the_statistics_it_was_trained_under():
    """The weights were trained on inputs normalised by the checkpoint's record: a resume on
    data whose statistics have moved since keeps the saved ones (training views, evaluation
    inputs and the record the next checkpoint carries)."""
    first = _digits_loop()
    state = first.state_dict()
    derived = first.inputs.record["normalize"]
    trained_under = {
        "mean": [m + 0.25 for m in derived["mean"]],
        "std": [2.0 * s for s in derived["std"]],
    }
    state["input"] = {**state["input"], "normalize": trained_under}
    second = _digits_loop()
    second.load_state_dict(state)
    x = second.splits.train[0][:8]
    mean, std = (
        torch.tensor(trained_under[k]).view(1, -1, *[1] * (x.dim() - 2)) for k in ("mean", "std")
    )
    torch.testing.assert_close(second.inputs.layout(x), (x - mean) / std)
    assert second.state_dict()["input"]["normalize"] == trained_under


def test_a_resume_on_samples_of_another_shape_is_refused_naming_both():
    first = _digits_loop()
    state = first.state_dict()
    state["input"] = {**state["input"], "shape": [3, 32, 32]}
    with pytest.raises(ConfigError, match=r"trained on \[3, 32, 32\]; resume it with the data"):
        _digits_loop().load_state_dict(state)


def test_training_randomness_resumes_mid_epoch_and_derives_streams_on_a_resize():
    """The view generator: reseeded per (seed, epoch, rank) at an epoch boundary whatever was
    saved; mid-epoch, where it was on the same number of workers; on another number, a
    stream of its own, the same on every restart."""
    one = TrainingRandomness(seed=3, rank=0, world_size=1, device=torch.device("cpu"))
    one.start_epoch(epoch=2, step_in_epoch=0)
    epoch_start = torch.rand(4, generator=one.views)
    state = one.state_dict()
    after_save = torch.rand(4, generator=one.views)

    def restored(world_size, step_in_epoch):
        part = TrainingRandomness(seed=3, rank=0, world_size=world_size, device=torch.device("cpu"))
        part.load_state_dict(state, LoopState(epoch=2, global_step=9, step_in_epoch=step_in_epoch))
        part.start_epoch(epoch=2, step_in_epoch=step_in_epoch)
        return torch.rand(4, generator=part.views)

    assert torch.equal(restored(1, step_in_epoch=3), after_save)
    assert torch.equal(restored(1, step_in_epoch=0), epoch_start)
    resized = restored(2, step_in_epoch=3)
    assert torch.equal(resized, restored(2, step_in_epoch=3))
    assert not torch.equal(resized, after_save) and not torch.equal(resized, epoch_start)


def test_the_online_probe_learns_beside_the_method_without_touching_it(tmp_path):
    """eval.online_linear: the method's weights and buffers after 3 epochs are bitwise those
    of the same run without the probe (detached features, its own RNG), the probe reports
    online_linear_acc every epoch, well above chance, and its state resumes exactly."""
    overrides = {
        "method": "simclr",
        "simclr": {"proj_hidden": 16, "proj_dim": 8},
        "data": {"augment": {"shift": 2, "jitter": 0.1}},
        "backbone": {"name": "mlp", "hidden": [32], "dropout": 0.2},
        "eval": {"every": 0, "linear_probe": False},
    }
    online = {**overrides, "eval": {**overrides["eval"], "online_linear": True}}
    online["eval"]["online_linear_lr"] = 1e-2
    without = _loop(overrides)  # each built right before it runs: dropout draws from the
    list(without.epochs())  # global RNG, which _loop seeds
    straight = _loop(online)
    history = list(straight.epochs())
    assert without.online_probe is None
    assert_states_equal(without.method.state_dict(), straight.method.state_dict())
    accuracies = [h["online_linear_acc"] for h in history]
    chance = 1 / straight.splits.num_classes
    assert len(accuracies) == 3 and accuracies[-1] > 2 * chance, accuracies
    assert "online_linear_acc" not in without.state.history[-1]

    first = _loop(online)
    next(first.epochs())
    save_state(first.state_dict(), tmp_path)
    second = _loop(online)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert_states_equal(straight.online_probe.state_dict(), second.online_probe.state_dict())
    assert [h["online_linear_acc"] for h in second.state.history] == accuracies


def test_dino_prototypes_stay_frozen_in_the_first_epoch_only():
    """The paper's freeze of the head's last layer: through the loop's own steps, epoch 1
    moves the backbone but not the prototypes; epoch 2 moves both. Weight decay would
    move them too, so the optimizer must skip them, not only see zero gradients."""
    loop = _loop(
        {
            "method": "dino",
            "epochs": 2,
            "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
            "data": {
                "shape": [3, 16, 16],
                "num_samples": 64,
                "augment": {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}},
            },
            "optimizer": {"weight_decay": 0.1},
            "dino": {"out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 8},
        }
    )
    method = loop.method
    assert method.freeze_last_layer_epochs == 1  # the paper's default

    def snapshot():
        last = {k: v.clone() for k, v in method.head.last_layer.state_dict().items()}
        return last, [p.clone() for p in method.backbone.parameters()]

    last0, backbone0 = snapshot()
    loop.run_epoch()
    last1, backbone1 = snapshot()
    assert_states_equal(last0, last1)
    assert any(not torch.equal(a, b) for a, b in zip(backbone0, backbone1, strict=True))
    loop.run_epoch()
    last2, _ = snapshot()
    assert any(not torch.equal(last1[k], last2[k]) for k in last1)


def test_swav_prototypes_are_unit_length_and_frozen_in_the_first_epoch_only():
    """SwAV through the loop's own steps, with multi-crop: the prototypes are renormalised
    to unit length before each step; in epoch 1 they learn nothing (weight decay
    included), in epoch 2 they do, and stay unit length."""
    loop = _loop(
        {
            "method": "swav",
            "epochs": 2,
            "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
            "data": {
                "shape": [3, 16, 16],
                "num_samples": 64,
                "augment": {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}},
            },
            "optimizer": {"weight_decay": 0.1},
            "swav": {"proj_hidden": 8, "proj_dim": 8, "num_prototypes": 6},
        }
    )
    prototypes = loop.method.prototypes.weight
    assert loop.method.freeze_prototypes_epochs == 1  # the default
    initial = torch.nn.functional.normalize(prototypes.detach().clone(), dim=1)
    backbone0 = [p.clone() for p in loop.method.backbone.parameters()]
    loop.run_epoch()
    assert torch.allclose(prototypes, initial, atol=1e-6)
    after = loop.method.backbone.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(backbone0, after, strict=True))
    loop.run_epoch()
    assert not torch.allclose(prototypes, initial, atol=1e-4)
    # renormalised before each step: unit length up to the last step's update
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(6), atol=0.05)


SWAV_QUEUE = {
    "method": "swav",
    "epochs": 3,
    "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
    "data": {
        "shape": [3, 16, 16],
        "num_samples": 80,  # 64 for training once val holds 16 out: 2 steps of 32 an epoch
        "batch_size": 32,
        "augment": {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}},
    },
    "swav": {"proj_hidden": 8, "proj_dim": 8, "num_prototypes": 6, "freeze_prototypes_epochs": 0},
}


def test_swav_queue_fills_from_its_epoch_joins_sinkhorn_once_full_and_resumes_exactly(tmp_path):
    """A queue of 64 (two global batches) starting at epoch 2 (index 1): epoch 1 trains as
    without a queue (bit for bit) and leaves it empty; epoch 2 fills it with unit-length
    embeddings without using it (still bit for bit); epoch 3 uses it, so the weights part.
    Saved after epoch 2 and restored in a fresh loop, epoch 3 is the straight run's."""
    queued = {**SWAV_QUEUE, "swav": {**SWAV_QUEUE["swav"], "queue_length": 64}}
    queued["swav"]["queue_start_epoch"] = 1
    plain, straight = _loop(SWAV_QUEUE), _loop(queued)
    assert plain.steps_per_epoch == 2
    for epoch in range(2):
        plain.run_epoch(), straight.run_epoch()
        assert_states_equal(plain.method.state_dict(), straight.method.state_dict())
        assert straight.method.queue.filled == 32 * 2 * epoch
    queue = straight.method.queue.queue.clone()  # the queue is written in place
    assert queue.shape == (2, 64, 8)
    assert torch.allclose(queue.norm(dim=-1), torch.ones(2, 64), atol=1e-5)
    save_state(straight.state_dict(), tmp_path)
    plain.run_epoch(), straight.run_epoch()
    before = [p for p in plain.method.parameters()]
    after = [p for p in straight.method.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not torch.equal(straight.method.queue.queue, queue)  # newest embeddings pushed in

    torch.manual_seed(999)
    resumed = _loop(queued)
    resumed.load_state_dict(load_state(tmp_path))
    assert torch.equal(resumed.method.queue.queue, queue) and resumed.method.queue.filled == 64
    resumed.run_epoch()
    assert_states_equal(straight.method.state_dict(), resumed.method.state_dict())
    assert torch.equal(straight.method.queue.queue, resumed.method.queue.queue)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_dino_head_of_the_image_config_gives_the_teacher_a_signal_to_sharpen(batch_norm):
    """configs/dino_images.yaml's head on its CNN, at initialisation. DINO learns from the
    teacher's centred, sharpened distribution; the centre is the mean teacher output. The
    CNN's pooled ReLU features share one large mean direction, so without BatchNorm in the
    head every sample's bottleneck output points the same way (mean cosine 0.99), centring
    leaves nothing and the targets are uniform (entropy ln K): the demo run's loss sat at
    ln(4096) from epoch 2. With the head's BatchNorm, as the config sets it, the targets
    are sharp per sample."""
    import math

    import torch.nn.functional as F

    from rayssl.config import read_yaml

    raw = read_yaml("configs/dino_images.yaml")
    assert raw["dino"]["batch_norm"] is True  # what the shipped config runs
    raw["dino"]["batch_norm"] = batch_norm
    cfg = validate_train_config(raw)
    seed_everything(0)
    method = build_method(cfg, (3, 32, 32), 10)
    images = torch.randn(256, 3, 32, 32)  # per-image standardised inputs, as normalize: sample
    with torch.no_grad():
        features = method.backbone_momentum(images).flatten(1)
        z = F.normalize(method.head_momentum.mlp(features), dim=-1)
        logits = method.head_momentum(features)
    mean_cosine = float((z @ F.normalize(z.mean(0), dim=0)).mean())
    targets = F.softmax((logits - logits.mean(0)) / cfg.dino.teacher_temp, dim=-1)
    entropy = float(-(targets * targets.clamp_min(1e-12).log()).sum(-1).mean())
    uniform = math.log(cfg.dino.out_dim)
    if batch_norm:
        assert mean_cosine < 0.5 and entropy < uniform - 1.0, (mean_cosine, entropy)
    else:
        assert mean_cosine > 0.9 and entropy > uniform - 0.2, (mean_cosine, entropy)


def test_weight_decay_schedule_through_the_loop_resumes_exactly(tmp_path):
    """optimizer.weight_decay_end: the loop's steps walk the decay from 0.04 to 0.4 (the
    last step uses 0.4), it changes the weights against a constant decay, and a run saved
    after epoch 1 and resumed ends torch.equal to the straight run."""
    scheduled = {"epochs": 2, "optimizer": {"weight_decay": 0.04, "weight_decay_end": 0.4}}
    straight = _loop(scheduled)
    list(straight.epochs())
    assert straight.step.optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.4)
    constant = _loop({"epochs": 2, "optimizer": {"weight_decay": 0.04}})
    list(constant.epochs())
    assert constant.step.optimizer.param_groups[0]["weight_decay"] == 0.04
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            straight.method.state_dict().values(),
            constant.method.state_dict().values(),
            strict=True,
        )
    )

    first = _loop(scheduled)
    next(first.epochs())
    save_state(first.state_dict(), tmp_path)
    second = _loop(scheduled)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert_states_equal(straight.method.state_dict(), second.method.state_dict())
    assert_states_equal(straight.step.optimizer.state_dict(), second.step.optimizer.state_dict())


DINO_SMALL = {
    "method": "dino",
    "epochs": 2,
    "backbone": {"name": "cnn2d", "width": 4, "depth": 2},
    "data": {
        "shape": [3, 16, 16],
        "num_samples": 64,
        "augment": {"preset": "byol", "image": {"local_crops": {"number": 2, "size": 8}}},
    },
    "optimizer": {"weight_decay": 0.04, "weight_decay_end": 0.4},
    "dino": {"out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 8},
}


def test_dino_decays_weights_only_as_its_code_does():
    """Audit 35.19: DINO had one param group, so the 0.04 -> 0.4 weight-decay schedule
    reached biases and norm parameters; DINO's code keeps them at 0."""
    loop = _loop(DINO_SMALL)
    list(loop.epochs())
    names = {id(p): n for n, p in loop.method.named_parameters()}
    decayed, exempt = loop.step.optimizer.param_groups
    assert decayed["weight_decay"] == pytest.approx(0.4)  # the schedule's end
    assert exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 and not names[id(p)].endswith(".bias") for p in decayed["params"])
    assert exempt["params"] and all(
        p.ndim == 1 or names[id(p)].endswith(".bias") for p in exempt["params"]
    )
    trainable = [p for p in loop.method.parameters() if p.requires_grad]
    backbone_and_head = {
        id(p) for m in (loop.method.backbone, loop.method.head) for p in m.parameters()
    }
    assert {id(p) for p in decayed["params"] + exempt["params"]} == {
        id(p) for p in trainable if id(p) in backbone_and_head
    }


def test_a_dino_optimizer_state_of_one_group_resumes_in_two():
    """A checkpoint written when DINO had one param group: each parameter's AdamW moments
    go back to that parameter, and the norm parameters stop decaying."""
    loop = _loop(DINO_SMALL)
    method = loop.method
    flat = [p for m in (method.backbone, method.head) for p in m.parameters() if p.requires_grad]
    old = torch.optim.AdamW(flat, lr=1e-3, weight_decay=0.04)
    for p in flat:
        p.grad = torch.randn_like(p)
    old.step()
    old_state = old.state_dict()
    loop.step.optimizer.load_state_dict(method.upgrade_optimizer_state(old_state))
    moments = {id(p): old.state[p]["exp_avg"] for p in flat}
    for group in loop.step.optimizer.param_groups:
        for p in group["params"]:
            assert torch.equal(loop.step.optimizer.state[p]["exp_avg"], moments[id(p)])
    assert [g["weight_decay"] for g in loop.step.optimizer.param_groups] == [0.04, 0.0]
