"""`rayssl tune`: a Ray Tune search whose every trial runs the same per-worker loop.

A search YAML names a base training config, a space over config paths, the metric, the
scheduler and the budget. Two trial paths, same metrics and checkpoint format:

- `workers_per_trial: 1` (the default): the trial is a Tune function trainable holding the
  trial's resources, running `Loop` in its own process. It reports every epoch with
  `ray.tune.report(metrics, checkpoint=...)` and restores from `ray.tune.get_checkpoint()`,
  so ASHA, PBT and `Tuner.restore` work natively, with no Ray Train start-up per trial.
- more workers: the trial (a token CPU) builds and fits a `TorchTrainer` reporting to Tune
  through `TuneReportCallback`; its checkpoints stay under the search's `trials/` folder.

    search.py   the search YAML's schema and checks, each trial's config
    trials.py   what one trial runs
    runner.py   run_search: the Tuner on the driver
    results.py  the results table, best.yaml, the metric plot
"""

from rayssl.tune.runner import run_search
from rayssl.tune.search import SearchConfig, load_search

__all__ = ["SearchConfig", "load_search", "run_search"]
