"""What runs on every Ray Train worker (and in Ray Train's local mode): build the loop, let
it restore and train, and report each epoch to Ray Train with a checkpoint."""

from __future__ import annotations

import time
from typing import Any

from rayssl import IMPORTED_AT, distributed
from rayssl.cluster.entry import WorkerArgs
from rayssl.cluster.faults import after_epoch_hook
from rayssl.cluster.quiet import report_logs
from rayssl.cluster.records import progress_line
from rayssl.config import TrainConfig
from rayssl.data import Splits
from rayssl.engine import Loop, build_loop
from rayssl.engine.checkpoint import restore_and_fit
from rayssl.engine.sinks import CheckpointSink, state_directory
from rayssl.runs.storage import Storage


def run_worker(config: dict[str, Any]) -> Loop:
    """Build, restore, train, report every epoch; return the finished loop (for wrappers
    that inspect a worker's final state)."""
    import ray.train

    entered = time.time()
    args: WorkerArgs = config["args"]
    sink = RayTrainSink(args)
    loop, data_ready = build_worker_loop(args, sink)
    loop.marks.update(args.marks)
    loop.marks.update(
        worker_imported=max(IMPORTED_AT, args.marks.get("fit_called", 0.0)),
        worker_entered=entered,
        data_ready=data_ready,
        built=time.time(),
    )
    # 8. Ray Train's checkpoint of this run (a restart after a failure or a resize); else a
    # state to start from that Ray never registered: PBT's donor, or a --resume of a
    # checkpoint that rayssl's local mode wrote
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and _name(checkpoint.path) == args.skip_checkpoint:
        checkpoint = None  # damaged: the driver chose an older one (initial_checkpoint)
    start = checkpoint or args.initial_checkpoint
    if start is None:
        restore_and_fit(loop, None)
        return loop
    donor = checkpoint is None and not args.initial_is_resume
    with start.as_directory() as directory:
        restore_and_fit(loop, directory, adopt=donor, resumed=not donor)
    return loop


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def build_worker_loop(args: WorkerArgs, sink: RayTrainSink | None = None) -> tuple[Loop, float]:
    """This Ray Train worker's `Loop` (its rank, device and DDP wrapping from Ray Train), and
    when its data was in hand (time.time())."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(args.config)
    report_logs(local=cfg.num_workers == 0)
    context = ray.train.get_context()  # 5. this worker's rank in the group
    splits = args.splits
    if not isinstance(splits, Splits):  # an object-store reference (workers), else local mode
        splits = ray.get(splits)
    data_ready = time.time()
    loop = build_loop(
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
    return loop, data_ready


class RayTrainSink(CheckpointSink):
    """Reports to Ray Train: every rank reports, rank 0 attaches the checkpoint (in local
    mode rayssl writes the checkpoint itself, Ray's local mode would keep it in memory).
    After each epoch, rank 0 also prints the progress line and logs TensorBoard, MLflow and
    Weights & Biases."""

    def __init__(self, args: WorkerArgs):
        self.args = args
        self.curves = self.mlflow_run = self.wandb_run = None
        self.started = time.perf_counter()
        self.first_epoch = 0

    def start(self, loop: Loop) -> None:
        """Rank 0's TensorBoard, MLflow and W&B runs, caught up with the restored history."""
        self.started, self.first_epoch = time.perf_counter(), loop.state.epoch
        if loop.rank != 0 or not self.args.run_dir:
            return
        from rayssl.runs.tracking import MLflowRun, TensorBoard

        self.curves = TensorBoard(self.args.run_dir, loop.state.history)
        if self.args.mlflow:
            self.mlflow_run = MLflowRun(*self.args.mlflow)
            self.mlflow_run.sync(loop.state.history)  # epochs an earlier attempt did not log
        if self.args.wandb:
            from rayssl.runs.tracking import WandbRun

            history = loop.state.history
            self.wandb_run = WandbRun(self.args.wandb, self.args.run_dir, self.args.config, history)

    def finish(self, loop: Loop) -> None:
        if self.curves is not None:
            self.curves.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    def preempted(self, loop: Loop) -> bool:
        import ray.train

        if not self.args.preemption_checkpoints or self.args.local_run is not None:
            return False
        return ray.train.get_preemption_info() is not None  # 10. a node of this run goes away

    def checkpoint_state(self, loop: Loop) -> dict[str, Any] | None:
        """Every rank's random state gathered; the whole state on rank 0 only."""
        rng_states = distributed.all_gather_object(loop.rank_state())
        return loop.state_dict(rng_states) if loop.rank == 0 else None

    def send(self, loop: Loop, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        if self.args.local_run is not None and state is not None:
            uri, run = self.args.local_run
            Storage(uri).save_local_checkpoint(run, state, loop.cfg.checkpoint.num_to_keep)
            state = None  # 9. local mode: metrics only, rayssl saved the state
        if state is None:
            ray.train.report(metrics)  # 9. a rank without the checkpoint, or a run's end again
            return
        with state_directory(state) as tmp:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))  # 9.

    def after_epoch(self, loop: Loop, metrics: dict[str, float]) -> None:
        done = loop.state.epoch - self.first_epoch
        if loop.rank == 0:
            print(progress_line(metrics, loop.cfg, done, self.started), flush=True)
        if self.curves is not None:  # after the checkpoint: a restart rewrites from its history
            self.curves.log(metrics)
        if self.mlflow_run is not None:
            self.mlflow_run.sync(loop.state.history)
        if self.wandb_run is not None:
            self.wandb_run.sync(loop.state.history)
        after_epoch_hook(self.args, loop.state.epoch, loop.rank)  # TEST HOOK: no-op unless asked
