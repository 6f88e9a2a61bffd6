"""What runs on every Ray Train worker (and in Ray Train's local mode): build the loop, let
it restore and train, and report each epoch to Ray Train with a checkpoint."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from rayssl.cluster.faults import after_epoch_hook
from rayssl.cluster.quiet import report_logs
from rayssl.cluster.records import progress_line
from rayssl.cluster.trainer import WorkerArgs
from rayssl.config import TrainConfig
from rayssl.data import Splits
from rayssl.engine import Loop, build_loop
from rayssl.engine.loop import ReportKind
from rayssl.runs.state import load_state, save_state
from rayssl.runs.storage import Storage


def run_worker(config: dict[str, Any]) -> Loop:
    """Build, restore, train, report every epoch; return the finished loop (for wrappers
    that inspect a worker's final state)."""
    import ray.train

    args: WorkerArgs = config["args"]
    sink = RayTrainSink(args)
    loop = build_worker_loop(args, sink)
    # 8. Ray Train's checkpoint of this run (a restart after a failure or a resize); else a
    # state to start from that Ray never registered: PBT's donor, or a --resume of a
    # checkpoint that rayssl's local mode wrote
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and _name(checkpoint.path) == args.skip_checkpoint:
        checkpoint = None  # damaged: the driver chose an older one (initial_checkpoint)
    restored, donor = None, False
    if checkpoint is not None or args.initial_checkpoint is not None:
        with (checkpoint or args.initial_checkpoint).as_directory() as directory:
            restored = load_state(directory)
        donor = checkpoint is None and not args.initial_is_resume
    loop.launched_at = args.launched_at
    loop.fit(restored, adopt=donor, resumed=not donor)
    return loop


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def build_worker_loop(args: WorkerArgs, sink: RayTrainSink | None = None) -> Loop:
    """This Ray Train worker's `Loop`: its rank, device and DDP wrapping from Ray Train."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(args.config)
    report_logs(local=cfg.num_workers == 0)
    context = ray.train.get_context()  # 5. this worker's rank in the group
    splits = args.splits
    if not isinstance(splits, Splits):  # an object-store reference (workers), else local mode
        splits = ray.get(splits)
    return build_loop(
        cfg,
        splits,
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=ray.train.torch.prepare_model,  # 6. DDP, as Ray Train sets it up
        # 7. this worker's shard of the streamed training data
        train_shard=ray.train.get_dataset_shard("train") if splits.stream else None,
        sink=sink,
    )


class RayTrainSink:
    """Reports to Ray Train: every rank reports, rank 0 attaches the checkpoint (in local
    mode rayssl writes the checkpoint itself, Ray's local mode would keep it in memory).
    After each epoch, rank 0 also prints the progress line and logs TensorBoard / MLflow."""

    def __init__(self, args: WorkerArgs):
        self.args = args
        self.curves = self.mlflow_run = None
        self.started = time.perf_counter()
        self.first_epoch = 0

    def start(self, loop: Loop) -> None:
        """Rank 0's TensorBoard and MLflow, caught up with the restored history."""
        self.started, self.first_epoch = time.perf_counter(), loop.state.epoch
        if loop.rank != 0 or not self.args.run_dir:
            return
        from rayssl.runs.tracking import MLflowRun, TensorBoard

        self.curves = TensorBoard(self.args.run_dir, loop.state.history)
        if self.args.mlflow:
            self.mlflow_run = MLflowRun(*self.args.mlflow)
            self.mlflow_run.sync(loop.state.history)  # epochs an earlier attempt did not log

    def finish(self, loop: Loop) -> None:
        if self.curves is not None:
            self.curves.close()

    def preempted(self, loop: Loop) -> bool:
        import ray.train

        if not self.args.preemption_checkpoints or self.args.local_run is not None:
            return False
        return ray.train.get_preemption_info() is not None  # 10. a node of this run goes away

    def report(self, loop: Loop, metrics: dict[str, float], kind: ReportKind) -> None:
        import ray.train

        if kind == "already_over":
            ray.train.report(metrics)
            return
        rng_states = _gather(loop.rank_state(), loop.world_size)
        if self.args.local_run is not None:
            uri, run = self.args.local_run
            state = loop.state_dict(rng_states)
            Storage(uri).save_local_checkpoint(run, state, loop.cfg.checkpoint.num_to_keep)
            ray.train.report(metrics)  # 9. local mode: metrics only, rayssl saved the state
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if loop.rank == 0:
                    save_state(loop.state_dict(rng_states), tmp)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)  # 9. with the checkpoint
        if kind == "epoch":
            self._after_epoch(loop, metrics)

    def _after_epoch(self, loop: Loop, metrics: dict[str, float]) -> None:
        done = loop.state.epoch - self.first_epoch
        if loop.rank == 0:
            print(progress_line(metrics, loop.cfg, done, self.started), flush=True)
        if self.curves is not None:  # after the checkpoint: a restart rewrites from its history
            self.curves.log(metrics)
        if self.mlflow_run is not None:
            self.mlflow_run.sync(loop.state.history)
        after_epoch_hook(self.args, loop.state.epoch, loop.rank)  # TEST HOOK: no-op unless asked


def _gather(obj: Any, world_size: int) -> list[Any]:
    """Every rank's `obj`, on every rank."""
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
