#!/usr/bin/env bash
# Train on every GPU of this workstation (one process; bnjax's device mesh splits each batch
# across the GPUs), or on the ones in CUDA_VISIBLE_DEVICES. --dry-run prints the command.
#   bash launch/gpu_workstation.sh [--gpus=0,1] [--dry-run] -- TRAIN_FLAGS...
set -euo pipefail
gpus="" dry=0 train=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus=*) gpus=${1#*=} ;;
    --dry-run) dry=1 ;;
    --) shift; train=("$@"); break ;;
    *) echo "gpu_workstation.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command=(env ${gpus:+CUDA_VISIBLE_DEVICES=$gpus} XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 bnjax train "${train[@]}")
if [ "$dry" = 1 ]; then printf '%q ' "${command[@]}"; echo; else exec "${command[@]}"; fi
