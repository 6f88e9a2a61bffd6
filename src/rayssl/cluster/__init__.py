"""Everything that touches Ray Train and Ray core for a training run. The numbered comments
mark each call into Ray, in the order a run makes them: 1. start or join Ray (start.py),
2. the data into the object store, 3. the TorchTrainer (trainer.py), 4. its fit (driver.py);
on every worker (worker.py): 5. rank, 6. DDP, 7. data shard, 8. checkpoint to restore,
9. reports, 10. preemption notices.

    driver.py   `rayssl train` on the driver: a new run or a resume prepared, fit, the run
                record and summary
    preflight.py  the checks before Ray starts (data, views, init_from, two samples)
    start.py    start or join Ray; refuse a run the cluster cannot place
    trainer.py  the TorchTrainer of a run and the typed WorkerArgs its workers get
    worker.py   what every worker runs: build the loop, restore, report to Ray Train
    records.py  progress line, summary, MLflow run, curves, a worker's error in one line
    quiet.py    every log line rayssl silences, and why
"""

from rayssl.cluster.driver import RunFailed, fit
from rayssl.cluster.preflight import preflight
from rayssl.cluster.start import init_ray
from rayssl.cluster.trainer import WorkerArgs, build_trainer

__all__ = ["RunFailed", "WorkerArgs", "build_trainer", "fit", "init_ray", "preflight"]
