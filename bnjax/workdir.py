"""The run folder: one run at a time (a lock), a clear error when it cannot be written, and
setting an old run aside when the user asks to start over."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time

from bnjax.errors import WorkdirError

LOCK_NAME = ".bnjax.lock"


def create(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".bnjax-write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise WorkdirError(f"cannot write to --workdir={workdir}: {error.strerror or error}; "
                           "choose a folder you can write to") from None


@contextlib.contextmanager
def locked(workdir: str):
    """Hold an exclusive lock on the workdir; a second run on it fails at once, clearly.

    flock is released by the kernel when the process dies, even by kill -9.
    """
    path = os.path.join(workdir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WorkdirError(f"{workdir} is in use by a running bnjax ({holder}); wait for it "
                               "to finish or stop it, or use another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        yield
    finally:
        handle.close()


def set_aside(workdir: str) -> str | None:
    """Rename an existing run folder to <workdir>.replaced-<UTC time>; return the new name."""
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return None
    with locked(workdir):
        stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
        target = f"{workdir.rstrip(os.sep)}.replaced-{stamp}"
        os.rename(workdir, target)
    return target
