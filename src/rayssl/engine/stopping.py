"""Early stopping (`early_stopping:`): the best value of the monitored metric so far, and the
epochs since it last improved. The record lives in the checkpointed `LoopState`."""

from __future__ import annotations

from rayssl.config import PROBE_METRICS, TrainConfig
from rayssl.engine.checkpoint import LoopState


def track_best(cfg: TrainConfig, state: LoopState, metrics: dict[str, float]) -> None:
    """Update the early-stopping record. A probe metric exists only on probe epochs
    (every `eval.every`): each report without improvement counts `eval.every` epochs
    towards the patience (the config checks that the patience is a multiple of it)."""
    es = cfg.early_stopping
    if es is None:
        return
    if es.monitor in PROBE_METRICS:
        if es.monitor not in metrics:
            return
        epochs_per_report = max(1, cfg.eval.every)
    elif es.monitor not in metrics:
        raise ValueError(
            f"early_stopping.monitor '{es.monitor}' is not reported; "
            f"choose one of: {', '.join(sorted(metrics))}"
        )
    else:
        epochs_per_report = 1
    value, best = metrics[es.monitor], state.best
    improved = best is None or (
        value < best - es.min_delta if es.mode == "min" else value > best + es.min_delta
    )
    if improved:
        state.best, state.best_epoch, state.bad_epochs = value, metrics["epoch"], 0
    else:
        state.bad_epochs += epochs_per_report


def patience_spent(cfg: TrainConfig, state: LoopState) -> bool:
    es = cfg.early_stopping
    return es is not None and state.bad_epochs >= es.patience
