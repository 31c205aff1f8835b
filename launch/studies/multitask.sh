#!/usr/bin/env bash
# The single-task runs behind docs/MULTITASK.md: ResNet-20, seed 0, 15 epochs with lr /10 at 50%
# and 75%, on the tasks cifar10, fashion-mnist and mnist-5k (the shared archives), by method:
#   bn_output  BatchNorm and output layer from the random seed (the shipped bundle's tasks)
#   output     the output layer alone: a linear probe of random features whose BatchNorm
#              statistics adapt to the task (AdaBN with a trained head)
#   none       nothing trains, the statistics adapt (the output layer stays at random)
#   all        every weight
#   init_D     bn_output with model.init=D (kaiming_uniform, orthogonal, binary)
#   on_base    bn_output on the backbone trained by all/cifar10 (exported as
#              $RUNS/base_all_cifar10.bnjax, named by model.base), the three tasks as one program
#              (data.tasks); its bundle is $RUNS/on_base.bnjax
# Every run resumes from its last checkpoint when this script is started again; a finished run is
# left as it is and exported to $RUNS/<method>/<task>.bnjax. The last step bundles the bn_output
# exports of one seed into $RUNS/bn_output.bnjax (bnjax bundle).
#
#   RUNS=~/bnjax-runs/multitask DATA=../shared/data bash launch/studies/multitask.sh [METHOD/TASK ...]
#   bash launch/studies/multitask.sh --list
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-$HOME/bnjax-runs/multitask}
DATA=${DATA:-../shared/data}
declare -A SOURCE=([cifar10]=cifar10-jpeg.tar.gz [fashion-mnist]=fashion-mnist-png.tar.gz
                   [mnist-5k]=mnist-5k-png.tar.gz)
COMMON=(--config=configs/cifar10.py:cifar_resnet_20 --config.seed=0 --config.train.epochs=15
        "--config.train.lr_milestones=(7.5,11.25)")
declare -A METHOD=([bn_output]="--config.train.mode=bn_output" [output]="--config.train.mode=output"
                   [none]="--config.train.mode=none" [all]="--config.train.mode=all")
for init in kaiming_uniform orthogonal binary; do
  METHOD[init_$init]="--config.train.mode=bn_output --config.model.init=$init"
done
ORDER=(bn_output/mnist-5k bn_output/fashion-mnist bn_output/cifar10 all/mnist-5k all/cifar10
       on_base all/fashion-mnist)
ORDER+=(output/mnist-5k output/fashion-mnist output/cifar10
       none/mnist-5k)  # the control: statistics adapt, the head stays at random (chance)
for init in orthogonal binary kaiming_uniform; do
  for task in fashion-mnist cifar10; do ORDER+=("init_$init/$task"); done
done

ON_BASE=(--config.train.mode=bn_output --config.model.base="$RUNS/base_all_cifar10.bnjax"
         "--config.data.tasks=$(for task in cifar10 fashion-mnist mnist-5k; do
                                  printf '%s=%s;' $task "$DATA/${SOURCE[$task]}"; done)")

if [[ "${1:-}" == "--list" ]]; then
  for name in "${ORDER[@]}"; do
    if [[ $name == on_base ]]; then echo "on_base: ${ON_BASE[*]} ${COMMON[*]}"; continue; fi
    echo "$name: ${METHOD[${name%/*}]} --config.data.source=$DATA/${SOURCE[${name#*/}]} ${COMMON[*]}"
  done
  exit 0
fi
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=("${ORDER[@]}")
for name in "${names[@]}"; do
  [[ $name == on_base || ( -n "${METHOD[${name%/*}]:-}" && -n "${SOURCE[${name#*/}]:-}" ) ]] || {
    echo "unknown run '$name'; see --list" >&2; exit 2; }
done

for name in "${names[@]}"; do
  if [[ $name == on_base ]]; then  # needs all/cifar10 finished
    echo "== on_base ($(date -u +%FT%TZ))"
    [[ -f "$RUNS/base_all_cifar10.bnjax" ]] ||
      bnjax export --workdir="$RUNS/all/cifar10" --out="$RUNS/base_all_cifar10.bnjax"
    bnjax train "${COMMON[@]}" "${ON_BASE[@]}" --workdir="$RUNS/on_base"
    bnjax export --workdir="$RUNS/on_base" --out="$RUNS/on_base.bnjax"
    continue
  fi
  method=${name%/*} task=${name#*/}
  echo "== $name ($(date -u +%FT%TZ))"
  mkdir -p "$RUNS/$method"
  # shellcheck disable=SC2086  # METHOD entries are word lists
  bnjax train "${COMMON[@]}" ${METHOD[$method]} --config.data.source="$DATA/${SOURCE[$task]}" \
    --workdir="$RUNS/$name"
  bnjax export --workdir="$RUNS/$name" --out="$RUNS/$name.bnjax"
done
tasks=(cifar10 fashion-mnist mnist-5k)
exports=$(printf "$RUNS/bn_output/%s.bnjax," "${tasks[@]}")
if ls ${exports//,/ } >/dev/null 2>&1; then
  bnjax bundle --exports="${exports%,}" --names="$(IFS=,; echo "${tasks[*]}")" \
    --out="$RUNS/bn_output.bnjax"
fi
