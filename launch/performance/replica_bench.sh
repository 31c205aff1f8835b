#!/usr/bin/env bash
# The replica table of docs/PERFORMANCE.md: `bnjax bench` of one config at K = 1, 2, 4, 8
# replicas of one seed (sharing the frozen weights and the batch) and of K seeds, one process
# per row (so that each row's peak memory is its own), one JSON line each to $OUT.
#
#   OUT=replicas.jsonl bash launch/performance/replica_bench.sh [--config=... --config.FIELD=...]
# default: ResNet-14 BN-only, the paper's batch of 128, one step per call.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-replica_bench.jsonl}
FLAGS=("$@")
[[ ${#FLAGS[@]} -gt 0 ]] || FLAGS=(--config=configs/cifar10.py:cifar_resnet_14)
for seeds in same different; do
  for k in 1 2 4 8; do
    [[ $seeds == different && $k == 1 ]] && continue
    bnjax bench "${FLAGS[@]}" --replicas=$k --bench_seeds=$seeds 2>/dev/null | tail -n 1 | tee -a "$OUT"
  done
done
