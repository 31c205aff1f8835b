"""Small file I/O shared by the run's writers: atomic JSON, and a JSON-lines log read and
trimmed safely after a crash."""
from __future__ import annotations

import json
import os

from absl import logging

from bnjax.errors import WorkdirError


def write_json(path: str, payload: dict) -> None:
    """Write atomically: a reader never sees half a file, a crash never leaves one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


def read_log_lines(path: str) -> list:
    """(line, record) of every complete line; a last line cut short (a full disk during the
    append) is dropped with a warning: its window is logged again when its steps rerun."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for index, line in enumerate(lines):
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if index < len(lines) - 1 or line.endswith("\n"):
                raise WorkdirError(f"{path} line {index + 1} is not JSON; repair or remove "
                                   "that line to resume") from None
            logging.warning("%s: dropping its last line, written only in part: %r", path,
                            line[:80])
    return records


def keep_log_lines_up_to(path: str, last_step: int) -> None:
    """Drop log lines past `last_step`: after a crash they describe steps that will rerun."""
    if not os.path.exists(path):
        return
    kept = [line if line.endswith("\n") else line + "\n"
            for line, record in read_log_lines(path) if record["step"] <= last_step]
    with open(f"{path}.tmp", "w") as f:
        f.writelines(kept)
    os.replace(f"{path}.tmp", path)
