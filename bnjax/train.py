"""The training loop: config -> data -> model from seed -> partition -> jitted steps -> metrics."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time

import jax
import numpy as np
from absl import logging

from bnjax import config as config_lib
from bnjax import data as data_lib
from bnjax import (checkpoint, distributed, initial_weights, partition, replicas, runinfo,
                   summary, trained)
from bnjax import tasks as tasks_lib
from bnjax import engine as engine_lib
from bnjax import workdir as workdir_lib
from bnjax.data.batches import steps_per_epoch as count_steps_per_epoch
from bnjax.data.batches import prefetch
from bnjax.errors import (CheckpointError, ConfigError, DamagedCheckpointError, DataError,
                          TrainingError)
from bnjax.files import write_json
from bnjax.metrics import Pace, Reporter, Throughput, Window
from bnjax.models import parse_name
from bnjax.timetable import Timetable
from bnjax.state import ModelSetup, initialize, with_numbers_of
from bnjax.step import make_mesh


@dataclasses.dataclass
class Run:
    """Everything a run derives from its config before the first step."""
    config: object
    setup: ModelSetup
    train_data: data_lib.Dataset
    eval_data: data_lib.Dataset
    timetable: Timetable

    def describe(self) -> dict:
        return runinfo.describe(self.config, self.setup.frozen_checksum, self.setup.frozen_init,
                                self.train_data.num_classes, self.train_data.image_shape,
                                self.train_data.class_names,
                                {"train": len(self.train_data), "eval": len(self.eval_data)},
                                self.setup.base)


def check_devices(config, device_count: int) -> None:
    if config.train.batch_size % device_count:
        raise ConfigError(f"config field 'train.batch_size' = {config.train.batch_size} is "
                          f"invalid: it must be divisible by the {device_count} devices")


def build_run(config, frozen_init: str = initial_weights.CURRENT, splits=None):
    """Validate, load data (or take `splits`, (train, eval) already loaded for this config),
    init the model from the seed (and model.base) and split it. Writes nothing."""
    config_lib.validate(config)
    check_devices(config, jax.device_count())
    train_data, eval_data = splits or data_lib.load_splits(
        config.data, parse_name(config.model.name).image_size, config.seed)
    per_epoch = count_steps_per_epoch(len(train_data), config.train.batch_size)
    if per_epoch == 0:
        raise DataError(f"the training split has {len(train_data)} examples, fewer than "
                        f"train.batch_size = {config.train.batch_size}; lower the batch size")
    base = trained.load_base(config.model.base) if config.model.base else None
    setup, state = initialize(config, train_data.num_classes, train_data.image_shape, per_epoch,
                              frozen_init, base)
    run = Run(config=config, setup=setup, train_data=train_data, eval_data=eval_data,
              timetable=Timetable.from_config(config, per_epoch))
    return run, state


class Interrupted(Exception):
    """Training stopped early (a signal, or stop_at_step) after saving a checkpoint."""

    def __init__(self, step: int, signum: int | None):
        reason = signal.Signals(signum).name if signum else "stop_at_step"
        super().__init__(f"stopped at step {step} ({reason}); a checkpoint was saved. Run the "
                         "same command again to resume.")
        self.step, self.signum = step, signum


class StopStepPassed(Interrupted):
    """--stop_at_step names a step the run has already passed: nothing is trained."""

    def __init__(self, step: int, stop_at_step: int):
        Exception.__init__(self, f"--stop_at_step={stop_at_step} has passed: the run resumes at "
                                 f"step {step}, so nothing was trained. Give a later step, or "
                                 "leave the flag out to train to the end.")
        self.step, self.signum = step, None


class Diverged(TrainingError):
    """A run alone became non-finite; `metrics` is its metrics.json saying so."""

    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


@contextlib.contextmanager
def signals_received():
    """A list that SIGTERM/SIGINT append to instead of killing the process mid-step."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _resume(workdir: str, manager, state, description: dict, branch: bool):
    """(state, that checkpoint's metadata) to continue from: the newest readable checkpoint,
    or the fresh state and {}.

    A damaged newest checkpoint (a crash mid-write, a corrupt disk) falls back to the one before.
    """
    run_json = os.path.join(workdir, "run.json")
    branches = []
    if os.path.exists(run_json):
        with open(run_json) as f:
            saved_run = json.load(f)
        checkpoint.check_same_run(saved_run, description, workdir, branch)
        branches = saved_run.get("branches", [])
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        where = f"{workdir} (checkpoint step {step})"
        try:
            saved = checkpoint.read_meta(manager, step)
            changed = checkpoint.check_same_run(saved, description, where, branch)
            restored = with_numbers_of(
                checkpoint.restore_state(manager, step, state, saved["format"]), state)
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
    return state, {}


