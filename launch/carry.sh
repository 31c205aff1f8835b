#!/usr/bin/env bash
# Carry unfinished runs to the next machine through the repository. A run's folder is small (its
# checkpoints hold the trainable BatchNorm leaves, their momentum and the seed: ~0.4 MB each
# for ResNet-32), so a run longer than one working session travels as a tarball beside the docs
# and resumes wherever the next session starts (`launch/studies/reproduce.sh NAME` continues it).
#
#   RUNS=~/bnjax-runs/reproduction bash launch/carry.sh save NAME ...     # $RUNS/NAME -> tarball
#   RUNS=~/bnjax-runs/reproduction bash launch/carry.sh restore NAME ...  # tarball -> $RUNS/NAME
#
# The tarball is $CARRY/NAME.tar.gz, by default .carried/NAME.tar.gz (kept out of docs/; delete it
# when the run has finished and its results are committed).
#
# save may run while the run trains: orbax's unfinished checkpoint folders and the run's lock are
# left out, and a checkpoint deleted mid-read is retried. restore never overwrites a run folder.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-$HOME/bnjax-runs/reproduction}
CARRY=${CARRY:-.carried}  # where the tarballs live, relative to the repository
usage() { echo "usage: RUNS=... bash launch/carry.sh save|restore NAME ..." >&2; exit 2; }
[[ $# -ge 2 ]] || usage
verb=$1; shift

save() {
  local name=$1 tarball=$CARRY/$1.tar.gz
  [[ -d "$RUNS/$name/checkpoints" ]] || { echo "no run folder with checkpoints at $RUNS/$name" >&2; exit 1; }
  mkdir -p "$(dirname "$tarball")"  # a NAME may be a path: multitask's METHOD/TASK
  local error
  for attempt in 1 2 3; do
    if error=$(tar -czf "$tarball.tmp" -C "$RUNS" --exclude='.bnjax.lock' \
                 --exclude='*orbax-checkpoint-tmp*' "$name" 2>&1); then
      mv "$tarball.tmp" "$tarball"
      echo "$RUNS/$name -> $tarball ($(du -h "$tarball" | cut -f1))"
      return
    fi
    echo "tar of $RUNS/$name failed (attempt $attempt; a checkpoint saved or deleted while"\
         "read?); retrying" >&2
    sleep 5
  done
  echo "could not pack $RUNS/$name: tar said: $error" >&2
  echo "if the run kept changing it, pause it (kill -STOP) and save again" >&2
  rm -f "$tarball.tmp"
  exit 1
}

restore() {
  local name=$1 tarball=$CARRY/$1.tar.gz
  [[ -f "$tarball" ]] || { echo "no carried run $tarball" >&2; exit 1; }
  if [[ -e "$RUNS/$name" ]]; then
    echo "$RUNS/$name exists; left as it is (move it aside to restore $tarball)"
    return
  fi
  mkdir -p "$RUNS"  # tar makes the folders inside it
  tar -xzf "$tarball" -C "$RUNS"
  echo "$tarball -> $RUNS/$name"
}

case $verb in
  save|restore) for name in "$@"; do "$verb" "$name"; done ;;
  *) usage ;;
esac
