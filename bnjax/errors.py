"""Errors bnjax explains: the CLI prints the message without a traceback and exits with the
error's exit status (2 for wrong input, 3 for a run that cannot go on)."""


class BnjaxError(Exception):
    """Base class: the message says what is wrong and how to fix it."""
    exit_status = 2


class ConfigError(BnjaxError, ValueError):
    """A config field holds a value bnjax cannot run with."""


class DataError(BnjaxError):
    """A dataset is missing, unreadable or malformed."""


class CheckpointError(BnjaxError):
    """A checkpoint or export is missing, damaged, or does not belong to this config."""


class DamagedCheckpointError(CheckpointError):
    """One checkpoint step cannot be read back; older steps may still be good."""


class WorkdirError(BnjaxError):
    """The workdir cannot be used: another run holds it, or it cannot be written."""


class TrainingError(BnjaxError):
    """Training cannot go on (a non-finite loss, a failed save); the last checkpoint is intact."""
    exit_status = 3
