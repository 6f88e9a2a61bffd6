"""Everything that touches Ray Train and Ray core for a training run. The numbered comments
(`# 1.` ... `# 8.`) in these files mark each call into Ray.

    driver.py   `rayssl train` on the driver: preflight, fit, the run record and summary
    start.py    start or join Ray; refuse a run the cluster cannot place
    trainer.py  the TorchTrainer of a run and the typed WorkerArgs its workers get
    worker.py   what every worker runs: build the loop, restore, report to Ray Train
    records.py  progress line, summary, MLflow run, curves, a worker's error in one line
    quiet.py    every log line rayssl silences, and why
"""

from rayssl.cluster.driver import RunFailed, fit, preflight
from rayssl.cluster.start import init_ray
from rayssl.cluster.trainer import WorkerArgs, build_trainer

__all__ = ["RunFailed", "WorkerArgs", "build_trainer", "fit", "init_ray", "preflight"]