@dataclasses.dataclass
class Lane:
    """One run of a training program (which trains one run, or a group of replicas): its
    folder, its bookkeeping, and `ended`, its metrics once it finished or diverged."""
    run: Run
    workdir: str
    fresh_state: object
    description: dict
    manager: object = None
    reporter: Reporter | None = None
    history: list = dataclasses.field(default_factory=list)
    train_values: dict | None = None  # the last closed log window's means
    ended: dict | None = None


def _run_fields(run: Run, history: list) -> dict:
    """What metrics.json says of a run however it ended."""
    config = run.config
    return {"epochs": config.train.epochs, "steps": run.timetable.total_steps,
            "trainable_params": run.setup.trainable_params, "total_params": run.setup.total_params,
            "model": config.model.name, "mode": config.train.mode, "seed": config.seed,
            "history": history, "frozen_checksum": run.setup.frozen_checksum}


def _final_metrics(run: Run, history: list, speed: float | None, wall_time: float,
                   replicas: int) -> dict:
    final = history[-1]
    return {"status": "finished",
            "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
            "train_loss": final["train_loss"], "train_accuracy": final["train_accuracy"],
            "train_images_per_s": speed, "wall_time_s": wall_time, "replicas": replicas,
            **_run_fields(run, history)}


def _diverged_metrics(run: Run, history: list, step: int, reason: str) -> dict:
    return {"status": "diverged", "diverged_at_step": step, "reason": reason,
            "test_accuracy": None, "test_loss": None, "train_loss": None,
            "train_accuracy": None, **_run_fields(run, history)}


def train_and_evaluate(config, workdir: str, stop_at_step: int | None = None,
                       overwrite: bool = False, branch: bool = False) -> dict:
    """Train as configured (resuming from the workdir's latest checkpoint); return the metrics.

    stop_at_step: save a checkpoint after that global step (with train.steps_per_call > 1, at
    the end of the call that reaches it) and raise Interrupted, as a SIGTERM would; the next call
    continues exactly where this one stopped. overwrite: set a run already in the workdir aside
    (renamed, not deleted) and start over. branch: continue the workdir's latest checkpoint
    although the config changed (the frozen weights must still match). A loss or state that
    becomes non-finite raises Diverged; nothing non-finite is ever saved.
    """
    return train_group([config], [workdir], stop_at_step, overwrite, branch)[0]


def train_group(configs: list, workdirs: list, stop_at_step: int | None = None,
                overwrite: bool = False, branch: bool = False) -> list[dict]:
    """Train runs that differ only in bnjax.replicas.REPLICA_FIELDS as one compiled program,
    each in its own workdir exactly as train_and_evaluate would (one config: that). Returns
    each run's metrics. A replica that becomes non-finite ends alone: its metrics.json says
    diverged, and the others go on. Stops and resumes are those of a single run."""
    if len(configs) > 1:
        for config in configs:
            config_lib.validate(config)
        replicas.check_group(configs)
    with signals_received() as received, _prepared(configs, workdirs, overwrite,
                                                   branch, received) as (lanes, states, saved):
        if all(lane.ended for lane in lanes):
            return [lane.ended for lane in lanes]
        return _to_the_end(_training(lanes, states, saved, stop_at_step, len(lanes) == 1,
                                     received))


