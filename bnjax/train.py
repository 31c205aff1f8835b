"""The training loop: set up, resume, step, log, evaluate, save, stop.

One loop trains a run alone (train_and_evaluate), the replicas of a group (bnjax.group) and
the tasks of a multi-task run (bnjax.multitask): each run is a lane (bnjax.run.Lane) of one compiled
program (bnjax.engine), in its own folder (bnjax.runfolder).
"""
from __future__ import annotations

import contextlib
import os
import time

import numpy as np
from absl import logging

from bnjax import distributed, partition, runfolder, summary
from bnjax import engine as engine_lib
from bnjax.data.batches import prefetch
from bnjax.files import write_json
from bnjax.metrics import Pace, Profiler, Reporter, Throughput, Window, log_group_progress
from bnjax.run import (Diverged, Interrupted, Lane, Run, StopStepPassed, build_run,  # noqa: F401
                       check_devices, diverged_metrics, final_metrics, signals_received)
from bnjax.step import make_mesh


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
    with signals_received() as received, runfolder.prepared(
            [config], [workdir], overwrite, branch) as (lanes, states, saved):
        if lanes[0].ended:
            return lanes[0].ended
        return to_the_end(training(lanes, states, saved, stop_at_step, True, received))[0]


def to_the_end(training_calls):
    """Run a `training` generator to its end; its return value."""
    while True:
        try:
            next(training_calls)
        except StopIteration as end:
            return end.value


def training(lanes: list[Lane], states: list, saved: list, stop_at_step, alone: bool,
             received: list, name: str = ""):
    """Train the lanes from `states` (all at one step) to the end, yielding after each call;
    returns each lane's metrics. `saved` is each one's checkpoint metadata ({} for a fresh
    start). alone: a run by itself (its divergence raises Diverged). received: the signals that
    stop it (at the next call's end, saved). name: the tasks', before their progress lines."""
    loop = _Loop(lanes, states, saved, name)
    if stop_at_step is not None and stop_at_step <= loop.start_step:
        raise StopStepPassed(loop.start_step, stop_at_step)
    loop.announce()
    calls = prefetch(loop.engine.calls(loop.start_step))
    profiler = Profiler(loop.config.log.profile_steps,
                        os.path.join(lanes[0].workdir, "profile"))
    with contextlib.closing(calls), contextlib.closing(profiler), loop.reporting():
        for steps, images, targets in calls:
            profiler.before(steps[0] + 1, steps[-1] + 1)
            metrics = loop.step(steps, images, targets)
            profiler.after(steps[-1] + 1, metrics)
            done = steps[-1] + 1
            due = loop.timetable.after(done)
            # A signal may reach one host of many: all stop at the same step.
            stopping = (distributed.any_process(bool(received))
                        or (stop_at_step is not None and steps[0] < stop_at_step <= done))
            if (due.log or due.save or stopping) and loop.all_diverged(done, alone):
                return [lane.ended for lane in lanes]
            if due.log:
                loop.log(done)
            results = loop.evaluate(done, due.epoch) if due.evaluate else [None] * len(lanes)
            if stopping:  # the save below can take seconds: say why nothing else is printed
                logging.info("%ssaving a checkpoint at step %d, then stopping",
                             f"{name}: " if name else "", done)
            if due.save or stopping:
                loop.save(done, results)
            if stopping:
                loop.wait_for_saves()
                raise Interrupted(done, received[0] if received else None)
            yield
    return loop.finish()


