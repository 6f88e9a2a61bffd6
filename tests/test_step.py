"""The training step never waits on the device: every read of a value back to the host is
counted with a torch dispatch mode on the CPU (where each one would be a device sync on an
accelerator), and none may happen between log intervals."""

from __future__ import annotations

import pytest
import torch
from conftest import one_process_loop as _loop
from torch.utils._python_dispatch import TorchDispatchMode

READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(t), int(t), .tolist()
    torch.ops.aten.is_nonzero.default,  # bool(t), if t:
    torch.ops.aten.item.default,
}
HEADS = {"proj_hidden": 16, "proj_dim": 8}
METHODS = {
    "supervised": {},
    "simclr": {"simclr": HEADS, "eval": {"online_linear": True}},
    "byol": {"byol": {**HEADS, "pred_hidden": 16}},
    "dino": {"dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}},
    "barlow_twins": {"barlow_twins": HEADS, "optimizer": {"name": "lars", "lr": 0.1}},
    "swav": {"swav": {**HEADS, "num_prototypes": 10}},
    "nnclr": {"nnclr": {**HEADS, "pred_hidden": 16, "queue_length": 64}},
}


class ScalarReads(TorchDispatchMode):
    """Records the global step at which each read back to the host happens."""

    def __init__(self, loop):
        super().__init__()
        self.loop, self.at = loop, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.at.append(self.loop.state.global_step)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", list(METHODS))
def test_the_step_reads_nothing_back_between_log_intervals(method):
    """10 steps at log_every 4: the non-finite guard reads its flag after steps 4 and 8 and
    at the epoch's end; the loss, its running mean, the guard, clipping, the optimizer
    (fused, or LARS), the LR schedule, the method's hooks and the online probe read
    nothing back in between."""
    loop = _loop(
        {
            "method": method,
            "epochs": 1,
            "grad_clip": 1.0,
            "data": {"num_samples": 400, "val_fraction": 0.2},
            "performance": {"log_every": 4},
            **METHODS[method],
        }
    )
    assert loop.steps_per_epoch == 10  # 320 training samples, batches of 32
    loop.start_epoch()
    with ScalarReads(loop) as reads:
        stats = list(loop.iterate())
    assert [s.iteration for s in stats] == list(range(1, 11))
    assert set(reads.at) <= {4, 8, 10}, reads.at
    assert len(reads.at) <= 3 * 2  # one flag per check (bool() may dispatch twice)
    assert stats[-1].loss == pytest.approx(float(stats[-1].loss_tensor))  # read on demand


def _overflow_at(loop, steps: set[int], rank_only: int | None = None):
    """Multiply one parameter's gradient by inf at the given global steps (1-based)."""
    weight = next(p for p in loop.method.parameters() if p.ndim > 1)

    def hook(grad):
        return grad * float("inf") if loop.state.global_step + 1 in steps else grad

    if rank_only is None or loop.rank == rank_only:
        weight.register_hook(hook)


def test_fp16_skips_an_overflowing_step_lowers_the_scale_and_trains_on():
    """performance.amp fp16: the forward runs in float16 under a gradient scaler; a step
    whose gradients overflow changes no weight and no optimizer state, halves the scale,
    counts in `skipped_steps`, and training goes on (no NonFiniteLossError)."""
    loop = _loop({"epochs": 1, "performance": {"amp": "fp16"}})
    assert loop.step.scaler is not None
    _overflow_at(loop, {3})
    loop.start_epoch()
    batches = iter(loop.iterate())
    next(batches), next(batches)  # steps 1 and 2
    before = {k: v.clone() for k, v in loop.method.state_dict().items()}
    opt_before = {k: float(s["step"]) for k, s in enumerate(loop.optimizer.state.values())}
    scale = loop.step.scaler.get_scale()
    next(batches)  # step 3 overflows
    after = loop.method.state_dict()
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # saw the forward
    changed = [
        k for k in before if not k.endswith(buffers) and not torch.equal(before[k], after[k])
    ]
    assert changed == []  # weights untouched
    assert [float(s["step"]) for s in loop.optimizer.state.values()] == list(opt_before.values())
    assert loop.step.scaler.get_scale() == scale / 2
    rest = list(batches)
    assert rest and loop.state.global_step == loop.steps_per_epoch
    assert float(loop.step.skipped) == 1


def test_fp16_epochs_report_skipped_steps_and_resume_exactly_with_the_scale(tmp_path):
    """The scaler's state is in the checkpoint: a run stopped after epoch 1 and resumed
    equals an uninterrupted one bitwise, scale included."""
    from conftest import assert_states_equal

    from rayssl.runs.state import load_state, save_state

    overrides = {"epochs": 2, "performance": {"amp": "fp16"}}
    straight = _loop(overrides)
    _overflow_at(straight, {2})
    history = list(straight.epochs())
    assert [h["skipped_steps"] for h in history] == [1, 0]  # per epoch
    first = _loop(overrides)
    _overflow_at(first, {2})
    next(first.epochs())
    save_state(first.state_dict(), tmp_path)
    assert "grad_scaler" in load_state(tmp_path)
    second = _loop(overrides)
    second.load_state_dict(load_state(tmp_path))
    list(second.epochs())
    assert_states_equal(straight.state_dict()["model"], second.state_dict()["model"])
    assert straight.step.scaler.get_scale() == second.step.scaler.get_scale()


def _fp16_rank(rank, rendezvous, out_dir):
    """One rank of a 2-process gloo group: fp16 with DDP; rank 1's gradient overflows at
    step 2 only."""
    from conftest import TINY, gloo_group, leave_gloo_group
    from torch.nn.parallel import DistributedDataParallel

    from rayssl.config import validate_train_config
    from rayssl.data import load_splits
    from rayssl.engine import Loop
    from rayssl.methods.registry import build_method
    from rayssl.seeds import seed_everything

    gloo_group(rank, 2, rendezvous)
    torch.set_num_threads(1)
    cfg = validate_train_config({**TINY, "epochs": 1, "performance": {"amp": "fp16"}})
    splits = load_splits(cfg.data, cfg.seed)
    seed_everything(cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    loop = Loop(method, splits, cfg, rank=rank, world_size=2, wrap_model=DistributedDataParallel)
    _overflow_at(loop, {2}, rank_only=1)
    loop.start_epoch()
    steps = iter(loop.iterate())
    next(steps)
    before = {k: v.clone() for k, v in method.named_parameters()}
    scale = loop.step.scaler.get_scale()
    next(steps)
    result = {
        "unchanged": all(torch.equal(v, before[k]) for k, v in method.named_parameters()),
        "scale": (scale, loop.step.scaler.get_scale()),
    }
    list(steps)
    result["weights"] = {k: v.detach().clone() for k, v in method.named_parameters()}
    torch.save(result, f"{out_dir}/fp16_rank{rank}.pt")
    leave_gloo_group()


def test_fp16_an_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fp16_rank, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"fp16_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["unchanged"] and r1["unchanged"]  # rank 0's own gradients were finite
    assert r0["scale"] == r1["scale"] and r0["scale"][1] == r0["scale"][0] / 2
    for key, value in r0["weights"].items():  # the ranks trained on, in step
        assert torch.equal(value, r1["weights"][key]), key


def _compiler() -> str | None:
    import shutil

    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.skipif(_compiler() is None, reason="inductor needs a C++ compiler on the CPU")
def test_the_inductor_compiled_step_trains_like_the_eager_one():
    """performance.compile with inductor, the default backend (it generates and builds C++
    on the CPU): the same training as eager within tolerance, and the compiled step reads
    nothing back between log intervals either."""
    overrides = {"epochs": 2, "data": {"num_samples": 400, "val_fraction": 0.2}}
    eager = _loop(overrides)
    compiled = _loop({**overrides, "performance": {"compile": True, "log_every": 4}})
    assert type(compiled.model).__name__ == "OptimizedModule"
    a = list(eager.epochs())
    epochs = compiled.epochs()
    with ScalarReads(compiled) as reads:  # the first epoch, its evaluation at its end too
        b = [next(epochs)]
    b += list(epochs)
    assert set(reads.at) <= {4, 8, 10}, reads.at
    assert a[-1]["train_loss"] == pytest.approx(b[-1]["train_loss"], rel=1e-4)
    compiled_state = compiled.method.state_dict()
    for key, x in eager.method.state_dict().items():
        y = compiled_state[key]
        assert torch.allclose(x.float(), y.float(), rtol=1e-4, atol=1e-5), key


@pytest.mark.parametrize("mode", ["global", "per_parameter"])
def test_grad_clip_mode_bounds_the_whole_step_or_each_parameters_own(mode):
    """SGD at lr 1 without momentum moves each parameter by its clipped gradient: with
    `global` all of them together by at most the clip, with `per_parameter` (DINO's) each
    one by at most the clip on its own, so together by more."""
    clip = 1e-3
    loop = _loop(
        {
            "optimizer": {"name": "sgd", "lr": 1.0, "momentum": 0.0},
            "lr_scheduler": {"name": "none"},
            "grad_clip": clip,
            "grad_clip_mode": mode,
            "backbone": {"name": "mlp", "hidden": [16]},
        }
    )
    before = [p.detach().clone() for p in loop.method.parameters()]
    next(loop.iterate())
    after = list(loop.method.parameters())
    moves = [float((p.detach() - b).norm()) for p, b in zip(after, before, strict=True)]
    total = sum(m * m for m in moves) ** 0.5
    if mode == "global":
        assert total == pytest.approx(clip, rel=1e-3)
    else:
        assert max(moves) == pytest.approx(clip, rel=1e-3) and total > 1.5 * clip
