"""One writer per run folder: an exclusive lock held for the whole life of a run.

The lock is ``fcntl.flock`` on ``RUN/.lock``, a file holding the holder's PID. The kernel drops a
``flock`` when its process exits, however it exits (an exception, Ctrl-C, ``kill -9``), so a lock
file left behind by a killed run is stale by construction: the next run takes it over. The file
is removed on release; an acquirer that finds the file it locked already unlinked retries.
Advisory, and POSIX only: elsewhere the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from pvae.rundir import LOCK

__all__ = ["RunFolderBusyError", "RunLock", "check_not_locked"]


class RunFolderBusyError(ValueError):
    """Another live process holds the run folder's lock."""

    def __init__(self, folder: Path, pid: str) -> None:
        super().__init__(
            f"run folder {str(folder)!r} is in use by another pvae process (PID {pid}); "
            "wait for it to finish or choose another --out"
        )
        self.folder, self.pid = folder, pid


def _holder_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def check_not_locked(folder: Path) -> None:
    """Raise :class:`RunFolderBusyError` if a live process holds ``folder``'s lock.

    A probe, not an acquisition: the caller that goes on to write takes a :class:`RunLock`."""
    if fcntl is None:
        return
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except OSError:  # no lock file (or no folder): nobody holds it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusyError(folder, _holder_pid(fd)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of a run folder; :meth:`acquire` fails at once if it is held.

    Args:
        folder: The run folder (it must exist). If the folder is renamed while the lock is held,
            set :attr:`folder` to its new path so that :meth:`release` removes the right file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (a stale lock of a dead process is taken over) and record our PID.

        Raises:
            RunFolderBusyError: a live process holds it.
        """
        if fcntl is None or self._fd is not None:
            return self
        try:
            return self._acquire()
        except OSError as err:  # a full disk, a read-only folder: name the file, keep the run
            raise OSError(
                err.errno, f"cannot write the lock file {str(self.folder / LOCK)!r}: {err.strerror}"
            ) from None

    def _acquire(self) -> RunLock:
        path = self.folder / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder_pid(fd)
                os.close(fd)
                raise RunFolderBusyError(self.folder, pid) from None
            try:  # the holder may have released (and unlinked) it between our open and flock
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a folder we cannot write: the lock drops anyway
            (self.folder / LOCK).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
