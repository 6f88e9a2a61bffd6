"""`rayssl runs`: a table of the runs under a storage path (a folder or any URI that
`storage_path` takes), from the records each run leaves: `run.json` (written by `fit` when
training starts and when it ends), `summary.json`, and the checkpoint records of Ray Train
(its manager snapshot, with the metrics reported beside each checkpoint) or of local mode.
Reads the newest checkpoint file only for a run without a current summary (Ray keeps the
metrics of its kept checkpoints only, local mode none), as data (`weights_only`)."""

from __future__ import annotations

import os
from typing import Any

from rayssl.runs.storage import LOCAL_INDEX_FILE, RUN_RECORD, SNAPSHOT_FILE, Storage, driver_alive

HEADLINE = (  # the metric a run is judged by, first one it reports
    ("linear_acc", "max"),
    ("knn_acc", "max"),
    ("val_accuracy", "max"),
    ("test_accuracy", "max"),
    ("val_loss", "min"),
    ("train_loss", "min"),
)


def _best(history: list[dict[str, float]]) -> tuple[str, float] | None:
    for metric, mode in HEADLINE:
        values = [h[metric] for h in history if metric in h]
        if values:
            return metric, (max(values) if mode == "max" else min(values))
    return None


def summary_history(summary: dict[str, Any]) -> list[dict[str, float]] | None:
    """The per-epoch history of a summary.json; None if it holds none that reads as one (a
    hand-edited or foreign file: the table falls back to the checkpoints)."""
    history = summary.get("history")
    if isinstance(history, list) and history and all(isinstance(h, dict) for h in history):
        return history
    return None


def newest_history(storage: Storage, run: str) -> list[dict[str, float]]:
    """Every epoch a run has reported, from its newest checkpoint's state (Ray keeps the
    metrics of only the checkpoints it still holds). A state that cannot be read is one
    ConfigError line."""
    from rayssl.config import ConfigError

    latest = storage.latest_checkpoint(run)
    if latest is None:
        return []
    try:
        return storage.read_state(run, latest)["loop"]["history"]
    except (OSError, KeyError, TypeError) as exc:  # missing or foreign state.pt
        raise ConfigError(
            f"'{storage.path(run, latest)}' holds no readable rayssl state ({type(exc).__name__})"
        ) from None


def describe(storage: Storage, run: str) -> dict[str, Any] | None:
    """One row of the table, or None for a folder that is not a rayssl run. The run record
    decides the status (a resumed run rewrites it, so an older summary.json never makes a
    running or failed run read "finished"); the summary's history is used only while the
    record agrees the run finished, else the newest checkpoint's."""
    from rayssl.config import ConfigError

    record = storage.read_json(run, RUN_RECORD)
    summary = storage.read_json(run, "summary.json")
    snapshot = storage.read_json(run, SNAPSHOT_FILE)
    local = storage.read_json(run, LOCAL_INDEX_FILE)
    if not (record or summary or snapshot or local):
        return None
    if summary and record.get("status") not in (None, "finished"):
        summary = {}  # from an earlier attempt: the record is newer
    error = record.get("error")
    try:
        history = summary_history(summary) or newest_history(storage, run)
    except ConfigError as exc:
        history, error = [], str(exc)
    config = summary.get("config") or record.get("config") or {}
    config = config if isinstance(config, dict) else {}
    if error and not history and record.get("status") != "failed":
        status = "unreadable"
    elif summary:
        status = "stopped early" if summary.get("stopped_early") else "finished"
    elif record.get("status") == "failed":
        status = "failed"
    elif record.get("status") == "running":
        alive = driver_alive(record)
        status = {True: "running", False: "interrupted", None: "running (other host)"}[alive]
    else:
        status = "unknown"
    done = summary.get("epochs_run")
    if not isinstance(done, int):
        epochs = [int(m["epoch"]) for m in history if "epoch" in m]
        done = max(epochs) if epochs else 0
    best = _best(history)
    return {
        "run": run,
        "method": config.get("method", "?"),
        "status": status,
        "epochs": done,
        "planned_epochs": config.get("epochs"),
        "best_metric": best[0] if best else None,
        "best_value": best[1] if best else None,
        "wall_time_s": _number(summary.get("wall_time_s") or record.get("wall_time_s")),
        "checkpoint": storage.latest_checkpoint(run),
        "error": error,
    }


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def list_runs(storage_path: str) -> list[dict[str, Any]]:
    storage = Storage(storage_path if "://" in storage_path else os.path.abspath(storage_path))
    rows = (describe(storage, run) for run in storage.runs())
    return [row for row in rows if row is not None]


def format_table(rows: list[dict[str, Any]]) -> str:
    def wall(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

    header = ("run", "method", "status", "epochs", "best", "wall", "newest checkpoint")
    lines = [header]
    for r in rows:
        planned = r["planned_epochs"] if r["planned_epochs"] is not None else "?"
        best = f"{r['best_metric']} {r['best_value']:.4f}" if r["best_metric"] else "-"
        lines.append(
            (
                r["run"],
                r["method"],
                r["status"],
                f"{r['epochs']}/{planned}",
                best,
                wall(r["wall_time_s"]),
                r["checkpoint"] or "-",
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
