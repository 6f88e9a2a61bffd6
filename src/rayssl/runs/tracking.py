"""Per-run TensorBoard curves, written by rank 0 into `<run>/tensorboard/` every epoch, so
`tensorboard --logdir <storage_path>` shows runs side by side.

Every number an epoch reports becomes a scalar at step = epoch: losses, accuracies, probe
metrics, lr, samples/s, BYOL's momentum, LFR's phase (`backbone_trains`). Every attempt
(a new run, a restart, a resume) writes its curves from the checkpoint's history under
`purge_step=1`, which tells TensorBoard to drop every point an earlier attempt wrote
(including epochs after the checkpoint it restarts from), so no epoch appears twice or goes
missing.

For a storage URI (s3://, gs://) the event files are written locally and copied to the
run folder after every epoch through pyarrow (TensorBoard's writer speaks local paths).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from rayssl.errors import first_line

SKIPPED = {"epoch", "step"}  # the x-axis, not curves


class TensorBoard:
    def __init__(self, run_uri: str, history: list[dict[str, float]]):
        from tensorboardX import SummaryWriter

        self.remote = "://" in run_uri
        self.target = f"{run_uri}/tensorboard"
        self.dir = tempfile.mkdtemp(prefix="rayssl-tb-") if self.remote else self.target
        # always: an attempt that crashed before its first checkpoint was registered leaves
        # points that a restart from scratch (empty history) must replace too
        self.writer = SummaryWriter(self.dir, purge_step=1)
        for metrics in history:
            self._add(metrics)
        self.flush()

    def _add(self, metrics: dict[str, float]) -> None:
        step = int(metrics["epoch"])
        for key, value in metrics.items():
            if key not in SKIPPED and isinstance(value, int | float):
                self.writer.add_scalar(key, float(value), step)

    def log(self, metrics: dict[str, float]) -> None:
        self._add(metrics)
        self.flush()

    def flush(self) -> None:
        self.writer.flush()
        if self.remote:
            import pyarrow.fs as pafs

            pafs.copy_files(self.dir, self.target)

    def close(self) -> None:
        self.writer.close()
        if self.remote:
            import pyarrow.fs as pafs

            pafs.copy_files(self.dir, self.target)
            for path in Path(self.dir).iterdir():
                path.unlink()


# ============================================================================ MLflow


# MLflow retries an unreachable server 7 times with exponential back-off and a 120 s
# timeout per request: minutes of a silent start, and of a silent epoch end on rank 0.
# Tracking is a report, not a reason to wait: a user's own setting of these still wins.
MLFLOW_REQUEST_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_mlflow_retries() -> None:
    import logging

    for name, value in MLFLOW_REQUEST_BOUNDS.items():
        os.environ.setdefault(name, value)
    # urllib3 logs each retry with the request's URL, query secrets included, through
    # Python's last-resort handler to stderr; rayssl's own warning line says it once
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


class MLflowRun:
    """One MLflow run per rayssl run (`tracking: {mlflow_uri, experiment}`), found again by
    its `rayssl_run` tag when the run restarts or resumes. The driver opens it (params: the
    resolved config, flattened) and closes it (the summary, the status); rank 0 logs each
    epoch's numbers at step = epoch. A restart first logs the checkpoint's epochs that the
    MLflow run lacks (an epoch can end between its checkpoint and its MLflow point), and
    never logs an epoch the run already has: none twice, none missing."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        bound_mlflow_retries()
        self.client, self.run_id = MlflowClient(uri), run_id
        self.logged: set[int] | None = None  # epochs the MLflow run has (read when needed)
        self.warned = False

    @classmethod
    def open(cls, uri: str, experiment: str, run: str, config: dict) -> MLflowRun:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        bound_mlflow_retries()
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        existing = client.search_runs(
            [experiment_id], filter_string=f"tags.rayssl_run = '{run}'", max_results=1
        )
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(
                experiment_id, tags={"rayssl_run": run}, run_name=run
            ).info.run_id
            params = list(flatten(config).items())
            for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
                batch = params[start : start + 100]
                client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in batch])
        return cls(uri, run_id)

    def sync(self, history: list[dict[str, float]]) -> None:
        """Log every epoch of `history` the MLflow run lacks. MLflow cannot delete points:
        an attempt restarted from an earlier checkpoint (or from scratch) trains epochs it
        already logged, with the same numbers (runs resume exactly), so those are skipped;
        epochs missed while the store was unreachable are logged once it answers again."""
        self._safely(lambda: self._sync(history))

    def _sync(self, history: list[dict[str, float]]) -> None:

        if self.logged is None:
            points = self.client.get_metric_history(self.run_id, "train_loss")
            self.logged = {m.step for m in points}
        now = int(time.time() * 1000)
        for metrics in history:
            step = int(metrics["epoch"])
            if step in self.logged:
                continue
            self.client.log_batch(self.run_id, metrics=_points(metrics, now, step))
            self.logged.add(step)

    def close(self, summary: dict | None, error: str | None = None) -> None:
        """The summary's final and best numbers at the run's last epoch, then the status;
        a successful resume drops the error a failed attempt tagged."""
        self._safely(lambda: self._close(summary, error), "the MLflow run is not closed")

    def _close(self, summary: dict | None, error: str | None) -> None:
        if summary is not None:
            final = {f"final_{k}": v for k, v in summary.get("final_metrics", {}).items()}
            final["wall_time_s"] = summary.get("wall_time_s", 0.0)
            if summary.get("best", {}).get("value") is not None:
                final[f"best_{summary['best']['metric']}"] = summary["best"]["value"]
            final.pop("final_epoch", None), final.pop("final_step", None)
            step = int(summary.get("final_metrics", {}).get("epoch", 0))
            points = _points(final, int(time.time() * 1000), step)
            self.client.log_batch(self.run_id, metrics=points)
        if error:
            self.client.set_tag(self.run_id, "rayssl_error", error[:5000])
        elif "rayssl_error" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "rayssl_error")
        self.client.set_terminated(self.run_id, status="FAILED" if error else "FINISHED")

    def _safely(self, action, consequence: str = "training goes on without it") -> None:
        # Tracking is a report on training, never a reason to stop it: one warning line
        # for the first failure, then training goes on (later epochs retry the store).
        try:
            action()
        except Exception as exc:  # MLflow and its stores raise many types
            self.logged = None  # read the run's epochs again once the store answers
            if not self.warned:
                self.warned = True
                print(
                    f"rayssl: warning: MLflow tracking failed ({first_line(exc)}); {consequence}",
                    flush=True,
                )


