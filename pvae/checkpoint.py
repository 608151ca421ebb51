"""Checkpoints: one file with model, optimizer, epoch, RNG states and config, written atomically.

A checkpoint is data, never code: it holds only tensors, numbers, strings, lists and dicts, and is
read with ``torch.load(..., weights_only=True)``. Writes go to a temporary file in the same folder,
are flushed to disk, then renamed over the old file, so a crash or Ctrl-C at any moment leaves
either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvae.files import WriteError, atomic_write_bytes  # WriteError: part of this API

__all__ = [
    "CheckpointError",
    "WriteError",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "pvae-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "epoch", "step", "model", "optimizer", "rng", "history")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, of another format, or of another model."""


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> None:
    """Serialize ``state`` (plus format and version) and write it atomically to ``path``."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: if the file is missing, unreadable (corrupt or truncated), contains
            anything but plain data, or lacks the checkpoint fields.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which runs the file's code: never passed on.
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
        if found is None:
            raise _unreadable(path, "pickle data that is not a checkpoint's") from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} is refused: it holds an object of type {found[1]}, and a "
            "pvae checkpoint holds only plain data (tensors, numbers, strings, lists, dicts), "
            "never code"
        ) from None
    except Exception as err:
        raise _unreadable(path, err) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a pvae checkpoint (expected format {FORMAT!r})"
        )
    if not isinstance(ckpt.get("version"), int) or ckpt["version"] > VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {ckpt.get('version')!r}; this pvae reads "
            f"versions up to {VERSION}"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks fields {missing}")
    return ckpt


def _unreadable(path: Path, err: Exception | str) -> CheckpointError:
    if isinstance(err, Exception):
        err = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return CheckpointError(
        f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read ({err})"
    )


def check_state_matches(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``module``'s keys and shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or shapes:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:4]}" if missing else "",
                f"unexpected {extra[:4]}" if extra else "",
                f"shape mismatch {shapes[:4]}" if shapes else "",
            )
            if part
        )
        raise CheckpointError(f"checkpoint {where} is from another model: {details}")
