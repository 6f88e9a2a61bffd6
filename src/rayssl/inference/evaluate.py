"""`rayssl eval`: the kNN and linear probes of a saved run's frozen backbone, in this
process, each split read in batches (a split in storage streams through Ray Data)."""

from __future__ import annotations

import os
import tempfile

import torch

NO_PROBE_LABELS = (
    "the training images have no labels (a flat folder) and neither data.val_path nor "
    "data.test_path gives labeled images, so there is nothing to fit kNN / linear probes on"
)
NO_PROBE_SCORE_SPLIT = (
    "there is no split to score kNN / linear probes on (data.val_fraction 0 and no "
    "data.val_path or data.test_path); give one of them"
)
NO_PROBE_ONE_CLASS = (
    "the data has one class, and a probe needs at least 2 to tell apart; give labeled "
    "data of 2 or more classes (an image folder: one subfolder per class)"
)


def no_probe_reason(splits) -> str:
    """Why `splits.probe_sets()` is None: one class, no labels, or nothing to score on."""
    if splits.num_classes < 2 and splits.labeled:
        return NO_PROBE_ONE_CLASS
    return NO_PROBE_SCORE_SPLIT if splits.labeled else NO_PROBE_LABELS


def evaluate_checkpoint(
    path: str,
    knn_k: int | None = None,
    trust_import_paths: bool = False,
    workers: int = 0,
    use_gpu: bool = False,
) -> dict[str, float]:
    """Rebuild the method of a run directory's newest checkpoint (or of a checkpoint
    directory) from its saved config, load the weights, and probe its backbone. A config
    naming its method, backbone or head by import path is rebuilt only with
    `trust_import_paths` (that imports and calls what the file names).

    `workers` 0: in this process. `workers` N: on N Ray Train workers (each a CPU, or a GPU
    with `use_gpu`), each embedding its share of both splits, the probes across them as
    in a run (`engine/evaluation.py`), so no process holds a whole split's features."""
    from rayssl.config import ConfigError
    from rayssl.data import load_splits
    from rayssl.data.stored import StoredSplit

    state, where = read_run_state(path, "rayssl eval's PATH")
    cfg = saved_config(state, shown_as(where), trust_import_paths)
    splits = load_splits(cfg.data, cfg.seed)
    sets = splits.probe_sets(cfg.seed, cfg.eval.probe_train_limit)
    if sets is None:
        raise ConfigError(f"'{path}': {no_probe_reason(splits)}")
    weights = {k: state[k] for k in ("model", "method_extra")}
    job = {"config": cfg.record(), "splits": splits, "state": weights, "knn_k": knn_k}
    if workers == 0:
        if any(isinstance(split, StoredSplit) for split in sets):  # read through Ray Data
            from rayssl.cluster.start import init_ray

            init_ray(None)
        from rayssl.progress import bar

        return probe_checkpoint(job, torch.device("cpu"), 0, 1, progress=bar)
    return _on_workers(job, workers, use_gpu)


def probe_checkpoint(
    job: dict, device: torch.device, rank: int, world: int, progress=None
) -> dict[str, float]:
    """The probes of `job`'s checkpoint on this rank's share of its splits (every rank of
    `world` calls it; the probes reduce across them). `progress`: see `probe_splits`."""
    from rayssl.config import validate_train_config
    from rayssl.engine.evaluation import probe_splits
    from rayssl.engine.features import in_inference_layout
    from rayssl.engine.inputs import Inputs

    cfg, splits = validate_train_config(job["config"]), job["splits"]
    method = trained_method(cfg, splits, job["state"]).to(device)
    method, channels_last = in_inference_layout(method, splits.sample_shape)  # as embed's
    if channels_last:  # the batches too (Inputs lays them out as the run's config says)
        layout = cfg.performance.model_copy(update={"channels_last": True})
        cfg = cfg.model_copy(update={"performance": layout})
    inputs = Inputs(method, cfg, splits)
    return probe_splits(inputs, cfg, splits, device, rank, world, job["knn_k"], progress)


