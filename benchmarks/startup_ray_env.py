"""Start-up with one of Ray's own settings changed, interleaved with the run as it is: does
the setting move `rayssl train`'s first step (2 workers)? Ray's system settings are read
from `RAY_<name>` variables when the command starts its local Ray.

    python benchmarks/startup_ray_env.py RAY_prestart_worker_first_driver=0 \\
        RAY_enable_worker_prestart=0 --pairs 5

Each side is `benchmarks/startup.py`'s rayssl run (a fresh `rayssl train CONFIG --set
epochs=1` subprocess); prints each pair and the medians; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import startup  # noqa: E402  (benchmarks/, beside this file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("settings", nargs="+", help="NAME=VALUE of Ray's, for the changed side")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--config", default="configs/supervised_mnist1d.yaml")
    parser.add_argument("--out", default="startup_ray_env.json")
    args = parser.parse_args()
    changed = dict(s.split("=", 1) for s in args.settings)
    sides: dict = {"as_is": [], "changed": []}
    for i in range(args.pairs):
        for side in sides:
            for name, value in changed.items():
                if side == "changed":
                    os.environ[name] = value
                else:
                    os.environ.pop(name, None)
            sides[side].append(startup.rayssl_run(2, args.config))
            first = sides[side][-1]["start_to_first_step_s"]
            print(f"pair {i + 1} {side}: first step {first:.2f} s", flush=True)
    medians = {s: statistics.median(r["start_to_first_step_s"] for r in runs)
               for s, runs in sides.items()}  # fmt: skip
    print("medians:", json.dumps(medians))
    result = {"command": "python benchmarks/startup_ray_env.py " + " ".join(sys.argv[1:]),
              "changed": changed, "median_first_step_s": medians, "runs": sides}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