def _points(metrics: dict[str, float], timestamp: int, step: int) -> list:
    from mlflow.entities import Metric

    return [
        Metric(k, float(v), timestamp, step)
        for k, v in metrics.items()
        if k not in SKIPPED and isinstance(v, int | float)
    ]


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"data": {"batch_size": 64}} -> {"data.batch_size": 64}."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# ============================================================================ Weights & Biases


def wandb_id(run_dir: str) -> str:
    """The W&B run id of a rayssl run: its folder's name (letters, digits, - and _ only), so
    every attempt of the run (restart, resume) continues the same W&B run."""
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


class WandbRun:
    """One W&B run per rayssl run, opened on rank 0 through Ray's `setup_wandb` (Ray's own
    integration; marked alpha in Ray 2.60, so it is called in one place, here, and any error
    it raises only warns). Its id is the run folder's name with `resume="allow"`: a restart
    or `--resume` continues the same W&B run. The config is the run's (credentials
    redacted); each epoch's numbers are logged at step = epoch. W&B refuses a step below its
    last, so an attempt first logs the restored epochs W&B lacks and never one twice."""

    def __init__(self, settings: dict, run_dir: str, config: dict, history: list[dict]):
        self.run = None
        self.warned = False
        directory = settings.get("dir") or (None if "://" in run_dir else run_dir)
        mode = settings.get("mode", "online")
        try:
            from ray.air.integrations.wandb import setup_wandb

            run_id = wandb_id(run_dir)
            with _wandb_mode(mode):  # Ray asks for an API key unless WANDB_MODE says offline
                self.run = setup_wandb(
                    config=config,
                    project=settings["project"],
                    group=settings.get("group"),
                    mode=mode,
                    dir=directory,
                    id=run_id,
                    name=run_id,
                    resume="allow",
                    reinit="finish_previous",
                )
            self.next_step = int(getattr(self.run, "starting_step", 0) or 0)
        except Exception as exc:  # wandb, Ray or the network: tracking never stops training
            self._warn(exc)
        self.sync(history)

    def sync(self, history: list[dict]) -> None:
        """Log every epoch of `history` at or after W&B's next step."""
        if self.run is None:
            return
        try:
            for metrics in history:
                step = int(metrics["epoch"])
                if step < self.next_step:
                    continue
                numbers = {k: v for k, v in metrics.items() if k not in SKIPPED}
                self.run.log({**numbers, "epoch": step}, step=step)
                self.next_step = step + 1
        except Exception as exc:
            self._warn(exc)

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as exc:
                self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            print(
                f"rayssl: warning: Weights & Biases cannot log ({first_line(exc)}); "
                "training goes on without it",
                flush=True,
            )


class _wandb_mode:
    """WANDB_MODE set to "offline" while Ray's `setup_wandb` runs (its API-key check reads
    the variable, not the `mode` argument), then put back; nothing for "online"."""

    def __init__(self, mode: str):
        self.mode, self.before = mode, os.environ.get("WANDB_MODE")

    def __enter__(self):
        if self.mode == "offline":
            os.environ["WANDB_MODE"] = "offline"

    def __exit__(self, *exc):
        if self.mode == "offline":
            if self.before is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = self.before