def _probe_worker(config: dict) -> None:
    """A Ray Train worker of `rayssl eval --workers`: its share, then rank 0 posts the
    metrics (Ray Train 2 keeps reported metrics only beside a checkpoint; there is none)."""
    import ray
    import ray.train
    import ray.train.torch

    from rayssl.progress import reporter

    context = ray.train.get_context()
    torch.set_num_threads(max(1, int(config["threads"])))
    job = ray.get(config["job"])
    rank, world = context.get_world_rank(), context.get_world_size()
    # rank 0's share drawn as the driver's bar, where the driver has a terminal
    shown = config.get("progress") is not None and rank == 0
    progress = reporter(config["progress"]) if shown else None
    metrics = probe_checkpoint(job, ray.train.torch.get_device(), rank, world, progress)
    if rank == 0:
        config["results"].put(metrics)


def _on_workers(job: dict, workers: int, use_gpu: bool) -> dict[str, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from rayssl import progress
    from rayssl.cluster.records import worker_error
    from rayssl.cluster.start import RAY_TRAIN_ENV, allocator_env, init_ray
    from rayssl.config import ConfigError

    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    init_ray(None, min_cpus=workers + 1)  # + Ray Data's read and decode tasks
    results = Queue(maxsize=1, actor_options={"num_cpus": 0})
    bars = Queue(actor_options={"num_cpus": 0}) if progress.shown() else None
    with tempfile.TemporaryDirectory(prefix="rayssl-eval-") as scratch:  # Ray Train's records
        trainer = TorchTrainer(
            _probe_worker,
            train_loop_config={
                "job": ray.put(job),
                "results": results,
                "progress": bars,
                "threads": 1,
            },  # fmt: skip
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}
            ),
            run_config=RunConfig(
                name="rayssl-eval",
                storage_path=scratch,
                worker_runtime_env={"env_vars": allocator_env()},  # as training's workers
            ),
        )
        try:
            with progress.relayed(bars):
                trainer.fit()
        except TrainingFailedError as exc:  # one worker's own line, without Ray's traceback
            kind, _, text = worker_error(exc).partition(": ")
            if kind in ("ImageDecodeError", "ConfigError"):  # the data's fault: exit 2
                raise ConfigError(text) from None
            raise RuntimeError(f"{kind}: {text}") from None
    return results.get(timeout=60)


def read_run_state(path: str, field_name: str) -> tuple[dict, dict[str, str]]:
    """The state behind `path` (`runs/resolve.py`: a checkpoint folder, a run folder's newest
    checkpoint, or a run's name; local or at a URI) and where it was found."""
    from rayssl.runs.pretrained import read_state
    from rayssl.runs.state import STATE_FILE

    return read_state(path, field_name, STATE_FILE)


def shown_as(where: dict[str, str]) -> str:
    """How to name the checkpoint `read_run_state` found, in a message."""
    return "/".join(filter(None, (where.get("run"), where["checkpoint"])))


def saved_config(state: dict, shown: str, trust_import_paths: bool):
    """The TrainConfig a saved run trained with (options added since at the value it
    trained with); a method, backbone or head named by import path only when trusted."""
    from rayssl.config import validate_train_config
    from rayssl.runs.pretrained import refuse_import_paths

    saved = state["config"]
    names = [saved.get("method"), *(saved.get(k, {}).get("name") for k in ("backbone", "head"))]
    refuse_import_paths(names, shown, trust_import_paths)
    return validate_train_config(saved).with_older_options(saved)


def trained_method(cfg, splits, state: dict):
    """The method of a saved run, its weights (and LFR's target selection) loaded, in eval
    mode on the CPU."""
    from rayssl.methods.registry import build_method

    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    method.load_extra_state(state["method_extra"])  # LFR: its saved target selection
    method.load_state_dict(state["model"])
    return method.eval()
