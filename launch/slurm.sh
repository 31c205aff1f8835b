#!/usr/bin/env bash
# Submit one bnjax training to Slurm: on one node, one process drives its GPUs (bnjax's device
# mesh splits each batch across them); with --nodes=N > 1, one process per node (srun starts N
# tasks) joins the others through --multi_process, JAX reading the job's layout from Slurm; the
# workdir must then be on a filesystem every node mounts. --dry-run prints the batch script
# instead of submitting it.
#   bash launch/slurm.sh [--nodes=1] [--gpus=4] [--time=24:00:00] [--partition=P] [--dry-run] -- TRAIN_FLAGS...
# SIGTERM before the time limit (--signal) makes bnjax save a checkpoint; --requeue resubmits
# and the same command resumes.
set -euo pipefail
nodes=1 gpus=1 time="24:00:00" partition="" dry=0 train=()
source "$(dirname "$0")/lib/options.sh"
parse_options slurm.sh "nodes gpus time partition" "$@"
case "$nodes" in
  ''|*[!0-9]*|0) echo "slurm.sh: --nodes=$nodes must be a positive number" >&2; exit 2 ;;
esac
multi=""
[ "$nodes" -gt 1 ] && multi="--multi_process "
script="#!/usr/bin/env bash
#SBATCH --job-name=bnjax
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:$gpus
#SBATCH --time=$time
#SBATCH --signal=TERM@120
#SBATCH --requeue
${partition:+#SBATCH --partition=$partition
}cd $(pwd)
srun bnjax train $multi$(printf '%q ' "${train[@]}")"
if [ "$dry" = 1 ]; then echo "$script"; else echo "$script" | sbatch; fi
