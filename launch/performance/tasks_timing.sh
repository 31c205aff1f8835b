#!/usr/bin/env bash
# Wall time of K tasks trained as one `bnjax train --config.data.tasks=...` against the same K
# tasks trained one after another as runs alone (a process each), same config; and whether each
# task's metrics.json equals its run alone's (on the CPU they must, bit for bit). Prints one
# JSON line per way and the comparison.
#   DATA=../shared/data OUT=/tmp/tasks_timing bash launch/performance/tasks_timing.sh
# The K tasks are the mnist-5k archive under K names (small enough for minutes of CPU; the
# tasks are equal in shape, so they share one compiled program). The first, untimed run fills
# the data cache both ways then read.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-/tmp/tasks_timing}
K=${K:-3}
EPOCHS=${EPOCHS:-3}
rm -rf "$OUT"; mkdir -p "$OUT"
COMMON=(--config=configs/cifar10.py:cifar_resnet_20 --config.train.mode=bn_output
        --config.data.cache_dir="$OUT/cache")
BUDGET=(--config.train.epochs="$EPOCHS" "--config.train.lr_milestones=($((EPOCHS - 1)),)")
source="$DATA/mnist-5k-png.tar.gz"
tasks=$(for i in $(seq "$K"); do printf 'task%s=%s;' "$i" "$source"; done)
bnjax train "${COMMON[@]}" --workdir="$OUT/warm" --config.data.source="$source" \
  --config.train.epochs=1 "--config.train.lr_milestones=(1,)" > "$OUT/warm.log" 2>&1  # data cache
start=$(date +%s.%N)
bnjax train "${COMMON[@]}" "${BUDGET[@]}" --workdir="$OUT/tasks" "--config.data.tasks=$tasks" \
  > "$OUT/tasks.log" 2>&1
together=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N)
for i in $(seq "$K"); do
  bnjax train "${COMMON[@]}" "${BUDGET[@]}" --workdir="$OUT/alone/task$i" \
    --config.data.source="$source" >> "$OUT/alone.log" 2>&1
done
apart=$(echo "$(date +%s.%N) - $start" | bc)
python - "$OUT" "$K" "$together" "$apart" <<'PY'
import json, os, sys
out, k, together, apart = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
def metrics(path):
    with open(os.path.join(path, "metrics.json")) as f:
        m = json.load(f)
    return m["history"], m["test_accuracy"]
same = all(metrics(f"{out}/tasks/task{i}") == metrics(f"{out}/alone/task{i}")
           for i in range(1, k + 1))
print(json.dumps({"tasks": k, "one_program_s": round(together, 1),
                  "runs_one_after_another_s": round(apart, 1),
                  "ratio": round(together / apart, 3), "each_task_equals_its_run_alone": same}))
PY
