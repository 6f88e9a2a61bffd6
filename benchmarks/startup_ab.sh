#!/usr/bin/env bash
# A start-up change against the commit before it, interleaved on the same machine: the 2-worker
# supervised MNIST-1D run's command -> first optimizer step (and its "Ray started" and
# "TorchTrainer made" phases), alternating FILE as committed now ("new") and as at REF ("old").
#   bash benchmarks/startup_ab.sh REF FILE [PAIRS]
#   e.g. bash benchmarks/startup_ab.sh bb331c9~1 src/rayssl/cluster/driver.py 4
set -euo pipefail
ref=$1 file=$2 pairs=${3:-4}
cd "$(dirname "$0")/.."
trap 'git checkout -q -- "$file"' EXIT
for _ in $(seq "$pairs"); do
  for version in new old; do
    if [ "$version" = old ]; then git show "$ref:$file" > "$file"; fi
    dir=$(mktemp -d)
    python -m rayssl.cli train configs/supervised_mnist1d.yaml --set epochs=1 \
      --set "storage_path=$dir" > /dev/null 2>&1
    python - "$dir" "$version" <<'PY'
import glob, json, sys
first = json.load(open(glob.glob(f"{sys.argv[1]}/*/summary.json")[0]))["history"][0]
print(json.dumps({"version": sys.argv[2], **{k: round(first[k], 2) for k in (
    "start_to_first_step_s", "startup_ray_started_s", "startup_fit_called_s")}}))
PY
    git checkout -q -- "$file"
    rm -rf "$dir"
  done
done
