"""What falls after each training step: one answer, built once from the config.

The grouping of steps into compiled calls and the training loop both ask `Timetable.after`; a
call ends wherever something is due, so a run's calls (and therefore its float rounding, its log
lines and its checkpoints) do not depend on where it was stopped and resumed. Stops (a signal,
--stop_at_step) are not scheduled: they wait for the end of the call in flight.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Due:
    """What happens after a step (all False: nothing, the next step follows)."""
    log: bool = False  # the log window closes: a train_log line, TensorBoard scalars
    evaluate: bool = False  # the test split is evaluated and a history entry appended
    save: bool = False  # a checkpoint is written
    epoch: int | None = None  # the epoch that ends here, if one does
    last: bool = False  # the run's last step

    def __bool__(self) -> bool:
        return self.log or self.evaluate or self.save


@dataclasses.dataclass(frozen=True)
class Timetable:
    steps_per_epoch: int
    total_steps: int
    log_every_steps: int
    eval_every_epochs: int
    save_every_epochs: int
    save_every_steps: int  # 0: only at epoch ends

    @classmethod
    def from_config(cls, config, steps_per_epoch: int) -> Timetable:
        return cls(steps_per_epoch=steps_per_epoch,
                   total_steps=steps_per_epoch * config.train.epochs,
                   log_every_steps=config.log.every_steps,
                   eval_every_epochs=config.eval.every_epochs,
                   save_every_epochs=config.checkpoint.every_epochs,
                   save_every_steps=config.checkpoint.every_steps)

    def after(self, done: int) -> Due:
        """What is due once `done` steps (1-based count) have run. A log window always closes
        at an epoch's end, so each epoch's history entry holds that epoch's last window."""
        epoch = done // self.steps_per_epoch if done % self.steps_per_epoch == 0 else None
        last = done == self.total_steps
        every_steps = bool(self.save_every_steps and done % self.save_every_steps == 0)
        return Due(
            log=epoch is not None or done % self.log_every_steps == 0,
            evaluate=epoch is not None and (epoch % self.eval_every_epochs == 0 or last),
            save=last or every_steps or (epoch is not None and
                                         epoch % self.save_every_epochs == 0),
            epoch=epoch, last=last)

    def ends_call(self, done: int) -> bool:
        return bool(self.after(done))
