"""Orbax checkpoints that hold only what training changed, and the checks made on restore.

A checkpoint step holds the TrainState (trainable leaves, BatchNorm statistics, optimizer state,
step) and JSON metadata: the run description of bnjax.runinfo (seed, config, versions, PRNG
settings, the generator and checksum of the frozen weights) plus the per-epoch history. The
position in the data stream is the step itself (bnjax.data.batches). Frozen weights are never
written: on restore they are regenerated from the seed and must match the saved checksum bit
for bit.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from bnjax import runinfo
from bnjax.errors import CheckpointError, DamagedCheckpointError

# 2: records frozen_init (bnjax.initial_weights); 3: the optimizer state holds its numbers
# (optax.inject_hyperparams around the optimizer of formats 1 and 2)
FORMAT = "bnjax-checkpoint-3"
BARE_OPTIMIZER_FORMATS = ("bnjax-checkpoint-1", "bnjax-checkpoint-2")
READABLE_FORMATS = (*BARE_OPTIMIZER_FORMATS, FORMAT)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def open_manager(workdir: str, checkpoint_config=None):
    """A CheckpointManager keeping the last `keep_last` steps and the `keep_best` by accuracy.

    Without a checkpoint_config it only reads: it creates nothing and deletes nothing.
    """
    if checkpoint_config is None:
        keep = [policies.LatestN(n=None)]
    else:
        keep = [policies.LatestN(n=checkpoint_config.keep_last)]
        if checkpoint_config.keep_best:
            keep.append(policies.BestN(get_metric_fn=lambda m: m["test_accuracy"],
                                       n=checkpoint_config.keep_best,
                                       keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=True, create=checkpoint_config is not None)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=("state", "meta"))


def save(manager, step: int, state, meta: dict, metrics: dict | None = None) -> None:
    """Start an asynchronous save of `state` and `meta` at `step`."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave({**meta, "format": FORMAT})),
                 metrics=metrics, force=True)


def read_meta(manager, step: int) -> dict:
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as error:  # orbax and tensorstore raise many types for damaged files
        raise DamagedCheckpointError(f"the metadata of checkpoint step {step} in "
                                     f"{manager.directory} cannot be read "
                                     f"({str(error).splitlines()[0][:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{checkpoint_dir(manager.directory)} step {step} is not a bnjax "
                              f"checkpoint (format {meta.get('format')!r}, expected {FORMAT})")
    return meta


def restore_state(manager, step: int, target_state, saved_format: str = FORMAT):
    """The saved TrainState, shaped and placed like `target_state`."""
    try:
        if saved_format in BARE_OPTIMIZER_FORMATS:
            return _restore_bare_optimizer(manager, step, target_state)
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state)))["state"]
    except Exception as error:  # a changed model or mode, or damaged array files
        first_line = str(error).splitlines()[0][:200]
        why = ("cannot be restored for this model and mode" if "do not match" in first_line
               else "is damaged or incomplete")
        raise DamagedCheckpointError(f"checkpoint step {step} in {manager.directory} {why} "
                                     f"({first_line})") from None


def _restore_bare_optimizer(manager, step: int, target_state):
    """A checkpoint of formats 1-2, which saved the optimizer state without the numbers
    around it: read as saved, each leaf taken by its path into the current inner state (the
    same leaves; the transforms added since hold none), the step as the count."""
    saved = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    wrapper = target_state.opt_state
    inner = target_state.replace(opt_state=wrapper.inner_state)

    def saved_leaf(path, target):
        node = saved
        for key in path:
            name = getattr(key, "name", getattr(key, "key", getattr(key, "idx", None)))
            node = node[name] if isinstance(node, dict) and name in node else \
                node[str(name)] if isinstance(node, dict) else node[int(name)]
        return np.asarray(node, target.dtype)

    restored = jax.tree_util.tree_map_with_path(saved_leaf, inner)
    return restored.replace(opt_state=wrapper._replace(
        count=np.asarray(restored.step, wrapper.count.dtype), inner_state=restored.opt_state))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_same_run(saved: dict, current: dict, where: str, branch: bool = False) -> list:
    """Refuse to continue a run whose config, PRNG settings or frozen weights differ.

    branch=True accepts config and data changes (returned as [(field, saved, now)]) but never
    other frozen weights.
    """
    differences = runinfo.differences_from_saved(saved["config"], current["config"])
    if differences and not branch:
        listed = "; ".join(f"{field}: saved {old!r}, now {new!r}"
                           for field, old, new in differences[:6])
        raise CheckpointError(f"{where} holds a run with a different config ({listed}). Use a "
                              "new --workdir; or --branch to continue this run's checkpoint "
                              "with the new config; or --overwrite to set the old run aside "
                              "and start over.")
    data = runinfo.data_differences(saved, current)
    if data and not branch:
        what, old, new = data[0]
        raise CheckpointError(f"{where} was trained on other data: {what} were {_short(old)}, "
                              f"now {_short(new)} (a renamed class shifts every label). Point "
                              "data.source at the run's data; or --branch to continue on this "
                              "data all the same; or use a new --workdir.")
    differences = differences + data
    runinfo.check_same_prng(saved, current, where)
    runinfo.check_same_weights(saved, current, where)
    return differences
