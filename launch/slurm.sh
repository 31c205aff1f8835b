#!/usr/bin/env bash
# Submit one bnjax training to Slurm on one node with its GPUs (one process; bnjax's device mesh
# splits each batch across them). Multi-node jobs need jax.distributed support, which bnjax does
# not have yet. --dry-run prints the batch script instead of submitting it.
#   bash launch/slurm.sh [--gpus=4] [--time=24:00:00] [--partition=P] [--dry-run] -- TRAIN_FLAGS...
# SIGTERM before the time limit (--signal) makes bnjax save a checkpoint; --requeue resubmits
# and the same command resumes.
set -euo pipefail
gpus=1 time="24:00:00" partition="" dry=0 train=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus=*) gpus=${1#*=} ;;
    --time=*) time=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --dry-run) dry=1 ;;
    --) shift; train=("$@"); break ;;
    *) echo "slurm.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
script="#!/usr/bin/env bash
#SBATCH --job-name=bnjax
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:$gpus
#SBATCH --time=$time
#SBATCH --signal=TERM@120
#SBATCH --requeue
${partition:+#SBATCH --partition=$partition
}cd $(pwd)
srun bnjax train $(printf '%q ' "${train[@]}")"
if [ "$dry" = 1 ]; then echo "$script"; else echo "$script" | sbatch; fi
