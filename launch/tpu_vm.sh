#!/usr/bin/env bash
# Create a single-host TPU VM, install bnjax there, train on it, and delete it.
#   bash launch/tpu_vm.sh create|run|delete --name=NAME --zone=ZONE [--type=v4-8] [--dry-run] -- BNJAX_TRAIN_FLAGS...
# `run` copies this checkout to the VM and runs `bnjax train BNJAX_TRAIN_FLAGS` there on all
# local chips (one process; the batch is split across the chips by bnjax's device mesh).
# Pod slices (several hosts) need multi-process jax.distributed support, which bnjax does not
# have yet: this script refuses them. --dry-run prints the gcloud commands instead of running.
set -euo pipefail
action=${1:-}; shift || true
name="" zone="" type="v4-8" version="tpu-ubuntu2204-base" dry=0 train=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --type=*) type=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --dry-run) dry=1 ;;
    --) shift; train=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$name" ] && [ -n "$zone" ] || { echo "tpu_vm.sh: --name and --zone are required" >&2; exit 2; }
case "$type" in
  v4-8|v5litepod-1|v5litepod-4|v5litepod-8|v5p-8|v6e-1|v6e-4|v6e-8|v3-8|v2-8) ;;
  *) echo "tpu_vm.sh: $type has more than one host; multi-host training is not supported yet" >&2
     exit 2 ;;
esac
do_run() { if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }
ssh() { do_run gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"; }
case "$action" in
  create)
    do_run gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$type" \
      --version="$version" ;;
  run)  # the committed tree only (git archive), not local virtualenvs or runs
    do_run git archive -o /tmp/bnjax-src.tar.gz HEAD
    do_run gcloud compute tpus tpu-vm scp --zone="$zone" --worker=all /tmp/bnjax-src.tar.gz \
      "$name":bnjax-src.tar.gz
    ssh "mkdir -p bnjax && tar -xzf bnjax-src.tar.gz -C bnjax && cd bnjax && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' && .venv/bin/bnjax train $(printf '%q ' "${train[@]}")" ;;
  delete)
    do_run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet ;;
  *) echo "usage: tpu_vm.sh create|run|delete --name=NAME --zone=ZONE [--type=v4-8] [--dry-run] -- TRAIN_FLAGS" >&2
     exit 2 ;;
esac
