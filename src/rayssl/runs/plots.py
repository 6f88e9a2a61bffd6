"""Learning curves: `curves.png` at the end of every run, `rayssl plot` for several runs on
one figure, and the search plot of `rayssl tune`. Every x-axis is the run's epoch (1-based,
as the progress lines count), whatever the reporting cadence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (panel title, y label, metrics drawn in it: solid, dashed, dotted ...)
LOSS = ("loss", "loss", ("train_loss", "val_loss"))
HEADLINE = (
    "accuracy",
    "accuracy",
    ("val_accuracy", "train_accuracy", "test_accuracy", "linear_acc", "knn_acc"),
)
LR = ("learning rate", "lr", ("lr",))
EXTRA = (  # the fourth panel: whatever the run has first
    ("BYOL target momentum", "momentum", ("momentum",)),
    ("LFR phase (1: backbone trains)", "backbone_trains", ("backbone_trains",)),
    ("throughput", "samples / s", ("samples_per_s",)),
)
STYLES = ("-", "--", ":", "-.", (0, (1, 3)))


def _series(history: list[dict[str, float]], metric: str) -> tuple[list[int], list[float]]:
    points = [(int(h["epoch"]), h[metric]) for h in history if metric in h and "epoch" in h]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(runs: list[tuple[str, list[dict[str, float]]]], path: str | Path) -> Path:
    """Draw `runs` ((label, per-epoch history) pairs) on one 2x2 figure (`figure`) and
    write it to `path`."""
    import matplotlib.pyplot as plt

    fig = figure(runs)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figure(runs: list[tuple[str, list[dict[str, float]]]]) -> Any:
    """Losses, the headline metric, the lr and a fourth panel (BYOL momentum, LFR phase or
    samples/s). Every series has a colour of its own (and, across several runs, a line
    style per metric); every panel's epoch axis has integer ticks and spans the whole run,
    so a metric measured at one epoch (a probe at the end) sits where it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    present = {k for _, history in runs for h in history for k in h}
    extra = next((p for p in EXTRA if set(p[2]) & present), EXTRA[-1])
    headline = HEADLINE
    if len(runs) > 1:  # several runs: held-out accuracy only, or the legend drowns the plot
        headline = (*HEADLINE[:2], tuple(m for m in HEADLINE[2] if m != "train_accuracy"))
    panels = (LOSS, headline, LR, extra)
    epochs = [int(h["epoch"]) for _, history in runs for h in history if "epoch" in h]
    last = max(epochs, default=1)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colours = plt.get_cmap("tab10" if len(runs) * 5 <= 10 else "tab20").colors
    for ax, (title, ylabel, metrics) in zip(axes.flat, panels, strict=True):
        drawn = 0
        for label, history in runs:
            for m, metric in enumerate(m for m in metrics if m in present):
                x, y = _series(history, metric)
                if not x:
                    continue
                ax.plot(
                    x,
                    y,
                    linestyle=STYLES[m % len(STYLES)] if len(runs) > 1 else "-",
                    marker="o" if len(x) < 25 else None,
                    markersize=4,
                    color=colours[drawn % len(colours)],
                    label=metric if len(runs) == 1 else f"{label}: {metric}",
                )
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)  # the whole run, even for one point
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not reported", ha="center", va="center", transform=ax.transAxes)
    if len(runs) == 1:
        fig.suptitle(runs[0][0])
    fig.tight_layout()
    return fig


def history_of(run_dir: str) -> tuple[str, list[dict[str, Any]]]:
    """A run's label and per-epoch history: its summary.json while the run record agrees it
    finished, else (a run still training, failed, or resumed) its newest checkpoint's."""
    from rayssl.config import ConfigError
    from rayssl.runs import resolve
    from rayssl.runs.listing import newest_history, summary_history
    from rayssl.runs.storage import RUN_RECORD

    found = resolve.run_folder(run_dir, "rayssl plot's RUN")
    storage, run = found.storage, found.run
    summary = storage.read_json(run, "summary.json")
    record = storage.read_json(run, RUN_RECORD)
    current = record.get("status") in (None, "finished")  # else the summary is older
    history = summary_history(summary) if current else None
    if not history:
        history = newest_history(storage, run)
    if not history:
        raise ConfigError(
            f"'{run_dir}' has no summary.json nor checkpoint metrics; give a run folder"
        )
    return run, history
