"""Small file I/O shared by the run's writers: atomic replacement (JSON, exports, logs), and a
JSON-lines log read and trimmed safely after a crash."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

from absl import logging

from bnjax.errors import WorkdirError


@contextlib.contextmanager
def replace_atomically(path: str, mode: str = "wb"):
    """A file whose content replaces `path` in one step when the block ends: a reader never
    sees half a file, and an error (a full disk) leaves `path` as it was. The temporary file
    has a name of its own beside `path`, so two processes never write the same one."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise WorkdirError(f"{path} is a folder; give the path of a file to write, e.g. "
                           f"{os.path.join(path, 'model.bnjax')}")
    if not os.path.isdir(folder):
        raise WorkdirError(f"cannot write {path}: the folder {folder} does not exist; create "
                           "it first or give another path")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as f:
            yield f
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_json(path: str, payload: dict) -> None:
    """Write atomically: a reader never sees half a file, a crash never leaves one."""
    with replace_atomically(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")


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
    with replace_atomically(path, "w") as f:
        f.writelines(kept)
