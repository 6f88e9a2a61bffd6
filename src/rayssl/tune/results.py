"""A finished search's results: the table (printed and results.csv), best.yaml, and the
metric plot."""

from __future__ import annotations

import csv
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rayssl.runs.storage import Storage
from rayssl.tune.search import SearchConfig, trial_config


def write_results(
    results, search: SearchConfig, base: dict, max_epochs: int, experiment: str
) -> dict:
    """Print and save the results table, the best config as YAML and the metric plot into
    `experiment` (a folder or a URI)."""
    parent, name = str(experiment).rstrip("/").rsplit("/", 1)
    storage = Storage(parent)
    rows = [_row(result, search, max_epochs) for result in results]
    ranked = sorted(
        rows,
        key=lambda r: (
            math.isnan(r[search.metric]),
            -r[search.metric] if search.mode == "max" else r[search.metric],
        ),
    )
    columns = [c for c in ranked[0] if not c.startswith("_")]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(ranked)
    storage.write_text(name, "results.csv", table.getvalue())
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in ranked)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in ranked:
        print("  ".join(_fmt(r[c]).ljust(widths[c]) for c in columns))
    best = ranked[0]
    best_cfg = trial_config(base, {k: best[k] for k in search.space})
    best_cfg["name"] = f"{search.name}-best"
    best_path = storage.write_text(name, "best.yaml", yaml.safe_dump(best_cfg, sort_keys=False))
    with tempfile.TemporaryDirectory() as tmp:
        picture = Path(tmp) / f"{search.metric}.png"
        _plot(ranked, search, picture)
        storage.write_bytes(name, picture.name, picture.read_bytes())
    print(f"best {search.metric} {best[search.metric]:.4f}: {best_path}")
    return {"rows": ranked, "best": best, "experiment": str(experiment)}


def _row(result, search: SearchConfig, max_epochs: int) -> dict[str, Any]:
    """One trial's line of the table: its values, best metric, epochs, error, start-up."""
    history = result.metrics_dataframe
    reported = (
        history[["epoch", search.metric]].dropna()
        if history is not None and search.metric in history and "epoch" in history
        else None
    )
    values = list(reported[search.metric]) if reported is not None else []
    best = (max(values) if search.mode == "max" else min(values)) if len(values) else math.nan
    epochs = int(history["epoch"].max()) if history is not None and "epoch" in history else 0
    startup = (
        history["start_to_first_step_s"].dropna()
        if history is not None and "start_to_first_step_s" in history
        else []
    )
    return {
        "trial": (result.metrics or {}).get("trial_id", Path(result.path).name),
        **{k: result.config[k] for k in search.space},
        search.metric: best,
        "epochs": epochs,
        "stopped_early": epochs < max_epochs,
        "error": type(result.error).__name__ if result.error else "",
        # trial start -> its first optimizer step (first attempt)
        "start_to_first_step_s": float(startup.iloc[0]) if len(startup) else math.nan,
        # (epoch, value) of every report of the metric: the plot's x is the epoch
        "_history": (
            list(zip(reported["epoch"].astype(int), reported[search.metric], strict=True))
            if reported is not None
            else []
        ),
        "_label": ", ".join(f"{_short(k)} {_legend_value(result.config[k])}" for k in search.space),
    }


def _short(key: str) -> str:
    """A searched key as a legend names it: its last part (optimizer.lr -> lr,
    simclr.temperature -> T)."""
    last = key.rsplit(".", 1)[-1]
    return {"temperature": "T", "weight_decay": "wd", "base_momentum": "m"}.get(last, last)


def _legend_value(value: Any) -> str:
    if isinstance(value, float) and value and not 0.01 <= abs(value) < 1000:
        return f"{value:.1e}".replace("e-0", "e-")  # 1.8e-3
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], search: SearchConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        epochs = [e for e, _ in r["_history"]]
        ax.plot(epochs, [v for _, v in r["_history"]], marker="o", label=r["_label"])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(search.metric)
    ax.set_title(f"{search.name}: {search.metric} per epoch")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
