#!/usr/bin/env bash
# Interleaved A/B benchmark of bnjax against the PyTorch peer (../shared/bench/torch_reference.py)
# on this machine: cifar_resnet_20, batch 128 (eval batch 1000), two rounds of
# torch BN-only, bnjax BN-only, torch full, bnjax full, torch eval; then bnjax BN-only with
# XLA:CPU's oneDNN flag. One JSON line per measurement goes to $OUT (default perf.jsonl).
# BNJAX_FLAGS adds config flags to every bnjax bench (e.g. --config.train.steps_per_call=10).
#   TORCH_PY=/tmp/torchref/bin/python bash launch/performance/bench_vs_torch.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-perf.jsonl}
TORCH_PY=${TORCH_PY:-/tmp/torchref/bin/python}
PEER=${PEER:-../shared/bench/torch_reference.py}
torch_run() { OMP_WAIT_POLICY=PASSIVE "$TORCH_PY" "$PEER" --depth 20 --channels-last --out "$OUT" "$@"; }
bnjax_run() {  # tag, then flags
  local tag=$1; shift
  # shellcheck disable=SC2086  # BNJAX_FLAGS is a list of flags
  bnjax bench --config=configs/cifar10.py:cifar_resnet_20 ${BNJAX_FLAGS:-} "$@" | tail -n 1 \
    | sed "s/^{/{\"tag\": \"$tag\", \"framework\": \"bnjax\", /" >> "$OUT"
}
for round in 1 2; do
  torch_run --variant bnonly --tag "r$round"
  bnjax_run "r$round" --config.train.mode=bn
  torch_run --variant full --tag "r$round"
  bnjax_run "r$round" --config.train.mode=all
  torch_run --variant eval --tag "r$round"
done
XLA_FLAGS=--xla_cpu_use_onednn=true bnjax_run onednn --config.train.mode=bn
