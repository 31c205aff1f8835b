#!/usr/bin/env bash
# One unattended accelerator check, at most 12 minutes on one GPU (11 benches of <= 35 s, one
# training of <= 40 s and the K-task runs, <= 40-120 s each; TASK_KS="1 3" to shorten), measuring the rows of docs/PERFORMANCE.md's cost model that fit:
# `bnjax bench` of ResNet-20/56/110 BN-only in float32 and bfloat16 (ten steps per call, the
# CIFAR default), ResNet-20 BN-only bfloat16 at one step per call, ResNet-20 all parameters,
# ResNet-20 BN-only bfloat16 as 4, 16 and 64 replicas of one program (vmap), and a short real
# BN-only training of ResNet-20 in bfloat16, and K = 1, 3, 10, 30 tasks of CIFAR-10 size on one
# frozen backbone (`data.tasks`, each task its own copy of the data, TASK_STEPS steps each: the
# wall time of K tasks in one process against K times the one task's). Figures go to $RESULTS (default gpu_results/): a
# file per command, summary.jsonl with every bench's JSON line and the training's metrics, and
# compare.md, measured against the cost model's prediction for an H200
# (launch/performance/cost_model.py).
#
#   DATA=../shared/data/cifar10-jpeg.tar.gz bash launch/performance/gpu_check.sh
#   bash launch/performance/gpu_check.sh --dry-run  # any machine: the commands it would run
# Needs bnjax installed with a CUDA jax (pip install -e . "jax[cuda12]").
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
RESULTS=${RESULTS:-gpu_results}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
BENCH_SECONDS=${BENCH_SECONDS:-35}
TRAIN_SECONDS=${TRAIN_SECONDS:-40}   # the training is cut off (SIGTERM, a checkpoint) after this
TASK_STEPS=${TASK_STEPS:-100}        # each task of the K-task runs stops (saved) at this step
TASK_KS=${TASK_KS:-1 3 10 30}        # how many tasks each K-task run trains
DEVICE=${DEVICE:-H200}
mkdir -p "$RESULTS"
summary="$RESULTS/summary.jsonl"
: > "$summary"

run() {  # the command, or in a dry run its line in plan.txt
  if (( DRY_RUN )); then echo "$*" | tee -a "$RESULTS/plan.txt"; return 0; fi
  "$@"
}

bench() {  # name, then bnjax bench flags
  local name=$1; shift
  if (( DRY_RUN )); then run timeout "$BENCH_SECONDS" bnjax bench "$@"; return; fi
  timeout "$BENCH_SECONDS" bnjax bench "$@" > "$RESULTS/bench_$name.txt" \
    2> "$RESULTS/bench_$name.log" \
    && tail -n 1 "$RESULTS/bench_$name.txt" >> "$summary" \
    || echo "{\"bench\": \"$name\", \"failed\": true}" >> "$summary"
}

(( DRY_RUN )) && : > "$RESULTS/plan.txt"
if (( ! DRY_RUN )); then
  date -u +"started %Y-%m-%dT%H:%M:%SZ" | tee "$RESULTS/info.txt"
  (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true) \
    >> "$RESULTS/info.txt"
  python -c "import jax; print(jax.__version__, jax.devices())" >> "$RESULTS/info.txt" 2>&1
fi

for depth in 20 56 110; do
  for dtype in float32 bfloat16; do
    bench "r${depth}_bn_$dtype" --config=configs/cifar10.py:cifar_resnet_$depth \
      --config.model.dtype=$dtype
  done
done
bench "r20_bn_bfloat16_1_per_call" --config=configs/cifar10.py:cifar_resnet_20 \
  --config.model.dtype=bfloat16 --config.train.steps_per_call=1
bench "r20_all_float32" --config=configs/cifar10.py:cifar_resnet_20 --config.train.mode=all
for k in 4 16 64; do
  bench "r20_bn_bfloat16_${k}_replicas" --config=configs/cifar10.py:cifar_resnet_20 \
    --config.model.dtype=bfloat16 --replicas=$k
done

workdir="$RESULTS/train_r20_bn_bfloat16"
# 2 epochs with the lr drop after the first; SIGTERM at the time limit saves a checkpoint.
run timeout -s TERM "$TRAIN_SECONDS" bnjax train --config=configs/cifar10.py:cifar_resnet_20 \
  --workdir="$workdir" --config.data.source="$DATA" --config.model.dtype=bfloat16 \
  --config.data.cache_dir="$RESULTS/cache" \
  --config.train.epochs=2 "--config.train.lr_milestones=(1,)" --config.log.every_steps=20 \
  > "$RESULTS/train_r20_bn_bfloat16.log" 2>&1
if (( ! DRY_RUN )); then
  echo "{\"train\": \"r20_bn_bfloat16\", \"exit\": $?}" >> "$summary"
  [ -f "$workdir/metrics.json" ] && python -c "import json,sys; m=json.load(open(sys.argv[1])); \
m.pop('history'); print(json.dumps(m))" "$workdir/metrics.json" >> "$summary"
  tail -n 3 "$workdir/train_log.jsonl" >> "$summary" 2>/dev/null
fi

# K tasks on one backbone in one process (tasks of one shape: one vmapped program). Each task's
# source is a link of its own to the data: the tasks then feed their own batches (one source
# would share one batch), and read the decoded images the training above cached.
mkdir -p "$RESULTS/task_sources"
for i in $(seq 30); do ln -sf "$(realpath "$DATA")" "$RESULTS/task_sources/t$i.tar.gz"; done
for k in $TASK_KS; do
  tasks=$(for i in $(seq "$k"); do printf 't%s=%s;' "$i" "$RESULTS/task_sources/t$i.tar.gz"; done)
  started=$(date +%s.%N)
  run timeout -s TERM $(( k >= 30 ? 120 : k >= 10 ? 60 : 40 )) bnjax train \
    --config=configs/cifar10.py:cifar_resnet_20 --workdir="$RESULTS/tasks_$k" \
    --config.model.dtype=bfloat16 --config.train.mode=bn_output "--config.data.tasks=$tasks" \
    --config.data.cache_dir="$RESULTS/cache" \
    --stop_at_step="$TASK_STEPS" > "$RESULTS/tasks_$k.log" 2>&1
  status=$?
  (( DRY_RUN )) || echo "{\"tasks\": $k, \"steps_each\": $TASK_STEPS, \"exit\": $status, \
\"wall_s\": $(echo "$(date +%s.%N) - $started" | bc)}" >> "$summary"
done

python launch/performance/cost_model.py --results=docs/performance/cost_model.jsonl \
  --compare="$summary" --device="$DEVICE" > "$RESULTS/compare.md" && cat "$RESULTS/compare.md"
(( DRY_RUN )) || date -u +"finished %Y-%m-%dT%H:%M:%SZ" | tee -a "$RESULTS/info.txt"