def train_tasks(config, workdir: str, stop_at_step: int | None = None, overwrite: bool = False,
                branch: bool = False) -> dict[str, dict]:
    """Train the K tasks of config.data.tasks on one frozen backbone (the seed's, or the
    base's), each with its own data, classes, output layer, BatchNorm and epochs, in its own
    run folder WORKDIR/NAME that is an ordinary run's: its config is the task's run alone
    (bnjax.tasks.task_config). Their calls interleave one by one, each task's program the one
    its run alone compiles (tasks of equal shapes share it): a task computes exactly what it
    computes alone. A task that diverges ends alone; a signal or stop_at_step stops every
    task at its next call, each saved. Returns {name: metrics}."""
    config_lib.validate(config)
    named = tasks_lib.parse(config.data.tasks)
    configs = [tasks_lib.task_config(config, source) for _, source in named]
    if distributed.is_chief():
        tasks_lib.claim(workdir, [name for name, _ in named])
    with signals_received() as received, contextlib.ExitStack() as stack:
        prepared = [stack.enter_context(_prepared([task], [os.path.join(workdir, name)],
                                                  overwrite, branch, received))
                    for (name, _), task in zip(named, configs)]
        tasks_lib.check_shared_backbone([lanes[0].run for lanes, _, _ in prepared],
                                        [name for name, _ in named])
        logging.info("%d tasks share one program and the frozen backbone of %s: %s",
                     len(named), f"the base {config.model.base}" if config.model.base
                     else f"seed {config.seed}", ", ".join(
                         f"{name} ({lanes[0].run.train_data.num_classes} classes, "
                         f"{lanes[0].run.timetable.total_steps} steps)"
                         for (name, _), (lanes, _, _) in zip(named, prepared)))
        trainings = {name: _training(lanes, states, saved, stop_at_step, False, received,
                                     name=name)
                     for (name, _), (lanes, states, saved) in zip(named, prepared)
                     if not lanes[0].ended}
        results = {name: lanes[0].ended for (name, _), (lanes, _, _) in zip(named, prepared)}
        results.update(_interleave(trainings))
        return results


def _to_the_end(training):
    """Run a _training generator to its end; its return value."""
    while True:
        try:
            next(training)
        except StopIteration as end:
            return end.value


def _interleave(trainings: dict) -> dict:
    """Run _training generators one call each in turn until every one has ended; {name: its
    first lane's metrics}. A stop (a signal, stop_at_step) reaches every task at its next
    call; the first is raised once all have stopped or finished."""
    results, stopped = {}, []
    while trainings:
        for name, training in list(trainings.items()):
            try:
                next(training)
            except StopIteration as end:
                results[name] = end.value[0]
                del trainings[name]
            except Interrupted as stop:
                stopped.append(stop)
                del trainings[name]
    if stopped:
        raise stopped[0]
    return results


@contextlib.contextmanager
def _prepared(configs: list, workdirs: list, overwrite: bool, branch: bool, received: list):
    """(lanes, states, saved) of runs ready to train from one step, their workdirs claimed
    and their checkpoint managers open (the last saves are waited for on exit). Finished runs
    are lanes already ended."""
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
                stack.enter_context(_claim_workdir(lane.workdir, overwrite))
        distributed.barrier("workdir ready")
        for lane in lanes:
            if not lane.ended:
                lane.manager = checkpoint.open_manager(lane.workdir, lane.run.config.checkpoint)
                stack.callback(_finish_saves, lane.manager)
        states, saved = _resume_each(lanes, branch)
        if chief:
            for lane in lanes:
                if not lane.ended:
                    write_json(os.path.join(lane.workdir, "run.json"), lane.description)
        _catch_up(lanes, states, saved, branch, received)
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


def _resume_each(lanes: list[Lane], branch: bool) -> tuple[list, list]:
    """Each lane's state and checkpoint metadata at its own newest readable checkpoint (ended
    lanes keep their fresh state: they never train again)."""
    states = [lane.fresh_state for lane in lanes]
    saved = [{} for _ in lanes]
    for index, lane in enumerate(lanes):
        if not lane.ended:
            states[index], saved[index] = _resume(lane.workdir, lane.manager, lane.fresh_state,
                                                  lane.description, branch)
    return states, saved


