#!/usr/bin/env bash
# Train on every GPU of this workstation (one process; bnjax's device mesh splits each batch
# across the GPUs), or on the ones in CUDA_VISIBLE_DEVICES. --dry-run prints the command.
#   bash launch/gpu_workstation.sh [--gpus=0,1] [--dry-run] -- TRAIN_FLAGS...
set -euo pipefail
gpus="" dry=0 train=()
source "$(dirname "$0")/lib/options.sh"
parse_options gpu_workstation.sh "gpus" "$@"
command=(env ${gpus:+CUDA_VISIBLE_DEVICES=$gpus} XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 bnjax train "${train[@]}")
if [ "$dry" = 1 ]; then printf '%q ' "${command[@]}"; echo; else exec "${command[@]}"; fi
