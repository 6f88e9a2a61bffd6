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

import tempfile
from pathlib import Path

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


class MLflowRun:
    """One MLflow run per rayssl run (`tracking: {mlflow_uri, experiment}`), found again by
    its `rayssl_run` tag when the run restarts or resumes. The driver opens it (params: the
    resolved config, flattened) and closes it (the summary, the status); rank 0 logs each
    epoch's numbers at step = epoch. A restart first logs the checkpoint's epochs that the
    MLflow run lacks (an epoch can end between its checkpoint and its MLflow point), and
    never logs an epoch the run already has: none twice, none missing."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(uri), run_id
        self.logged: set[int] | None = None  # epochs the MLflow run has (read when needed)

    @classmethod
    def open(cls, uri: str, experiment: str, run: str, config: dict) -> MLflowRun:
        from mlflow.tracking import MlflowClient

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
            params = flatten(config)
            for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
                from mlflow.entities import Param

                batch = list(params.items())[start : start + 100]
                client.log_batch(run_id, params=[Param(k, str(v)[:500]) for k, v in batch])
        return cls(uri, run_id)

    def catch_up(self, history: list[dict[str, float]]) -> None:
        for metrics in history:
            self.log(metrics)

    def log(self, metrics: dict[str, float]) -> None:
        """Log an epoch unless the MLflow run has it: MLflow cannot delete points, and an
        attempt restarted from an earlier checkpoint (or from scratch, when it crashed before
        its first one was registered) trains epochs again that it already logged, with the
        same numbers (runs resume exactly)."""
        import time

        from mlflow.entities import Metric

        if self.logged is None:
            history = self.client.get_metric_history(self.run_id, "train_loss")
            self.logged = {m.step for m in history}
        step, now = int(metrics["epoch"]), int(time.time() * 1000)
        if step in self.logged:
            return
        self.logged.add(step)
        points = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if k not in SKIPPED and isinstance(v, int | float)
        ]
        self.client.log_batch(self.run_id, metrics=points)

    def close(self, summary: dict | None, error: str | None = None) -> None:
        from mlflow.entities import Metric

        if summary is not None:
            now = 0
            final = {f"final_{k}": v for k, v in summary.get("final_metrics", {}).items()}
            final["wall_time_s"] = summary.get("wall_time_s", 0.0)
            if summary.get("best", {}).get("value") is not None:
                final[f"best_{summary['best']['metric']}"] = summary["best"]["value"]
            points = [
                Metric(k, float(v), now, 0)
                for k, v in final.items()
                if isinstance(v, int | float) and k not in ("final_epoch", "final_step")
            ]
            self.client.log_batch(self.run_id, metrics=points)
        if error:
            self.client.set_tag(self.run_id, "rayssl_error", error[:5000])
        self.client.set_terminated(self.run_id, status="FAILED" if error else "FINISHED")


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