def _catch_up(lanes: list[Lane], states: list, saved: list, branch: bool,
              received: list) -> None:
    """Bring every unfinished lane to one step, in place: the lanes that resume behind the
    others (a run stopped alone and now joining a group, or a group killed mid-save) train
    alone up to the next step another lane holds, until all hold the most advanced one's.
    No checkpoint is deleted. A signal during it stops the group as it would stop training."""
    for _ in range(2 * len(lanes) + 1):
        steps = {index: int(states[index].step) for index, lane in enumerate(lanes)
                 if not lane.ended}
        if len(set(steps.values())) <= 1:
            return
        lowest = min(steps.values())
        target = min(step for step in steps.values() if step > lowest)
        behind = [index for index, step in steps.items() if step == lowest]
        logging.warning("the group's runs resume at steps %s; %s train%s from step %d to step "
                        "%d first", ", ".join(f"{lanes[i].workdir}: {s}" for i, s in
                                             steps.items()),
                        ", ".join(lanes[i].workdir for i in behind),
                        "s" if len(behind) == 1 else "", lowest, target)
        try:
            _to_the_end(_training([lanes[i] for i in behind], [states[i] for i in behind],
                                  [saved[i] for i in behind], target, False, received))
        except Interrupted as stopped:
            if stopped.signum is not None:
                raise
        for index in behind:
            if not lanes[index].ended:
                states[index], saved[index] = _resume(
                    lanes[index].workdir, lanes[index].manager, lanes[index].fresh_state,
                    lanes[index].description, branch)
    raise CheckpointError("the group's runs could not be brought to one step ("
                          f"{sorted(set(steps.values()))}); train them one at a time "
                          "(bnjax sweep --replicas=1) to finish them")


def _finished_metrics(workdir: str, description: dict) -> dict | None:
    """The metrics of a finished (or diverged) run of the same config in `workdir`, or None.
    Reads only."""
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
def _claim_workdir(workdir: str, overwrite: bool):
    """Create the workdir (setting an old run aside if asked) and hold its lock."""
    if overwrite:
        moved = workdir_lib.set_aside(workdir)
        if moved:
            logging.warning("--overwrite: the previous run in %s was moved to %s", workdir, moved)
    workdir_lib.create(workdir)
    with workdir_lib.locked(workdir):
        yield


def _wait_for_saves(manager) -> None:
    try:
        manager.wait_until_finished()  # errors of asynchronous saves surface here
    except Exception as error:
        raise TrainingError(f"writing the last checkpoint failed ({error}); the checkpoints "
                            f"completed before it in {manager.directory} are intact. Free disk "
                            "space or fix the folder, then rerun to resume.") from None


def _finish_saves(manager) -> None:
    try:
        _wait_for_saves(manager)
    finally:
        manager.close()


def _end_diverged(lanes: list[Lane], values: list, finite, first_step: int, last_step: int,
                  alone: bool) -> None:
    """End every lane whose window loss or whose state (trainable leaves, statistics, optimizer
    state) is no longer finite, before anything of it is logged or saved. A group writes the
    lane's metrics.json saying so; a run alone raises Diverged."""
    for index, lane in enumerate(lanes):
        loss = values[index]["loss"]
        if lane.ended or (np.isfinite(loss) and finite[index]):
            continue
        last_saved = lane.manager.latest_step()
        # every saved step was checked finite: the fault came after the last save
        since = max(first_step, (last_saved or 0) + 1)
        reason = (f"the training loss became {loss} within steps {since}-{last_step}"
                  if not np.isfinite(loss) else
                  f"the trainable parameters or optimizer state became non-finite by step "
                  f"{last_step}")
        kept = (f"the last checkpoint (step {last_saved}) is intact" if last_saved is not None
                else "no checkpoint had been saved yet")
        lane.ended = _diverged_metrics(lane.run, lane.history, last_step, reason)
        lr = lane.run.config.train.lr
        if alone:
            raise Diverged(f"{reason}; training stopped before saving that state, {kept}. "
                           f"Lower train.lr (it is {lr}) and rerun with --branch to continue "
                           "from that checkpoint, or check the data.", lane.ended)
        logging.warning("replica %s diverged (lr %s): %s; it stops, the others go on",
                        lane.workdir, lr, reason)
        if distributed.is_chief():
            write_json(os.path.join(lane.workdir, "metrics.json"), lane.ended)


