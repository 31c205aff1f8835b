#!/usr/bin/env bash
# Wall time of one sweep over four learning rates, without and with --replicas=4, of tiny runs
# (cifar_resnet_8 of width 4, 21 steps of 8 images from a generated 3-class folder): what a
# group shares (one process start, one data load, one compile per group) against what it does
# not (the arithmetic). Prints each sweep's wall time and each point's test accuracy in both.
#
#   bash launch/performance/replica_sweep_timing.sh [LARGER_GRID_FLAGS ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d)
python - "$WORK/images" <<'PY'
import os, sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, count in (("train", 8), ("test", 4)):
    for label, name in enumerate(("cat", "dog", "frog")):
        os.makedirs(os.path.join(sys.argv[1], split, name))
        for i in range(count):
            pixels = rng.integers(0, 80, (32, 32, 3))
            pixels[..., label] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(f"{sys.argv[1]}/{split}/{name}/{i}.png")
PY
for replicas in 1 4; do
  start=$(date +%s.%N)
  bnjax sweep --config=configs/smoke.py --grid='train.lr=0.05,0.1,0.2,0.4' \
    --workdir="$WORK/replicas$replicas" --replicas=$replicas --config.data.source="$WORK/images" \
    --config.data.cache_dir="$WORK/cache" --config.train.epochs=7 --config.train.batch_size=8 \
    --config.eval.batch_size=12 "$@" > "$WORK/replicas$replicas.log" 2>&1
  echo "replicas=$replicas wall $(python -c "print(round($(date +%s.%N) - $start, 1))") s"
done
python - "$WORK" <<'PY'
import json, os, sys
for name in sorted(os.listdir(os.path.join(sys.argv[1], "replicas1"))):
    paths = [os.path.join(sys.argv[1], f"replicas{r}", name, "metrics.json") for r in (1, 4)]
    if all(map(os.path.exists, paths)):
        alone, grouped = (json.load(open(p))["test_accuracy"] for p in paths)
        print(f"{name}: test accuracy {alone} alone, {grouped} as a replica")
PY
[[ -n "${KEEP:-}" ]] || rm -rf "$WORK"
