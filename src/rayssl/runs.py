"""`rayssl runs`: a table of the runs under a storage path (a folder or any URI that
`storage_path` takes), from the records each run leaves: `run.json` (written by `fit` when
training starts and when it ends), `summary.json`, and the checkpoint records of Ray Train
(its manager snapshot, with the metrics reported beside each checkpoint) or of local mode.
Reads a checkpoint file only for a local-mode run without a summary (local mode records no
metrics beside its checkpoints), so it stays fast for runs with large models."""

from __future__ import annotations

import os
import socket
from typing import Any

from rayssl.storage import LOCAL_INDEX_FILE, RUN_RECORD, SNAPSHOT_FILE, Storage

HEADLINE = (  # the metric a run is judged by, first one it reports
    ("linear_acc", "max"),
    ("knn_acc", "max"),
    ("val_accuracy", "max"),
    ("test_accuracy", "max"),
    ("val_loss", "min"),
    ("train_loss", "min"),
)


def _alive(record: dict[str, Any]) -> bool | None:
    """Whether the driver that wrote `record` still runs (None: another host, unknown)."""
    if record.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def _best(history: list[dict[str, float]]) -> tuple[str, float] | None:
    for metric, mode in HEADLINE:
        values = [h[metric] for h in history if metric in h]
        if values:
            return metric, (max(values) if mode == "max" else min(values))
    return None


def describe(storage: Storage, run: str) -> dict[str, Any] | None:
    """One row of the table, or None for a folder that is not a rayssl run."""
    record = storage.read_json(run, RUN_RECORD)
    summary = storage.read_json(run, "summary.json")
    snapshot = storage.read_json(run, SNAPSHOT_FILE)
    local = storage.read_json(run, LOCAL_INDEX_FILE)
    if not (record or summary or snapshot or local):
        return None
    reported = [r.get("metrics", {}) for r in snapshot.get("checkpoint_results", [])]
    if local and not summary:  # a local-mode run without a summary: its newest state
        reported = storage.read_state(run, local["checkpoint_dir_name"])["loop"]["history"]
    history = summary.get("history") or reported
    config = summary.get("config") or record.get("config") or {}
    if summary:
        status = "stopped early" if summary.get("stopped_early") else "finished"
    elif record.get("status") == "failed":
        status = "failed"
    elif record.get("status") == "running":
        alive = _alive(record)
        status = {True: "running", False: "interrupted", None: "running (other host)"}[alive]
    else:
        status = "unknown"
    done = summary.get("epochs_run")
    if done is None:
        epochs = [int(m["epoch"]) for m in reported if "epoch" in m]
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
        "wall_time_s": summary.get("wall_time_s") or record.get("wall_time_s"),
        "checkpoint": storage.latest_checkpoint(run),
        "error": record.get("error"),
    }


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
