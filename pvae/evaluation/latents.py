r"""The latents of a model/guide pair as one unconstrained vector per (chain, datapoint), the
state HMC moves.

Every latent site of the guide (in guide order, all inside the ``"data"`` plate, checked with
:func:`pvae.traces.check_sites`) is mapped to the unconstrained space by
``torch.distributions.biject_to(support)`` and flattened into one vector per (chain, datapoint);
:meth:`Layout.unflatten` maps it back and gives the log-Jacobian
:math:`\log\lvert\det \partial z / \partial u\rvert`, which enters AIS's :math:`f_0` (it cancels in
ℓ). Discrete latents are refused: HMC cannot move them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import biject_to, constraints

from pvae.traces import data_frame

__all__ = ["Layout", "Site"]


@dataclass
class Site:
    name: str
    data_pos: int  # the data plate's position in a value with a leading particle dimension
    event_dim: int
    rest: tuple[int, ...]  # constrained shape per (chain, datapoint)
    urest: tuple[int, ...]  # unconstrained shape per (chain, datapoint)
    transform: Any  # biject_to(support), or None for real support

    @property
    def size(self) -> int:
        return math.prod(self.urest)


def _is_real(c: constraints.Constraint) -> bool:
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return type(c) is type(constraints.real)


class Layout:
    """Every latent site of the guide, in guide order, as slices of one flat unconstrained
    vector per (chain, datapoint)."""

    def __init__(self, guide_trace: Any, nesting: int, data_plate: str = "data") -> None:
        self.nesting = nesting
        self.sites: list[Site] = []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"AIS needs continuous latents; site {name!r} is discrete (support "
                    f"{fn.support}): HMC cannot move it. Marginalize it out in the model, or use "
                    "pvae.log_px (importance sampling handles discrete guide sites)"
                )
            frame = data_frame(site, data_plate)
            value = site["value"]
            pos = nesting + 1 + frame.dim
            event_dim = len(fn.event_shape)
            v = value.reshape((1,) * (nesting + 1 + event_dim - value.dim()) + value.shape)
            v = v.movedim(pos, 1)
            t = None if _is_real(fn.support) else biject_to(fn.support)
            urest = tuple((t.inv(v) if t is not None else v).shape[2:])
            self.sites.append(Site(name, pos, event_dim, tuple(v.shape[2:]), urest, t))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    @property
    def dim(self) -> int:
        return sum(s.size for s in self.sites)

    def flatten(self, values: Mapping[str, Tensor], c: int, b: int) -> Tensor:
        """Values with a leading particle dimension (as a particle trace holds them) to the
        ``(C, B, D)`` unconstrained vector."""
        parts = []
        for s in self.sites:
            v = values[s.name]
            v = v.reshape((1,) * (self.nesting + 1 + s.event_dim - v.dim()) + v.shape)
            v = v.movedim(s.data_pos, 1)
            v = v.expand(c, b, *v.shape[2:])
            if s.transform is not None:
                v = s.transform.inv(v)
            parts.append(v.reshape(c, b, s.size))
        return torch.cat(parts, -1)

    @property
    def constrained(self) -> bool:
        """Whether some site is not on the real line (its log-Jacobian is then not 0)."""
        return any(s.transform is not None for s in self.sites)

    def unflatten(self, u: Tensor, jacobian: bool = True) -> tuple[dict[str, Tensor], Tensor]:
        """``(C, B, D)`` to the sites' values (leading particle dimension, the data plate where
        the trace holds it) and the ``(C, B)`` log |det ∂z/∂u| (0 without ``jacobian``)."""
        c, b, _ = u.shape
        values, ldj = {}, u.new_zeros(c, b)
        for s, part in zip(self.sites, u.split([s.size for s in self.sites], -1), strict=True):
            v = part.reshape(c, b, *s.urest)
            if s.transform is not None:
                z = s.transform(v)
                if jacobian:
                    ldj = ldj + s.transform.log_abs_det_jacobian(v, z).reshape(c, b, -1).sum(-1)
                v = z
            values[s.name] = v.movedim(1, s.data_pos)
        return values, ldj

    def from_model_layout(
        self, latents: Mapping[str, Tensor], start: int, stop: int, c: int
    ) -> Tensor:
        """Latents as a trace of the model without particles holds them (data plate over all N
        datapoints) to the ``(C, B, D)`` vector of datapoints ``start:stop``, every chain at the
        same value."""
        values = {}
        for s in self.sites:
            v = latents[s.name]
            v = v.reshape((1,) * (self.nesting + s.event_dim - v.dim()) + v.shape)
            values[s.name] = v.narrow(s.data_pos - 1, start, stop - start).unsqueeze(0)
        return self.flatten(values, c, stop - start)

    def check_latents(self, latents: Any, n: int) -> Mapping[str, Tensor]:
        """``latents`` if it holds one value per datapoint (N = ``n``) of every latent site, as a
        trace of the model without particles holds them; else a ``TypeError``/``ValueError``
        naming the site."""
        if not isinstance(latents, Mapping):
            raise TypeError(
                f"latents must be a mapping from latent site name to tensor, got "
                f"{type(latents).__name__}"
            )
        for s in self.sites:
            v = latents.get(s.name)
            if not isinstance(v, Tensor):
                raise ValueError(
                    f"latents has no tensor for latent site {s.name!r}: reverse AIS starts from an "
                    f"exact posterior sample of every latent site ({', '.join(self.names)})"
                )
            pos = v.dim() - s.event_dim - (self.nesting + 1 - s.data_pos)
            if pos < 0 or v.shape[pos] != n:
                raise ValueError(
                    f"latents[{s.name!r}] has shape {tuple(v.shape)}: expected one value per "
                    f"datapoint (N={n}) along the data plate, as a trace of the model holds it"
                )
        return latents
