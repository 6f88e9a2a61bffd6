#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md, on one machine with one NVIDIA GPU and 16 CPU cores:
#
#   bash benchmarks/gpu.sh tests      # tests/test_gpu.py (CUDA loop, exact resume, NCCL fit)
#   bash benchmarks/gpu.sh steps      # images.py on the GPU, fp32 and bf16 + channels_last
#                                     # (PRECISIONS=fp32: the first only)
#   bash benchmarks/gpu.sh startup    # startup.py --gpu: one SimCLR demo epoch, local and 1 worker
#   bash benchmarks/gpu.sh quality    # ssl_quality.py --gpu: rayssl (1 NCCL worker) vs lightly
#
# Results go to $OUT (default benchmarks/results). Where rayssl's dependencies are not
# installed, a prepared site folder (.whl/site.tgz: the packages unpacked, for a machine
# without a package index) is put on PYTHONPATH first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if [ -f .whl/site.tgz ] && ! python3 -c "import ray" 2>/dev/null; then
    if [ ! -d /tmp/site ]; then  # unpacked once, compiled once (every process imports it)
        tar xzf .whl/site.tgz -C /tmp && python3 -m compileall -q -j 0 /tmp/site >/dev/null || true
    fi
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
case "${1:-all}" in
tests | all)
    python3 -m pytest -p no:cacheprovider -q tests/test_gpu.py ${TESTS_K:+-k "$TESTS_K"} 2>&1 |
        tee "$OUT/test_gpu.log"
    ;;&
steps | all)
    for precision in ${PRECISIONS:-fp32 bf16}; do
        sections="step resnet"
        [ "$precision" = fp32 ] && sections="views $sections"
        python3 benchmarks/images.py --device cuda --loader-workers 16 --precision "$precision" \
            --sections $sections --steps 30 --out "$OUT/images-h200-$precision.json"
    done
    ;;&
startup | all)
    [ -d data/digits32 ] || python3 -m rayssl.cli demo-images data/digits32
    python3 benchmarks/startup.py --config configs/simclr_images.yaml --gpu --workers 0 1 \
        --runs "${RUNS:-2}" --out "$OUT/startup-h200.json"
    ;;&
quality | all)
    python3 benchmarks/ssl_quality.py --gpu --loader-workers 16 --sets demo \
        --methods ${METHODS:-simclr byol moco barlow_twins vicreg dino} \
        --out "$OUT/ssl_quality-h200.json"
    ;;
esac
