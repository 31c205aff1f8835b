"""K tasks on one frozen backbone ("K for the Price of 1", Mudrakarta et al. 2019): the tasks of
`data.tasks`, each in its own run folder WORKDIR/NAME whose config is the task's run alone
(bnjax.tasks.task_config), trained together in one process.

Tasks whose compiled programs agree (equal classes, image shape and steps per epoch:
bnjax.engine.program_key) train as the replicas of one program (bnjax.engine), each with its
own data, batch order and augmentation: on an accelerator one vmapped program, on the CPU that
program called for each in turn, so that a task computes exactly what its run alone computes.
Tasks of other shapes form programs of their own; the programs' calls interleave.
"""
from __future__ import annotations

import contextlib
import os

from absl import logging

from bnjax import config as config_lib
from bnjax import distributed, runfolder
from bnjax import engine as engine_lib
from bnjax import tasks as tasks_lib
from bnjax.group import catch_up
from bnjax.run import Interrupted, signals_received
from bnjax.train import training


def train_tasks(config, workdir: str, stop_at_step: int | None = None, overwrite: bool = False,
                branch: bool = False) -> dict[str, dict]:
    """Train the K tasks of config.data.tasks on one frozen backbone (the seed's, or the
    base's), each with its own data, classes, output layer, BatchNorm and epochs, in its own
    run folder WORKDIR/NAME. A task that diverges ends alone; a signal or stop_at_step stops
    every task at its program's next call, each saved. Returns {name: metrics}."""
    config_lib.validate(config)
    named = tasks_lib.parse(config.data.tasks)
    names = [name for name, _ in named]
    if distributed.is_chief():
        tasks_lib.claim(workdir, names)
    with signals_received() as received, contextlib.ExitStack() as stack:
        prepared = {name: stack.enter_context(runfolder.prepared(
            [tasks_lib.task_config(config, source)], [os.path.join(workdir, name)], overwrite,
            branch)) for name, source in named}
        tasks_lib.check_shared_backbone([lanes[0].run for lanes, _, _ in prepared.values()],
                                        names)
        results = {name: lanes[0].ended for name, (lanes, _, _) in prepared.items()}
        programs = _programs(prepared)
        _log_programs(config, prepared, programs)
        trainings = {}
        for members in programs:
            lanes, states, saved = (sum((list(prepared[name][part]) for name in members), [])
                                    for part in range(3))
            catch_up(lanes, states, saved, branch, received)
            trainings[tuple(members)] = training(lanes, states, saved, stop_at_step, False,
                                                 received, name=", ".join(members))
        results.update(_interleave(trainings))
        return results


def _programs(prepared: dict) -> list[list[str]]:
    """The unfinished tasks' names grouped by their compiled program, in order."""
    by_key: dict = {}
    for name, (lanes, _, _) in prepared.items():
        if not lanes[0].ended:
            by_key.setdefault(engine_lib.program_key(lanes[0].run), []).append(name)
    return list(by_key.values())


def _log_programs(config, prepared: dict, programs: list) -> None:
    backbone = (f"the base {config.model.base}" if config.model.base
                else f"seed {config.seed}")
    logging.info("%d tasks on the frozen backbone of %s: %s", len(prepared), backbone,
                 ", ".join(f"{name} ({lanes[0].run.train_data.num_classes} classes, "
                           f"{lanes[0].run.timetable.total_steps} steps)"
                           for name, (lanes, _, _) in prepared.items()))
    layout = engine_lib.replica_layout()
    for members in programs:
        if len(members) > 1:
            logging.info("one program (%s layout) trains %s", layout, ", ".join(members))
        else:
            logging.info("%s trains on a program of its own", members[0])


def _interleave(trainings: dict) -> dict:
    """Run `training` generators one call each in turn until every one has ended; {task name:
    metrics}. A stop (a signal, stop_at_step) reaches every program at its next call; the
    first is raised once all have stopped or finished."""
    results, stopped = {}, []
    while trainings:
        for members, training_calls in list(trainings.items()):
            try:
                next(training_calls)
            except StopIteration as end:
                results.update(zip(members, end.value))
                del trainings[members]
            except Interrupted as stop:
                stopped.append(stop)
                del trainings[members]
    if stopped:
        raise stopped[0]
    return results
