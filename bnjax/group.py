"""Replica groups: runs that differ only in bnjax.replicas.REPLICA_FIELDS, trained as one
compiled program (bnjax.engine), each in its own folder exactly as it would train alone.

What a group adds to the loop of one run (bnjax.train.training) is bookkeeping: its runs may
resume at different steps (one stopped alone and now joining, a group killed mid-save), and
they are brought to one step first, nothing deleted; a replica that diverges ends alone."""
from __future__ import annotations

from absl import logging

from bnjax import config as config_lib
from bnjax import replicas, runfolder
from bnjax.errors import CheckpointError
from bnjax.run import Interrupted, Lane, signals_received
from bnjax.train import to_the_end, training


def train_group(configs: list, workdirs: list, stop_at_step: int | None = None,
                overwrite: bool = False, branch: bool = False) -> list[dict]:
    """Train the runs of `configs` as one program, each in its own workdir exactly as
    train_and_evaluate would; returns each run's metrics. A replica that becomes non-finite
    ends alone: its metrics.json says diverged, and the others go on. Stops and resumes are
    those of a single run."""
    for config in configs:
        config_lib.validate(config)
    replicas.check_group(configs)
    with signals_received() as received, runfolder.prepared(
            configs, workdirs, overwrite, branch) as (lanes, states, saved):
        if all(lane.ended for lane in lanes):
            return [lane.ended for lane in lanes]
        catch_up(lanes, states, saved, branch, received)
        return to_the_end(training(lanes, states, saved, stop_at_step, len(lanes) == 1,
                                   received))


def catch_up(lanes: list[Lane], states: list, saved: list, branch: bool,
              received: list) -> None:
    """Bring every unfinished lane to one step, in place: the lanes that resume behind the
    others train alone up to the next step another lane holds, until all hold the most
    advanced one's. No checkpoint is deleted. A signal during it stops the group as it would
    stop training."""
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
            to_the_end(training([lanes[i] for i in behind], [states[i] for i in behind],
                                [saved[i] for i in behind], target, False, received))
        except Interrupted as stopped:
            if stopped.signum is not None:
                raise
        for index in behind:
            if not lanes[index].ended:
                states[index], saved[index] = runfolder.resume(lanes[index], branch)
    raise CheckpointError("the group's runs could not be brought to one step ("
                          f"{sorted(set(steps.values()))}); train them one at a time "
                          "(bnjax sweep --replicas=1) to finish them")
