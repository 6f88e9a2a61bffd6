"""What one trial runs: the loop in the trial's own process (1 worker), or a Ray Train run
(more workers; PBT's checkpoints handed through). The numbered comments mark each call
into Ray Tune."""

from __future__ import annotations

import time
from typing import Any

from rayssl.cluster.quiet import trial_logs
from rayssl.config import TrainConfig
from rayssl.engine import build_loop
from rayssl.engine.checkpoint import restore_and_fit
from rayssl.engine.sinks import CheckpointSink, state_directory
from rayssl.tune.search import trial_config


def run_trial_in_process(config: dict[str, Any]) -> None:
    """Tune function trainable of a 1-worker trial: the loop in this process, a report and
    a checkpoint to Tune every epoch. A restored checkpoint may be another trial's (PBT's
    exploit): its state continues under this trial's values (`adopt_hyperparameters`)."""
    started = time.time()
    import ray
    import ray.tune
    import torch

    trial_logs()
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = TrainConfig.model_validate(trial_config(config["_base"], params))
    splits = ray.get(config["_splits"])
    shard = None
    if splits.stream is not None:  # streamed data: this trial streams every row itself
        _data_in_this_trials_bundle()
        shard = splits.stream.dataset(cfg.data.read_concurrency).iterator()
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    loop = build_loop(cfg, splits, device=device, train_shard=shard, sink=TuneSink())
    loop.marks["launched"] = started  # start_to_first_step_s: this trial's own overhead
    checkpoint = ray.tune.get_checkpoint()  # 1. Tune's: this trial's, or PBT's donor
    if checkpoint is None:
        restore_and_fit(loop, None)
        return
    # adopting is a no-op for the trial's own state (the same hyperparameters)
    with checkpoint.as_directory() as directory:
        restore_and_fit(loop, directory, adopt=True)


class TuneSink(CheckpointSink):
    """Reports each epoch to Tune with a checkpoint (no preemption checkpoints: a trial's
    reports are epochs, and ASHA and PBT act on each)."""

    def send(self, loop, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.tune

        if state is None:  # restored after its end: report it again
            ray.tune.report(metrics)
            return
        with state_directory(state) as tmp:
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(tmp))  # 2.


def _data_in_this_trials_bundle() -> None:
    """Ray Data schedules its tasks with an explicit strategy ("SPREAD"), so they leave the
    trial's placement group and need CPUs no trial holds. Point them at the trial's own
    group (the data bundle `tune` reserves), with Ray Data's public DataContext."""
    import ray.data
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = get_current_placement_group()
    if group is None:
        return
    strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
    context = ray.data.DataContext.get_current()
    context.scheduling_strategy = context.scheduling_strategy_large_args = strategy


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable of a multi-worker trial: one Ray Train run of the loop,
    reporting every epoch."""
    started = time.time()
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayssl.cluster.trainer import build_trainer
    from rayssl.runs.storage import Storage

    params = {k: v for k, v in config.items() if not k.startswith("_")}
    cfg = TrainConfig.model_validate(trial_config(config["_base"], params))
    context = ray.tune.get_context()
    storage = Storage(config["_trials_storage"])
    run = f"{context.get_trial_name()}"
    stream = ray.get(config["_splits"]).stream
    if config.get("_pbt"):
        _run_checkpointed_trial(cfg, config["_splits"], storage, run, stream)
        return
    trainer = build_trainer(
        cfg,
        config["_splits"],
        storage,
        run,
        callbacks=[TuneReportCallback()],
        stream=stream,
        marks={"launched": started},
    )
    trainer.fit()


def _run_checkpointed_trial(cfg: TrainConfig, splits_ref, storage, trial: str, stream) -> None:
    """A trial that hands its checkpoints to Tune, as PBT needs: PBT restarts a weak trial
    from a strong trial's Tune checkpoint with perturbed values. Each (re)start is a fresh
    Ray Train run that begins from that checkpoint; the worker's reports are forwarded to
    Tune together with their checkpoints by this function's own thread."""
    import threading

    import ray.tune
    from ray.train import UserCallback
    from ray.util.queue import Queue

    from rayssl.cluster.trainer import build_trainer

    class ForwardReports(UserCallback):
        """Runs in the Train controller: pass each report and its checkpoint to the trial."""

        def __init__(self, queue: Queue):
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint) -> None:
            self.queue.put((dict(metrics[0]), checkpoint))

    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = build_trainer(
        cfg,
        splits_ref,
        storage,
        f"{trial}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000}",
        callbacks=[ForwardReports(reports)],
        stream=stream,
        initial_checkpoint=ray.tune.get_checkpoint(),
    )
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # re-raised in the trial's thread below
            failure.append(exc)
        finally:
            reports.put(None)

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while (item := reports.get()) is not None:
        metrics, checkpoint = item
        if checkpoint is not None:  # Tune keeps its own copy, which PBT hands to others
            checkpoint = ray.tune.Checkpoint(checkpoint.path, checkpoint.filesystem)
        ray.tune.report(metrics, checkpoint=checkpoint)
    thread.join()
    if failure:
        raise failure[0]
