#!/usr/bin/env bash
# The small-budget table of docs/NORMS.md: ResNet-14 with each normalisation, trained BN-only,
# fully and as the random_k control, then VGG-11 with BatchNorm, BN-only against random_k; every
# row 2 epochs with the lr /10 after 1.5. Two sweeps, resumable: run the script again after an
# interruption. Measured: 2.5 hours of wall time on the 2-core CPU, sharing it with other
# trainings (docs/NORMS.md).
#   RUNS=~/bnjax-runs DATA=../shared/data/cifar10-jpeg.tar.gz bash launch/studies/norms_table.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-$HOME/bnjax-runs}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
COMMON=(--config.data.source="$DATA" --config.train.steps_per_call=10)
bnjax sweep --config=configs/cifar10.py:cifar_resnet_14 --workdir="$RUNS/norms_r14" "${COMMON[@]}" \
  --config.train.epochs=2 "--config.train.lr_milestones=(1.5,)" \
  --grid="model.norm=batchnorm,affine,groupnorm,layernorm;train.mode=bn,all,random_k"
bnjax sweep --config=configs/cifar10.py:cifar_vgg_11 --workdir="$RUNS/norms_vgg11" "${COMMON[@]}" \
  --config.train.epochs=2 "--config.train.lr_milestones=(1.5,)" --grid="train.mode=bn,random_k"
