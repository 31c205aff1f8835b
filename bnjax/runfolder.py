"""A run's folder over its life: claimed and locked, resumed from its newest readable
checkpoint, saved to, and known finished. Serves a run alone, each task of a multi-task run,
and each replica of a group alike (a lane each)."""
from __future__ import annotations

import contextlib
import json
import os

import jax
from absl import logging

from bnjax import checkpoint, distributed, initial_weights, runinfo
from bnjax import workdir as workdir_lib
from bnjax.errors import CheckpointError, ConfigError, DamagedCheckpointError, TrainingError
from bnjax.files import write_json
from bnjax.run import Lane, build_run
from bnjax.state import with_numbers_of


@contextlib.contextmanager
def prepared(configs: list, workdirs: list, overwrite: bool, branch: bool):
    """(lanes, states, saved) of runs ready to train, each from its own newest checkpoint (a
    group's may differ: bnjax.group brings them to one step), their workdirs claimed and their
    checkpoint managers open (the last saves are waited for on exit). Finished runs are lanes
    already ended."""
    if len(set(map(os.path.abspath, workdirs))) != len(workdirs):
        raise ConfigError(f"the runs of a group need a workdir each; got {workdirs}")
    lanes = _build_lanes(configs, workdirs, overwrite, branch)
    if all(lane.ended for lane in lanes):
        for lane in lanes:
            logging.info("%s holds a finished run of this config (%s); nothing to do. Use a "
                         "new --workdir, or --overwrite to train it again.", lane.workdir,
                         _outcome(lane.ended))
        yield lanes, [], []
        return
    chief = distributed.is_chief()
    with contextlib.ExitStack() as stack:
        if chief:
            for lane in lanes:
                stack.enter_context(_claim(lane.workdir, overwrite))
        distributed.barrier("workdir ready")
        for lane in lanes:
            if not lane.ended:
                lane.manager = checkpoint.open_manager(lane.workdir, lane.run.config.checkpoint)
                stack.callback(_finish_saves, lane.manager)
        states, saved = resume_each(lanes, branch)
        if chief:
            for lane in lanes:
                if not lane.ended:
                    write_json(os.path.join(lane.workdir, "run.json"), lane.description)
        yield lanes, states, saved


def _outcome(metrics: dict) -> str:
    if metrics.get("status") == "diverged":
        return f"diverged at step {metrics['diverged_at_step']}: {metrics['reason']}"
    return f"test accuracy {metrics['test_accuracy']:.4f}"


def _build_lanes(configs, workdirs, overwrite: bool, branch: bool = False) -> list[Lane]:
    """A lane per config, sharing the data where it does not depend on the seed. A branch of
    a finished run is refused: it would train nothing and relabel the result."""
    lanes, splits = [], None
    for config, workdir in zip(configs, workdirs):
        run, state = build_run(config, _frozen_init_to_continue(workdir, overwrite), splits)
        # in-memory splits are the same for every seed; host-augmented ones are keyed by it
        splits = None if run.train_data.augmented_on_host else (run.train_data, run.eval_data)
        # on the host: training calls donate the device state they get, and this one may serve
        # again (a restore target, a lane that catches up)
        lane = Lane(run, workdir, jax.device_get(state), run.describe())
        lane.ended = None if overwrite else _finished_metrics(workdir, lane.description)
        if branch and not overwrite and not lane.ended and _holds_finished_run(workdir):
            raise CheckpointError(f"{workdir} holds a finished run: a branch of it would train "
                                  "nothing and relabel its result. Branch from an earlier "
                                  "step's copy, or train the new config in a new --workdir.")
        lanes.append(lane)
    return lanes


def resume_each(lanes: list[Lane], branch: bool) -> tuple[list, list]:
    """Each lane's state and checkpoint metadata at its own newest readable checkpoint (ended
    lanes keep their fresh state: they never train again)."""
    states = [lane.fresh_state for lane in lanes]
    saved = [{} for _ in lanes]
    for index, lane in enumerate(lanes):
        if not lane.ended:
            states[index], saved[index] = resume(lane, branch)
    return states, saved


