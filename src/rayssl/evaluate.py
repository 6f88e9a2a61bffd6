"""`rayssl eval`: the kNN and linear probes of a saved run's frozen backbone, in this
process, each split read in batches (a split in storage streams through Ray Data)."""

from __future__ import annotations

from pathlib import Path

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
    path: str, knn_k: int | None = None, trust_import_paths: bool = False
) -> dict[str, float]:
    """Rebuild the method of a run directory's newest checkpoint (or of a checkpoint
    directory) from its saved config, load the weights, and probe its backbone. A config
    naming its method, backbone or head by import path is rebuilt only with
    `trust_import_paths` (that imports and calls what the file names)."""
    from rayssl.build import build_method
    from rayssl.config import ConfigError, validate_train_config
    from rayssl.data import load_splits
    from rayssl.data.stored import StoredSplit
    from rayssl.engine.inputs import Inputs, eval_batches
    from rayssl.engine.probes import features_of, probe_features
    from rayssl.pretrained import refuse_import_paths

    state, shown = _state(path)
    saved = state["config"]
    names = [saved.get("method"), *(saved.get(k, {}).get("name") for k in ("backbone", "head"))]
    refuse_import_paths(names, shown, trust_import_paths)
    cfg = validate_train_config(saved)
    cfg.settle_older_checkpoint(saved)  # options added since it was written
    splits = load_splits(cfg.data, cfg.seed)
    method = build_method(cfg, splits.sample_shape, splits.num_classes)
    method.load_extra_state(state["method_extra"])  # LFR: its saved target selection
    method.load_state_dict(state["model"])
    method.eval()
    sets = splits.probe_sets(cfg.seed, cfg.eval.probe_train_limit)
    if sets is None:
        raise ConfigError(f"'{path}': {no_probe_reason(splits)}")
    if any(isinstance(split, StoredSplit) for split in sets):  # read through Ray Data
        from rayssl.cluster.start import init_ray

        init_ray(None)
    inputs = Inputs(method, cfg, splits)
    sample = torch.zeros(1, *splits.sample_shape)
    fit, scored = (
        features_of(inputs.frozen_embed, eval_batches(split, cfg, "cpu", 0, 1), sample)
        for split in sets
    )
    return probe_features(
        *fit,
        *scored,
        k=knn_k or cfg.eval.knn_k,
        linear=cfg.eval.linear_probe,
        num_classes=splits.num_classes,
    )


def _state(path: str) -> tuple[dict, str]:
    """The state of a run folder's newest checkpoint, or of a checkpoint folder, local or at
    a URI (a run in a bucket), and how to name it in a message."""
    from rayssl.config import ConfigError
    from rayssl.state import STATE_FILE, load_state
    from rayssl.storage import Storage

    if "://" in path:
        from rayssl.pretrained import read_state

        state, where = read_state(path, "rayssl eval's PATH", STATE_FILE)
        return state, "/".join(filter(None, (where.get("run"), where["checkpoint"])))
    directory = Path(path).resolve()
    if not directory.is_dir():
        raise ConfigError(f"rayssl eval's PATH '{path}' is no folder; give a run or checkpoint")
    if not (directory / STATE_FILE).is_file():
        latest = Storage(str(directory.parent)).latest_checkpoint(directory.name)
        if latest is None:
            raise ConfigError(
                f"'{path}' holds neither {STATE_FILE} nor a checkpoint registered by Ray"
            )
        directory = directory / latest
    return load_state(directory), str(directory)
