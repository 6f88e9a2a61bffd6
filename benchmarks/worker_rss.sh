#!/usr/bin/env bash
# Resident memory of each Ray Train worker, sampled every 5 s, during one epoch of iBOT's
# demo config on 512 demo images (`rayssl demo-images data/digits512 --train 512 --test 100`).
# Prints one line a sample: the sample's number, then each RayTrainWorker's RSS in MB.
# Run with nothing else of Ray's on the machine (it reads every RayTrainWorker's RSS).
#
#   bash benchmarks/worker_rss.sh                              # rayssl's allocator settings
#   MALLOC_MMAP_MAX_=65536 MALLOC_TRIM_THRESHOLD_=131072 MALLOC_ARENA_MAX=16 \
#       bash benchmarks/worker_rss.sh                          # near glibc as it comes
# The settings before 2026-12-07 (MALLOC_MMAP_MAX_=0) were measured by running it at commit
# 6609363, whose cluster/start.py set them.
set -euo pipefail
out=$(mktemp -d)
rayssl train configs/ibot_images.yaml --set storage_path="$out" --set name=rss --set epochs=1 \
    --set data.path=data/digits512/train --set data.test_path=data/digits512/test \
    > "$out/train.log" 2>&1 &
train=$!
for i in $(seq 1 120); do
    sleep 5
    echo "$i $(ps -eo rss,args | grep '[R]ayTrainWorker' | awk '{s=s" "int($1/1024)} END{print s}')"
    kill -0 "$train" 2>/dev/null || break
done
wait "$train"
tail -2 "$out/train.log"