def resume(lane: Lane, branch: bool):
    """(state, that checkpoint's metadata) to continue the lane from: its newest readable
    checkpoint, or the fresh state and {}. A damaged newest checkpoint (a crash mid-write, a
    corrupt disk) falls back to the one before."""
    workdir, description = lane.workdir, lane.description
    run_json = os.path.join(workdir, "run.json")
    branches = []
    if os.path.exists(run_json):
        with open(run_json) as f:
            saved_run = json.load(f)
        checkpoint.check_same_run(saved_run, description, workdir, branch)
        branches = saved_run.get("branches", [])
    steps = sorted(lane.manager.all_steps(), reverse=True)
    for step in steps:
        try:
            saved = checkpoint.read_meta(lane.manager, step)
            changed = checkpoint.check_same_run(saved, description,
                                                f"{workdir} (checkpoint step {step})", branch)
            restored = with_numbers_of(checkpoint.restore_state(
                lane.manager, step, lane.fresh_state, saved["format"]), lane.fresh_state)
        except DamagedCheckpointError as error:
            logging.warning("%s; trying the checkpoint before it", error)
            continue
        for field, old, new in changed:
            logging.warning("branching from step %d: %s was %r, now %r", step, field, old, new)
        if changed:  # run.json keeps each segment's changes and the step it took over
            branches = branches + [{"at_step": step, "changes": [
                {"field": field, "was": old, "now": new} for field, old, new in changed]}]
        if branches:
            description["branches"] = branches
        logging.info("%s: resuming from the checkpoint at step %d", workdir, step)
        return restored, saved
    if steps:
        raise CheckpointError(f"none of the checkpoints in {workdir} ({steps}) can be read; "
                              "use --overwrite to set the run aside and start over")
    return lane.fresh_state, {}


def _finished_metrics(workdir: str, description: dict) -> dict | None:
    """The metrics of a finished (or diverged) run of the same config and base in `workdir`,
    or None. Reads only."""
    paths = [os.path.join(workdir, name) for name in ("run.json", "metrics.json")]
    if not all(os.path.exists(path) for path in paths):
        return None
    with open(paths[0]) as f:
        saved = json.load(f)
    with open(paths[1]) as f:
        metrics = json.load(f)
    same_config = not runinfo.differences_from_saved(saved["config"], description["config"])
    same_base = runinfo.base_sha256(saved) == runinfo.base_sha256(description)
    return metrics if same_config and same_base else None


def _holds_finished_run(workdir: str) -> bool:
    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("status") == "finished"


def _frozen_init_to_continue(workdir: str, overwrite: bool) -> str:
    """The generator of the run in `workdir` (an older run continues with its own), else the
    current one."""
    run_json = os.path.join(workdir, "run.json")
    if overwrite or not os.path.exists(run_json):
        return initial_weights.CURRENT
    with open(run_json) as f:
        return runinfo.frozen_init_of(json.load(f))


@contextlib.contextmanager
def _claim(workdir: str, overwrite: bool):
    """Create the workdir (setting an old run aside if asked) and hold its lock."""
    if overwrite:
        moved = workdir_lib.set_aside(workdir)
        if moved:
            logging.warning("--overwrite: the previous run in %s was moved to %s", workdir, moved)
    workdir_lib.create(workdir)
    with workdir_lib.locked(workdir):
        yield


def save(manager, step: int, state, meta: dict, metrics: dict | None) -> None:
    try:
        checkpoint.save(manager, step, state, meta, metrics)
    except Exception as error:  # a full disk or a vanished folder, here or from the last save
        # an asynchronous save reports its failure at the next one: say both
        raise TrainingError(f"saving a checkpoint failed at step {step} (this step's save or "
                            f"the one before it, still being written: {error}); the "
                            f"checkpoints completed before it in {manager.directory} are "
                            "intact. Free disk space or fix the folder, then rerun to "
                            "resume.") from None


def wait_for_saves(manager) -> None:
    try:
        manager.wait_until_finished()  # errors of asynchronous saves surface here
    except Exception as error:
        raise TrainingError(f"writing the last checkpoint failed ({error}); the checkpoints "
                            f"completed before it in {manager.directory} are intact. Free disk "
                            "space or fix the folder, then rerun to resume.") from None


def _finish_saves(manager) -> None:
    try:
        wait_for_saves(manager)
    finally:
        manager.close()
