#!/usr/bin/env bash
# The screen of docs/HYPERPARAMETERS.md: ResNet-14 on the CIFAR-10 archive, 5 epochs (lr /10 at
# 2.5 and 3.75), seed 0, the paper's recipe except for the fields each point varies. Points run
# one after another; a finished point is left as it is and an interrupted one resumes, so the
# same command continues the screen after any stop. A point that diverges is recorded as such.
#
#   RUNS=~/bnjax-runs/study/screen DATA=../shared/data/cifar10-jpeg.tar.gz \
#     bash launch/studies/hyperparameter_screen.sh [NAME ...]   # default: every point, in this order
#   bash launch/studies/hyperparameter_screen.sh --list         # the names and their flags
# Two of these at once (say, NAMEs split in two halves) use both cores of a 2-core machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-$HOME/bnjax-runs/study/screen}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
COMMON=(--config=configs/cifar10.py:cifar_resnet_14 --config.data.source="$DATA"
        --config.train.steps_per_call=10 --config.train.epochs=5
        "--config.train.lr_milestones=(2.5,3.75)")

declare -A FLAGS
ORDER=()
point() { FLAGS[$1]=$2; ORDER+=("$1"); }
for wd in 0.0001 0; do
  for lr in 0.1 0.3 1 0.03 3 10; do
    point "sgd_lr${lr}_wd${wd}" "train --config.train.lr=$lr --config.train.weight_decay=$wd"
  done
done
for lr in 0.1 0.03 0.3 1; do
  point "all_lr${lr}_wd0.0001" "train --config.train.mode=all --config.train.lr=$lr"
done
# groups: replicas of one program (bnjax sweep --replicas), one folder per point
point adam "sweep --grid=train.optimizer=adam;train.lr=0.001,0.01,0.03 --replicas=3"
point beta_lr_scale "sweep --grid=train.beta_lr_scale=10,64 --config.train.lr=1 --replicas=2"
point sgd_lr1_wd0.0005 "train --config.train.lr=1 --config.train.weight_decay=0.0005"
# added after the first Adam group: its best lr, 0.03, was the grid's edge
point adam_high "sweep --grid=train.optimizer=adam;train.lr=0.1,0.3 --replicas=2"

if [[ "${1:-}" == "--list" ]]; then
  for name in "${ORDER[@]}"; do echo "$name: bnjax ${FLAGS[$name]} ${COMMON[*]}"; done
  exit 0
fi
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ORDER[@]}")
for name in "${names[@]}"; do
  [[ -n "${FLAGS[$name]:-}" ]] || { echo "unknown point '$name'; see --list" >&2; exit 2; }
done
mkdir -p "$RUNS"
for name in "${names[@]}"; do
  read -r command rest <<< "${FLAGS[$name]}"
  echo "== $name ($(date -u +%FT%TZ))"
  # shellcheck disable=SC2086  # FLAGS entries are word lists
  if [[ $command == train ]]; then
    bnjax train "${COMMON[@]}" $rest --workdir="$RUNS/$name"
  else
    bnjax sweep "${COMMON[@]}" $rest --workdir="$RUNS"
  fi || echo "== $name stopped with status $? ($(date -u +%FT%TZ))"
done
