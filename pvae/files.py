"""Files pvae writes: one atomic write path and strict JSON.

Every file pvae writes (checkpoints, configs, metrics, evaluations, figures) goes through
:func:`atomic_write_bytes`: a temporary file in the same folder, flushed to disk, then renamed
over the target, so a crash or Ctrl-C leaves the old file or the new one, never a torn one.
JSON that pvae prints or stores is strict (:func:`dumps`): JSON has no NaN or infinity.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["WriteError", "atomic_write_bytes", "atomic_write_text", "dumps", "finite"]


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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
