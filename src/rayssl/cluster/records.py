"""What a run leaves behind and shows: the progress line, the summary, the MLflow run, the
curves picture, and the one line a worker's failure is reported as."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from rayssl.config import ConfigError, TrainConfig, redact_uri
from rayssl.errors import first_line
from rayssl.runs.listing import HEADLINE
from rayssl.runs.storage import Storage

# the metric a run's best epoch is judged by, the first one it reports (never test: it is
# measured once, at the end)
BEST_BY = tuple((m, mode) for m, mode in HEADLINE if m != "test_accuracy")
# what a self-supervised run is judged by (eval.every, eval.online_linear)
PROBES = ("knn_acc", "linear_acc", "online_linear_acc")


def progress_line(metrics: dict[str, float], cfg: TrainConfig, done: int, started: float) -> str:
    """One short line per epoch: loss, the headline metric, throughput and ETA."""
    epoch = int(metrics["epoch"])
    per_epoch = (time.perf_counter() - started) / max(done, 1)
    eta = per_epoch * (cfg.epochs - epoch)
    parts = [f"[rayssl] epoch {epoch}/{cfg.epochs}", f"train_loss {metrics['train_loss']:.4f}"]
    for key in ("val_accuracy", "val_loss", "test_accuracy", *PROBES):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    parts += [f"{metrics['samples_per_s']:,.0f} samples/s", f"ETA {eta:.0f}s"]
    return "  ".join(parts)


def final_line(summary: dict) -> str:
    """The line a finished run ends with: its val/test metrics and its probes' accuracies."""
    final = summary["final_metrics"]
    shown = [k for k in final if k.startswith(("val_", "test_"))]
    shown += [k for k in PROBES if k in final]
    metrics = ", ".join(f"{k} {final[k]:.4f}" for k in shown)
    return (
        f"rayssl: run '{summary['run']}' finished after {summary['epochs_run']} epochs "
        f"in {summary['wall_time_s']:.0f}s" + (f": {metrics}" if metrics else "")
    )


def open_mlflow(cfg: TrainConfig, run: str):
    """The run's MLflow run (`tracking`), opened on the driver; None without `tracking`. A
    server that does not answer (http, https, databricks) is one warning line and the run
    trains without MLflow; a local store that cannot be opened (sqlite, a folder) is the
    config's mistake: one line, exit 2."""
    if cfg.tracking is None or not cfg.tracking.mlflow_uri:
        return None
    from rayssl.runs.tracking import MLflowRun

    uri = cfg.tracking.mlflow_uri
    try:
        return MLflowRun.open(uri, cfg.tracking.experiment, run, cfg.record())
    except Exception as exc:  # MLflow raises its own types for a bad URI or store
        reason = redact_uri(uri, first_line(exc, with_type=False))[:300]
        if uri.split(":", 1)[0] in REMOTE_STORES:
            print(
                f"rayssl: warning: MLflow store '{redact_uri(uri)}' does not answer "
                f"({reason}); this run trains without MLflow",
                flush=True,
            )
            return None
        raise ConfigError(
            f"tracking.mlflow_uri '{redact_uri(uri)}' cannot be used ({reason})"
        ) from None


REMOTE_STORES = ("http", "https", "databricks", "databricks-uc", "uc")


def draw_curves(storage: Storage, run: str, history: list[dict[str, float]]) -> str | None:
    """`curves.png` in the run folder (drawn locally, then copied: storage may be a URI)."""
    from rayssl.runs.plots import plot_runs

    try:
        with tempfile.TemporaryDirectory() as tmp:
            picture = plot_runs([(run, history)], Path(tmp) / "curves.png")
            return storage.write_bytes(run, "curves.png", picture.read_bytes())
    except Exception as exc:  # matplotlib or the store: the run itself is recorded already
        print(f"rayssl: warning: curves.png not drawn ({first_line(exc)})", flush=True)
        return None


RAYSSL_ERROR_LINE = re.compile(r"\s*rayssl\.(?:\w+\.)*(\w+Error: .*)$")


def worker_error(exc: Exception) -> str:
    """The first worker's own error line, without Ray's traceback around it."""
    failures = getattr(exc, "worker_failures", None) or {}
    for _, failure in sorted(failures.items()):
        # an error raised by rayssl's code in another Ray process (a Ray Data task decoding
        # an image) reaches us only as text inside Ray's wrapper: its own line names the file
        own = [m.group(1) for m in map(RAYSSL_ERROR_LINE.match, str(failure).splitlines()) if m]
        if own:
            return own[-1]
        cause = getattr(failure, "cause", None) or failure
        text = f"{type(cause).__name__}: {cause}"
        return text.strip().splitlines()[-1] if "Traceback" in text else text.splitlines()[0]
    return str(exc).strip().splitlines()[-1]


def summarize(cfg: TrainConfig, run: str, storage: Storage, wall_s: float) -> dict:
    """The run's summary, from its newest registered checkpoint (Ray's or rayssl's)."""
    checkpoint = storage.latest_checkpoint(run)
    state = storage.read_state(run, checkpoint)
    history: list[dict[str, float]] = state["loop"]["history"]
    if cfg.early_stopping is not None:
        monitor, mode = cfg.early_stopping.monitor, cfg.early_stopping.mode
    else:
        reported = {k for h in history for k in h}
        monitor, mode = next((m, mode) for m, mode in BEST_BY if m in reported)
    scored = [h for h in history if monitor in h]
    best = (max if mode == "max" else min)(scored, key=lambda h: h[monitor]) if scored else None
    final = history[-1]
    return {
        "run": run,
        "method": cfg.method,
        "epochs_run": int(final["epoch"]),
        "global_steps": int(final["step"]),
        "stopped_early": int(final["epoch"]) < cfg.epochs,
        # epochs from which an attempt continued a checkpoint: a worker-group restart after
        # a failure, or `--resume`
        "resumed_at": state["loop"].get("resumed_at", []),
        # each change of the number of workers: {"epoch", "step", "from", "to"}
        "resizes": state["loop"].get("resizes", []),
        "final_metrics": final,
        "best": {
            "metric": monitor,
            "mode": mode,
            "value": best[monitor] if best else None,
            "epoch": int(best["epoch"]) if best else None,
        },
        "wall_time_s": wall_s,
        "mean_samples_per_s": sum(h["samples_per_s"] for h in history) / len(history),
        "start_to_first_step_s": next(
            (h["start_to_first_step_s"] for h in history if "start_to_first_step_s" in h), None
        ),
        "checkpoint": storage.path(run, checkpoint),
        "config": cfg.record(),
        "history": history,
    }
