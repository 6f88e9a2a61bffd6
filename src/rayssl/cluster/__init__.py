"""Everything that touches Ray Train and Ray core for a training run. The numbered comments
mark each call into Ray, in the order a run makes them: 1. start or join Ray (start.py),
2. the data into the object store, 3. the TorchTrainer (trainer.py), 4. its fit (driver.py);
on every worker (worker.py): 5. rank, 6. DDP, 7. data shard, 8. checkpoint to restore,
9. reports, 10. preemption notices.

    driver.py   `rayssl train` on the driver: a new run or a resume prepared, fit, the run
                record and summary
    checks.py   the checks before Ray starts (data, views, init_from, two samples)
    start.py    start or join Ray; refuse a run the cluster cannot place
    trainer.py  the TorchTrainer of a run and the typed WorkerArgs its workers get
    worker.py   what every worker runs: build the loop, restore, report to Ray Train
    records.py  progress line, summary, MLflow run, curves, a worker's error in one line
    quiet.py    every log line rayssl silences, and why
"""

__all__ = ["RunFailed", "WorkerArgs", "build_trainer", "fit", "init_ray", "preflight"]

# Loaded on first use (PEP 562): every Ray worker process imports `cluster/quiet.py` (its
# setup hook) and Ray Train's controller `cluster/entry.py`; an eager import here would
# make each of them import the driver, torch and the methods first.
_LAZY = {
    "RunFailed": "driver",
    "fit": "driver",
    "preflight": "checks",
    "init_ray": "start",
    "WorkerArgs": "entry",
    "build_trainer": "trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"rayssl.cluster.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rayssl.cluster' has no attribute '{name}'")
