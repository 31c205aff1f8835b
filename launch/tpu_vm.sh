#!/usr/bin/env bash
# Create a TPU VM (one host or a pod slice of several), install bnjax there, train, and delete it.
#   bash launch/tpu_vm.sh create|run|delete --name=NAME --zone=ZONE [--type=v4-8] [--dry-run] -- BNJAX_TRAIN_FLAGS...
# `run` copies the committed checkout to every worker and starts `bnjax train BNJAX_TRAIN_FLAGS`
# on all of them at once (gcloud ... ssh --worker=all). On one host that is one process using
# every local chip; on a pod slice (more than 8 in the type's name, e.g. v4-32, v5litepod-16)
# each host runs one process with --multi_process, JAX finds the other hosts itself, and the
# workdir must be on storage every host mounts (e.g. a Filestore NFS share).
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail
action=${1:-}; shift || true
name="" zone="" type="v4-8" version="tpu-ubuntu2204-base" dry=0 train=()
source "$(dirname "$0")/lib/options.sh"
parse_options tpu_vm.sh "name zone type version" "$@"
[ -n "$name" ] && [ -n "$zone" ] || { echo "tpu_vm.sh: --name and --zone are required" >&2; exit 2; }
size=${type##*-}
case "$size" in
  ''|*[!0-9]*) echo "tpu_vm.sh: --type=$type is not an accelerator type such as v4-8 or v5litepod-16" >&2
     exit 2 ;;
esac
multi=()
[ "$size" -gt 8 ] && multi=(--multi_process)  # a pod slice: one process per host
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
    ssh "mkdir -p bnjax && tar -xzf bnjax-src.tar.gz -C bnjax && cd bnjax && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]' && .venv/bin/bnjax train ${multi[*]:+${multi[*]} }$(printf '%q ' "${train[@]}")" ;;
  delete)
    do_run gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet ;;
  *) echo "usage: tpu_vm.sh create|run|delete --name=NAME --zone=ZONE [--type=v4-8] [--dry-run] -- TRAIN_FLAGS" >&2
     exit 2 ;;
esac
