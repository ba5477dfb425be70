"""One run at a time in a run directory: an advisory lock held for the run's life.

Two runs writing into the same ``--out`` would interleave their metrics.csv and leave one's
config.json beside the other's checkpoint. The lock is ``fcntl.flock`` on ``.lock`` in the
directory, released by the operating system when the holder exits, however it exits; the file
holds the holder's process id, for the message the second run prints. The lock file is opened
without following links: a ``.lock`` that is a link to a file outside the run is replaced, and
the file it pointed at is never written.
"""
import fcntl
import os
from pathlib import Path


class RunInUse(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.handle = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():  # never written through: the link goes, whatever it pointed at stays as it was
            self.path.unlink()
        try:  # O_NOFOLLOW: a link planted between the check and the open is refused, not followed
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise RunInUse(f"cannot take the lock {self.path} ({error}); choose another --out") from None
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunInUse(f"{self.path.parent} is in use by another run (process {holder}); wait for it to finish or "
                           "choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc):
        self.handle.close()  # closing releases the lock; the file stays (removing it would race a waiter)
