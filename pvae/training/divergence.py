"""Divergence: a NaN or infinite loss or parameter ends training with an error that names where it
began, leaving the last good checkpoint as it was."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["TrainingDivergedError", "raise_if_diverged"]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def raise_if_diverged(
    losses: Sequence[Tensor],
    module: nn.Module,
    epoch: int,
    step: int,
    run_path: Path | None,
    cause: BaseException | None = None,
) -> None:
    """Raise :class:`TrainingDivergedError` if a loss or a parameter became NaN/inf.

    Args:
        losses: This epoch's minibatch losses so far, one scalar tensor per step (reading them
            synchronizes the device once).
        module: The module being trained.
        epoch: The epoch (1-based).
        step: Steps taken in the whole run, this epoch's included.
        run_path: The run folder holding the last good checkpoint, if any.
        cause: The error a non-finite parameter provoked, chained to the one raised here.
    """
    values = torch.stack(list(losses)).tolist() if losses else []
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        first = bad[0]
        what = f"loss became {values[first]:.4g} at epoch {epoch}, step {first + 1}"
        global_step = step - len(values) + first + 1
    elif any(not bool(torch.isfinite(p).all()) for p in module.parameters()):
        what = f"parameters became non-finite at epoch {epoch}, step {len(values)}"
        global_step = step
    else:
        return
    kept = (
        f"; the last good checkpoint (epoch {epoch - 1}) in {run_path} is kept"
        if run_path is not None
        else ""
    )
    raise TrainingDivergedError(
        f"{what} of the epoch (global step {global_step}){kept}; lower train.lr, set "
        "train.clip_norm, or check the data"
    ) from cause
