"""Per-run TensorBoard curves, written by rank 0 into `<run>/tensorboard/` every epoch, so
`tensorboard --logdir <storage_path>` shows runs side by side.

Every number an epoch reports becomes a scalar at step = epoch: losses, accuracies, probe
metrics, lr, samples/s, BYOL's momentum, LFR's phase (`backbone_trains`). A restarted or
resumed run rewrites its curves from the checkpoint's history under `purge_step=1`, which
tells TensorBoard to drop every point an earlier attempt wrote (including epochs after the
checkpoint it restarts from), so no epoch appears twice or goes missing.

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
        # purge_step=1 only when there are earlier points to replace
        self.writer = SummaryWriter(self.dir, purge_step=1 if history else None)
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
