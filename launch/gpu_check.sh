#!/usr/bin/env bash
# One unattended accelerator check, at most 9.5 minutes on one GPU (9 benches of <= 50 s and 2
# trainings of <= 50 s): `bnjax bench` (ResNet-20 BN-only and full training, ResNet-110 BN-only)
# and a short real BN-only training of cifar_resnet_110, each in float32 and bfloat16, plus
# ResNet-20 BN-only in bfloat16 with 10 steps per compiled call (train.steps_per_call), plus
# ResNet-14 BN-only as 8 and 64 replicas of one program (vmap; the hyperparameter sweeps'
# layout on accelerators, docs/PERFORMANCE.md "Replicas").
# Figures go to $RESULTS (default gpu_results/), one file each, plus summary.jsonl with every
# bench JSON line and each training's metrics.json.
#
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash launch/gpu_check.sh
# Needs bnjax installed with a CUDA jax (pip install -e . "jax[cuda12]").
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-gpu_results}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
TRAIN_SECONDS=${TRAIN_SECONDS:-50}   # each short training is cut off after this long
mkdir -p "$RESULTS"
summary="$RESULTS/summary.jsonl"
: > "$summary"
date -u +"started %Y-%m-%dT%H:%M:%SZ" | tee "$RESULTS/info.txt"
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true) >> "$RESULTS/info.txt"
python -c "import jax; print(jax.__version__, jax.devices())" >> "$RESULTS/info.txt" 2>&1

bench() {  # name, then bnjax flags
  local name=$1; shift
  timeout 50 bnjax bench "$@" > "$RESULTS/bench_$name.txt" 2>"$RESULTS/bench_$name.log" \
    && tail -n 1 "$RESULTS/bench_$name.txt" >> "$summary" \
    || echo "{\"bench\": \"$name\", \"failed\": true}" >> "$summary"
}

for dtype in float32 bfloat16; do
  bench "r20_bn_$dtype" --config=configs/cifar10.py:cifar_resnet_20 --config.model.dtype=$dtype
  bench "r20_all_$dtype" --config=configs/cifar10.py:cifar_resnet_20 --config.model.dtype=$dtype \
    --config.train.mode=all
  bench "r110_bn_$dtype" --config=configs/cifar10.py:cifar_resnet_110 --config.model.dtype=$dtype
done
bench "r20_bn_bfloat16_10_per_call" --config=configs/cifar10.py:cifar_resnet_20 \
  --config.model.dtype=bfloat16 --config.train.steps_per_call=10
for k in 8 64; do
  bench "r14_bn_${k}_replicas" --config=configs/cifar10.py:cifar_resnet_14 --replicas=$k
done

for dtype in float32 bfloat16; do
  workdir="$RESULTS/train_r110_bn_$dtype"
  # 2 epochs with the lr drop after the first; SIGTERM at the time limit saves a checkpoint.
  timeout -s TERM "$TRAIN_SECONDS" bnjax train --config=configs/cifar10.py:cifar_resnet_110 \
    --workdir="$workdir" --config.data.source="$DATA" --config.model.dtype=$dtype \
    --config.train.epochs=2 "--config.train.lr_milestones=(1,)" --config.log.every_steps=20 \
    > "$RESULTS/train_r110_bn_$dtype.log" 2>&1
  echo "{\"train\": \"r110_bn_$dtype\", \"exit\": $?}" >> "$summary"
  [ -f "$workdir/metrics.json" ] && python -c "import json,sys; m=json.load(open(sys.argv[1])); \
m.pop('history'); print(json.dumps(m))" "$workdir/metrics.json" >> "$summary"
  tail -n 3 "$workdir/train_log.jsonl" >> "$summary" 2>/dev/null
done
date -u +"finished %Y-%m-%dT%H:%M:%SZ" | tee -a "$RESULTS/info.txt"
