#!/usr/bin/env bash
# The training runs behind docs/REPRODUCTION.md, one after another, on the CIFAR-10 archive.
# Every run resumes from its last checkpoint when this script is started again, and a finished
# run is left as it is, so the same command continues the whole queue after any interruption.
# Each finished run is exported to $RUNS/<name>.bnjax (its seed plus its BatchNorm parameters).
#
#   RUNS=~/bnjax-runs/reproduction DATA=../shared/data/cifar10-jpeg.tar.gz \
#     bash launch/studies/reproduce.sh [NAME ...]        # default: every run, in the order below
#   bash launch/studies/reproduce.sh --list              # the names and their flags
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-$HOME/bnjax-runs/reproduction}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
# Ten steps per compiled call: the fastest setting measured on the 2-core CPU (docs/REPRODUCTION.md).
COMMON=(--config.data.source="$DATA" --config.train.steps_per_call=10)

declare -A FLAGS=(
  [r14_bn_160]="--config=configs/cifar10.py:cifar_resnet_14"
  [r14_bn_5]="--config=configs/cifar10.py:cifar_resnet_14 --config.train.epochs=5 --config.train.lr_milestones=(2.5,3.75)"
  [r14_bn_10]="--config=configs/cifar10.py:cifar_resnet_14 --config.train.epochs=10 --config.train.lr_milestones=(5,7.5)"
  [r14_bn_20]="--config=configs/cifar10.py:cifar_resnet_14 --config.train.epochs=20 --config.train.lr_milestones=(10,15)"
  [r14_bn_40]="--config=configs/cifar10.py:cifar_resnet_14 --config.train.epochs=40 --config.train.lr_milestones=(20,30)"
  [r20_bn_160]="--config=configs/cifar10.py:cifar_resnet_20"
  [r32_bn_160]="--config=configs/cifar10.py:cifar_resnet_32"
  # deeper against wider at equal BatchNorm counts, at the budget curve's 20 epochs (r14_bn_20
  # is their shared point): ResNet-32 (2,464 BN parameters) against ResNet-14 of width 32
  # (2,240), ResNet-56 (4,256) against ResNet-14 of width 64 (4,480); plotted and tabled by
  # launch/studies/depth_width.py
  [r32_bn_20]="--config=configs/cifar10.py:cifar_resnet_32 --config.train.epochs=20 --config.train.lr_milestones=(10,15)"
  [r14_32_bn_20]="--config=configs/cifar10.py:cifar_resnet_14_32 --config.train.epochs=20 --config.train.lr_milestones=(10,15)"
  [r56_bn_20]="--config=configs/cifar10.py:cifar_resnet_56 --config.train.epochs=20 --config.train.lr_milestones=(10,15)"
  [r14_64_bn_20]="--config=configs/cifar10.py:cifar_resnet_14_64 --config.train.epochs=20 --config.train.lr_milestones=(10,15)"
)
# r32 before r20: the paper and the PyTorch reproduction report ResNet-32, not ResNet-20
ORDER=(r14_bn_160 r14_bn_5 r14_bn_10 r14_bn_20 r14_bn_40 r32_bn_20 r14_32_bn_20 r32_bn_160
       r56_bn_20 r14_64_bn_20 r20_bn_160)

if [[ "${1:-}" == "--list" ]]; then
  for name in "${ORDER[@]}"; do echo "$name: ${FLAGS[$name]} ${COMMON[*]}"; done
  exit 0
fi
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ORDER[@]}")
for name in "${names[@]}"; do
  [[ -n "${FLAGS[$name]:-}" ]] || { echo "unknown run '$name'; see --list" >&2; exit 2; }
done

mkdir -p "$RUNS"
for name in "${names[@]}"; do
  echo "== $name ($(date -u +%FT%TZ))"
  # shellcheck disable=SC2086  # FLAGS entries are word lists
  bnjax train ${FLAGS[$name]} "${COMMON[@]}" --workdir="$RUNS/$name"
  bnjax export --workdir="$RUNS/$name" --out="$RUNS/$name.bnjax"
done
