"""Files pvae writes: one atomic write path and strict JSON.

Every file pvae writes (checkpoints, configs, metrics, evaluations, figures) goes through
:func:`atomic_write_bytes`: a temporary file in the same folder, flushed to disk, then renamed
over the target, so a crash or Ctrl-C leaves the old file or the new one, never a torn one.
A process killed between the write and the rename leaves its temporary behind
(``.NAME.XXXXXXXX.HOST-PID.tmp``); the next write of the same file removes such leftovers, but
only those whose writer is gone: written on this machine by a process that no longer exists.
JSON that pvae prints or stores is strict (:func:`dumps`): JSON has no NaN or infinity.
:func:`load_npz` reads a ``.npz`` file's arrays, refusing object arrays (pickles) with a message
that names the file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import socket
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "WriteError",
    "atomic_write_bytes",
    "atomic_write_text",
    "dumps",
    "finite",
    "load_npy",
    "load_npz",
    "remove_orphans",
]


class WriteError(OSError):
    """A file could not be written (disk full, no permission, ...); the message names the file
    and the cause. What was there before is intact."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename: the one path
    every file pvae writes goes through.

    Raises:
        WriteError: the write failed; ``path`` holds what it held before (or does not exist).
    """
    path = Path(path)
    tmp = None
    remove_orphans(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_tag() + ".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            cause = err.strerror or str(err) or type(err).__name__
            error = WriteError(f"cannot write {str(path)!r}: {cause}; its previous content is kept")
            error.errno = err.errno
            raise error from err
        raise


def _host() -> str:
    """A short tag of this machine: a PID means something only on the machine that issued it."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _tag() -> str:
    """``.HOST-PID``: who writes a temporary, so that a later write can tell a dead writer's
    leftover from a live writer's file."""
    return f".{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_orphans(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers that were killed between the write and
    the rename of :func:`atomic_write_bytes`; return what was removed.

    A temporary is removed only when its name says it was written on this machine by a process
    that no longer exists. A live writer's (another process writing the same file right now, or
    this process), another machine's (a shared folder) and an unnamed one (written by an older
    pvae, writer unknown) are left alone. Nothing is raised: a leftover that cannot be removed
    stays, and the write goes on.
    """
    path = Path(path)
    if os.name != "posix":  # os.kill(pid, 0) is no probe elsewhere
        return []
    prefix, host = f".{path.name}.", _host()
    removed = []
    try:
        candidates = list(path.parent.glob(f"{glob.escape(prefix)}*.{host}-*.tmp"))
    except OSError:
        return []
    for tmp in candidates:
        pid = tmp.name[len(prefix) : -len(".tmp")].rpartition(f".{host}-")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file at ``path``, read without unpickling anything.

    Raises:
        ValueError: ``path`` cannot be read as an ``.npz`` of numeric (or string) arrays: an
            object array (a pickle: refused, never loaded), a file that is no NumPy archive,
            a truncated or corrupt one, a folder; the message names the file.
    """
    try:
        with open(path, "rb") as fh:  # ours to close, whatever numpy raises
            f = np.load(fh, allow_pickle=False)
            if not isinstance(f, Mapping):
                raise ValueError("it holds a single .npy array, not an .npz archive of named ones")
            with f:
                return {name: f[name] for name in f.files}
    except _NUMPY_ERRORS as err:
        raise _unreadable(path, err) from None


def load_npy(path: str | Path) -> np.ndarray:
    """The array of the ``.npy`` file at ``path``, read without unpickling anything.

    Raises:
        ValueError: as :func:`load_npz` does.
    """
    try:
        with open(path, "rb") as fh:  # ours to close, whatever numpy raises
            a = np.load(fh, allow_pickle=False)
            if not isinstance(a, np.ndarray):
                a.close()
                raise ValueError("it is an .npz archive, not a single .npy array")
            return a
    except _NUMPY_ERRORS as err:
        raise _unreadable(path, err) from None


_NUMPY_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _unreadable(path: str | Path, err: BaseException) -> ValueError:
    """numpy's error on reading ``path`` as pvae says it: naming the file, never advising to
    load it with ``allow_pickle`` (unpickling a data file can run any code)."""
    text = str(err)
    if "Object arrays cannot be loaded" in text:
        why = (
            "it holds an object array (Python objects stored as a pickle); pvae reads numeric "
            "arrays only and never unpickles a data file"
        )
    elif "allow_pickle" in text or "pickle" in text:  # numpy falls back to pickle for any file
        why = (
            "it is no NumPy .npy/.npz file (numpy would read it as a pickle, which pvae never "
            "loads)"
        )
    elif isinstance(err, (zipfile.BadZipFile, EOFError, zlib.error)):
        why = f"truncated or corrupt ({text or type(err).__name__})"
    else:
        why = getattr(err, "strerror", None) or text or type(err).__name__
    return ValueError(f"cannot read {str(path)!r}: {why}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode())


def finite(v: Any) -> Any:
    """``v`` with non-finite floats, at any depth, as ``None`` and paths as strings."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, Mapping):
        return {str(k): finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    """One line of strict JSON (:func:`finite` first, so that nothing is refused)."""
    return json.dumps(finite(obj), allow_nan=False)
