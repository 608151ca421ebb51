"""A check shared by the model tests: Pyro's own SVI trains every parameter of a pvae program."""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.infer import SVI


def svi_trains_every_parameter(m: Any, x: torch.Tensor, loss: Any, steps: int = 25) -> None:
    """``SVI(m.model, m.guide, Adam, loss)`` for ``steps`` steps on ``x`` (a minibatch of a
    dataset 10× its size) changes every parameter and lowers the loss."""
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    svi = SVI(m.model, m.guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    losses = [svi.step(x, size=10 * len(x), subsample=torch.arange(len(x))) for _ in range(steps)]
    unchanged = [n for n, p in m.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (first, last)
