"""The optimizers ``train.optimizer`` names: one registry, :data:`OPTIMIZERS`, beside the two
factories it holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pyro.optim.clipped_adam
import torch
from torch import nn
from torch.optim import Optimizer

from pvae._checks import lookup

__all__ = ["OPTIMIZERS", "make_optimizer"]


def _adam(params: Iterable[nn.Parameter], lr: float, clip_norm: float | None) -> Optimizer:
    return torch.optim.Adam(params, lr=lr)  # clip_norm: the global norm, clipped by TrainStep


def _clipped_adam(params: Iterable[nn.Parameter], lr: float, clip_norm: float | None) -> Optimizer:
    # Pyro's ClippedAdam clips each gradient elementwise to [-clip_norm, clip_norm].
    return pyro.optim.clipped_adam.ClippedAdam(params, lr=lr, clip_norm=clip_norm or 10.0)


OPTIMIZERS: Mapping[str, Callable[..., Optimizer]] = {"adam": _adam, "clipped_adam": _clipped_adam}


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, clip_norm: float | None
) -> Optimizer:
    """The optimizer called ``name`` in :data:`OPTIMIZERS` over ``params``.

    Args:
        name: ``"adam"`` (:class:`torch.optim.Adam`) or ``"clipped_adam"`` (Pyro's ClippedAdam).
        params: The parameters to optimize.
        lr: Learning rate.
        clip_norm: ClippedAdam's elementwise clip value (10 by default); Adam ignores it (the
            step clips the global gradient norm instead).
    """
    return lookup("optimizer", OPTIMIZERS, name)(params, lr, clip_norm)