def _save(manager, step: int, state, meta: dict, metrics: dict | None) -> None:
    try:
        checkpoint.save(manager, step, state, meta, metrics)
    except Exception as error:  # a full disk or a vanished folder, here or from the last save
        # an asynchronous save reports its failure at the next one: say both
        raise TrainingError(f"saving a checkpoint failed at step {step} (this step's save or "
                            f"the one before it, still being written: {error}); the "
                            f"checkpoints completed before it in {manager.directory} are "
                            "intact. Free disk space or fix the folder, then rerun to "
                            "resume.") from None


def _log_group_progress(lanes, done: int, values: list, rate: float, pace: Pace) -> None:
    live = [(lane, value) for lane, value in zip(lanes, values) if not lane.ended]
    losses = " ".join(f"{value['loss']:.3f}" for _, value in live)
    accuracies = " ".join(f"{value['accuracy']:.3f}" for _, value in live)
    total = pace.total_steps
    logging.info("step %d/%d (%.1f%%)  %d of %d replicas  loss %s  acc %s  %.0f img/s each, "
                 "%.0f in all  eta %s", done, total, 100.0 * done / total, len(live),
                 len(lanes), losses, accuracies, rate, rate * len(live),
                 pace.eta(done))


def _training(lanes: list[Lane], states: list, saved: list, stop_at_step, alone: bool,
              received: list, name: str = ""):
    """Train the lanes from `states` (all at one step) to the end, yielding after each call;
    returns each lane's metrics. `saved` is each one's checkpoint metadata ({} for a fresh
    start): the history, the open log window and the time spent so far. alone: a run by
    itself (its divergence raises Diverged). received: the signals that stop it (at the next
    call's end, saved). name: a task's, before its progress lines."""
    run = lanes[0].run
    config, timetable = run.config, run.timetable
    live = [index for index, lane in enumerate(lanes) if not lane.ended]
    first_saved = saved[live[0]]
    timing = first_saved.get("timing")
    start_step = int(states[live[0]].step)
    if stop_at_step is not None and stop_at_step <= start_step:
        raise StopStepPassed(start_step, stop_at_step)
    single = len(lanes) == 1
    chief = distributed.is_chief()
    for index in live if not single else ():
        logging.info("%s: step %d of %d", lanes[index].workdir, int(states[index].step),
                     timetable.total_steps)
    for index in live:
        lanes[index].history = saved[index].get("history", [])
    logging.info("%s, mode %s: %d of %d parameters trainable; step %d of %d (%d epochs x %d)%s",
                 config.model.name, config.train.mode, run.setup.trainable_params,
                 run.setup.total_params, start_step, timetable.total_steps, config.train.epochs,
                 timetable.steps_per_epoch, "" if single else f"; {len(lanes)} replicas")
    if chief and start_step == 0:  # once per workdir, not on every resume
        logging.info("parameters:\n%s", summary.parameter_table(
            partition.merge(states[0].trainable, run.setup.frozen), run.setup.param_labels))
    mesh = make_mesh()
    engine = engine_lib.make_engine([lane.run for lane in lanes], mesh)
    state = engine.place(states)
    for lane in lanes:
        if not lane.ended:
            lane.reporter = Reporter(lane.workdir, timetable.total_steps,
                                     timetable.steps_per_epoch, start_step, chief=chief,
                                     progress=single, name=name)
    batch = config.train.batch_size
    carried = [saved[index].get("open_window") or first_saved.get("open_window")
               for index in range(len(lanes))]
    window, clock = Window(len(lanes), carried), Throughput(timing)
    group_pace = Pace(timetable.total_steps)  # for a group's line; a run alone's is its Reporter's
    started = time.time() - (timing["wall_s"] if timing else 0.0)  # wall time up to checkpoints
    calls = prefetch(engine.calls(start_step))
    profiler = _Profiler(config.log.profile_steps, os.path.join(lanes[0].workdir, "profile"))
    with contextlib.closing(calls), contextlib.ExitStack() as reporters, \
            contextlib.closing(profiler):
        for lane in lanes:
            if lane.reporter:
                reporters.callback(lane.reporter.close)
        for steps, images, targets in calls:
            profiler.before(steps[0] + 1, steps[-1] + 1)
            state, metrics = engine.run_call(state, steps, images, targets,
                                             [not lane.ended for lane in lanes])
            profiler.after(steps[-1] + 1, metrics)
            window.add(metrics, len(steps))
            done = steps[-1] + 1
            due = timetable.after(done)
            # A signal may reach one host of many: all stop at the same step.
            stopping = (distributed.any_process(bool(received))
                        or (stop_at_step is not None and steps[0] < stop_at_step <= done))
            if due.log or due.save or stopping:  # nothing non-finite is logged or saved
                values = window.means()  # one host sync
                _end_diverged(lanes, values, engine.finite(state), done - len(window) + 1,
                              done, alone)
                if all(lane.ended for lane in lanes):
                    logging.warning("every replica diverged by step %d", done)
                    return [lane.ended for lane in lanes]
            if due.log:
                rate = clock.window(batch * window.new_steps)
                for lane, value in zip(lanes, values):
                    if not lane.ended:
                        lane.reporter.train_window(done, value, rate)
                        lane.train_values = value
                if not single:
                    _log_group_progress(lanes, done, values, rate, group_pace)
                window = Window(len(lanes))
            results = [None] * len(lanes)
            if due.evaluate:
                with clock.paused():
                    results = engine.evaluate(state)
                for lane, result in zip(lanes, results):
                    if not lane.ended:
                        lane.reporter.eval_result(done, due.epoch, result)
                        lane.history.append({
                            "epoch": due.epoch, "step": done,
                            "train_loss": lane.train_values["loss"],
                            "train_accuracy": lane.train_values["accuracy"],
                            "test_loss": result["loss"], "test_accuracy": result["accuracy"]})
                if not single:
                    logging.info("epoch %d  test accuracy %s", due.epoch, " ".join(
                        f"{result['accuracy']:.4f}" for lane, result in zip(lanes, results)
                        if not lane.ended))
            if stopping:  # the save below can take seconds: say why nothing else is printed
                logging.info("%ssaving a checkpoint at step %d, then stopping",
                             f"{name}: " if name else "", done)
            if due.save or stopping:
                with clock.paused():
                    timing = {"wall_s": time.time() - started, **clock.carry()}
                    open_windows = window.carries()  # one host sync for every lane
                    for index, lane in enumerate(lanes):
                        if lane.ended:
                            continue
                        meta = {**lane.description, "step": done, "history": lane.history,
                                "open_window": open_windows[index], "timing": timing}
                        _save(lane.manager, done, engine.replica_state(state, index), meta,
                              {"test_accuracy": results[index]["accuracy"]}
                              if results[index] else None)
            if stopping:
                for lane in lanes:
                    if lane.manager and not lane.ended:
                        lane.manager.wait_until_finished()
                raise Interrupted(done, received[0] if received else None)
            yield

    speed, wall_time = clock.overall(), time.time() - started
    for lane in lanes:  # the run is finished once its last checkpoint is complete
        if not lane.ended:
            _wait_for_saves(lane.manager)
    for lane in lanes:
        if lane.ended:
            continue
        lane.ended = _final_metrics(lane.run, lane.history, speed, wall_time, len(lanes))
        if chief:
            write_json(os.path.join(lane.workdir, "metrics.json"), lane.ended)
        logging.info("%s done: test accuracy %.4f after %d epochs", lane.workdir,
                     lane.ended["test_accuracy"], config.train.epochs)
    return [lane.ended for lane in lanes]


class _Profiler:
    """jax.profiler traces of the calls that run steps first..last (1-based, as logged) of
    log.profile_steps, into `folder` (TensorBoard's profile tab, or Perfetto)."""

    def __init__(self, steps: tuple, folder: str):
        self.first, self.last = tuple(steps) or (None, None)
        self.folder, self.tracing, self.done = folder, False, not steps

    def before(self, first_step_of_call: int, last_step_of_call: int) -> None:
        if (not self.done and not self.tracing and last_step_of_call >= self.first
                and first_step_of_call <= self.last):
            jax.profiler.start_trace(self.folder)
            self.tracing = True

    def after(self, last_step_of_call: int, metrics) -> None:
        if self.tracing and last_step_of_call >= self.last:
            jax.block_until_ready(metrics)  # the traced calls' device work belongs in the trace
            self.close()

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            logging.info("wrote a profile of steps %d-%d to %s", self.first, self.last,
                         self.folder)
        self.tracing, self.done = False, True


