"""Errors that mean "the user's input is wrong": the CLI prints them without a traceback and exits 2."""


class BnjaxError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ConfigError(BnjaxError, ValueError):
    """A config field holds a value bnjax cannot run with."""


class DataError(BnjaxError):
    """A dataset is missing, unreadable or malformed."""


class CheckpointError(BnjaxError):
    """A checkpoint or export is missing, damaged, or does not belong to this config."""