class _Loop:
    """What the training loop holds between calls: the lanes' device state, the open log
    window, the clock; and what it does at a step that logs, evaluates or saves."""

    def __init__(self, lanes: list[Lane], states: list, saved: list, name: str):
        run = lanes[0].run
        self.lanes, self.name, self.run = lanes, name, run
        self.config, self.timetable = run.config, run.timetable
        self.live = [index for index, lane in enumerate(lanes) if not lane.ended]
        first_saved = saved[self.live[0]]
        self.start_step = int(states[self.live[0]].step)
        self.states = states
        for index in self.live:
            lanes[index].history = saved[index].get("history", [])
        self.engine = engine_lib.make_engine([lane.run for lane in lanes], make_mesh())
        self.state = self.engine.place(states)
        timing = first_saved.get("timing")
        carried = [saved[index].get("open_window") or first_saved.get("open_window")
                   for index in range(len(lanes))]
        self.window, self.clock = Window(len(lanes), carried), Throughput(timing)
        self.group_pace = Pace(run.timetable.total_steps)  # a run alone's is its Reporter's
        self.started = time.time() - (timing["wall_s"] if timing else 0.0)  # up to checkpoints
        self.values = None

    @property
    def single(self) -> bool:
        return len(self.lanes) == 1

    def announce(self) -> None:
        config, setup, total = self.config, self.run.setup, self.timetable.total_steps
        if not self.single:
            for index in self.live:
                logging.info("r%d: %s, step %d of %d", index + 1, self.lanes[index].workdir,
                             int(self.states[index].step), total)
        logging.info("%s, mode %s: %d of %d parameters trainable; step %d of %d (%d epochs x "
                     "%d)%s", config.model.name, config.train.mode, setup.trainable_params,
                     setup.total_params, self.start_step, total, config.train.epochs,
                     self.timetable.steps_per_epoch,
                     "" if self.single else f"; {len(self.lanes)} replicas")
        if distributed.is_chief() and self.start_step == 0:  # once per workdir, not on resumes
            logging.info("parameters:\n%s", summary.parameter_table(
                partition.merge(self.states[0].trainable, setup.frozen), setup.param_labels))

    @contextlib.contextmanager
    def reporting(self):
        """Each live lane's Reporter (log lines, TensorBoard), closed at the end."""
        with contextlib.ExitStack() as stack:
            for lane in self.lanes:
                if not lane.ended:
                    lane.reporter = Reporter(
                        lane.workdir, self.timetable.total_steps, self.timetable.steps_per_epoch,
                        self.start_step, chief=distributed.is_chief(), progress=self.single,
                        name=self.name)
                    stack.callback(lane.reporter.close)
            yield

    def step(self, steps, images, targets):
        self.state, metrics = self.engine.run_call(self.state, steps, images, targets,
                                                   [not lane.ended for lane in self.lanes])
        self.window.add(metrics, len(steps))
        return metrics

    def all_diverged(self, done: int, alone: bool) -> bool:
        """Read the window's means (one host sync) and end each lane whose loss or state is no
        longer finite, before anything of it is logged or saved; True if none is left."""
        self.values = self.window.means()
        finite = self.engine.finite(self.state)
        first_step = done - len(self.window) + 1
        for index, lane in enumerate(self.lanes):
            loss = self.values[index]["loss"]
            if not lane.ended and not (np.isfinite(loss) and finite[index]):
                _end_diverged(lane, loss, first_step, done, alone)
        if all(lane.ended for lane in self.lanes):
            logging.warning("every replica diverged by step %d", done)
            return True
        return False

    def log(self, done: int) -> None:
        rate = self.clock.window(self.config.train.batch_size * self.window.new_steps)
        for lane, value in zip(self.lanes, self.values):
            if not lane.ended:
                lane.reporter.train_window(done, value, rate)
                lane.train_values = value
        if not self.single:
            log_group_progress(self.lanes, done, self.values, rate, self.group_pace)
        self.window = Window(len(self.lanes))

    def evaluate(self, done: int, epoch: int) -> list:
        with self.clock.paused():
            results = self.engine.evaluate(self.state)
        for lane, result in zip(self.lanes, results):
            if not lane.ended:
                lane.reporter.eval_result(done, epoch, result)
                lane.history.append({
                    "epoch": epoch, "step": done,
                    "train_loss": lane.train_values["loss"],
                    "train_accuracy": lane.train_values["accuracy"],
                    "test_loss": result["loss"], "test_accuracy": result["accuracy"]})
        if not self.single:
            logging.info("epoch %d  test accuracy %s", epoch, " ".join(
                f"r{index} {result['accuracy']:.4f}" for index, (lane, result)
                in enumerate(zip(self.lanes, results), 1) if not lane.ended))
        return results

    def save(self, done: int, results: list) -> None:
        with self.clock.paused():
            timing = {"wall_s": time.time() - self.started, **self.clock.carry()}
            open_windows = self.window.carries()  # one host sync for every lane
            for index, lane in enumerate(self.lanes):
                if lane.ended:
                    continue
                meta = {**lane.description, "step": done, "history": lane.history,
                        "open_window": open_windows[index], "timing": timing}
                runfolder.save(lane.manager, done, self.engine.replica_state(self.state, index),
                               meta, {"test_accuracy": results[index]["accuracy"]}
                               if results[index] else None)

    def wait_for_saves(self) -> None:
        for lane in self.lanes:
            if lane.manager and not lane.ended:
                lane.manager.wait_until_finished()

    def finish(self) -> list[dict]:
        """Write each finished lane's metrics.json, once its last checkpoint is complete."""
        speed, wall_time = self.clock.overall(), time.time() - self.started
        for lane in self.lanes:
            if not lane.ended:
                runfolder.wait_for_saves(lane.manager)
        for lane in self.lanes:
            if lane.ended:
                continue
            lane.ended = final_metrics(lane.run, lane.history, speed, wall_time, len(self.lanes))
            if distributed.is_chief():
                write_json(os.path.join(lane.workdir, "metrics.json"), lane.ended)
            logging.info("%s done: test accuracy %.4f after %d epochs", lane.workdir,
                         lane.ended["test_accuracy"], self.config.train.epochs)
        return [lane.ended for lane in self.lanes]


def _end_diverged(lane: Lane, loss: float, first_step: int, last_step: int,
                  alone: bool) -> None:
    """End a lane whose window loss or state became non-finite: a run alone raises Diverged;
    a group's replica writes its metrics.json saying so, and the others go on."""
    last_saved = lane.manager.latest_step()
    # every saved step was checked finite: the fault came after the last save
    since = max(first_step, (last_saved or 0) + 1)
    reason = (f"the training loss became {loss} within steps {since}-{last_step}"
              if not np.isfinite(loss) else
              f"the trainable parameters or optimizer state became non-finite by step "
              f"{last_step}")
    kept = (f"the last checkpoint (step {last_saved}) is intact" if last_saved is not None
            else "no checkpoint had been saved yet")
    lane.ended = diverged_metrics(lane.run, lane.history, last_step, reason)
    lr = lane.run.config.train.lr
    if alone:
        raise Diverged(f"{reason}; training stopped before saving that state, {kept}. "
                       f"Lower train.lr (it is {lr}) and rerun with --branch to continue "
                       "from that checkpoint, or check the data.", lane.ended)
    logging.warning("replica %s diverged (lr %s): %s; it stops, the others go on",
                    lane.workdir, lr, reason)
    if distributed.is_chief():
        write_json(os.path.join(lane.workdir, "metrics.json"), lane.ended)
