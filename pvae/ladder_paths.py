r"""MLP paths for :class:`pvae.LadderVAE`: the deterministic networks of a top-down hierarchy
(:class:`pvae.nets.LadderPaths`) for data of any shape, flattened, with optional batch or weight
norm and skip connections (Sønderby et al. 2016 use batch norm; residual cells are NVAE's,
Vahdat & Kautz 2020).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from pvae import nets
from pvae._checks import lookup, one_of, positive_int

__all__ = ["NORMS", "MLPLadderPaths"]

NORMS = ("batch", "weight")
"""Normalizations of the MLP paths' hidden layers: batch norm (Ioffe & Szegedy 2015) after each
linear layer, or weight norm (Salimans & Kingma 2016) of each linear layer."""


class _Trunk(nn.Module):
    """Hidden layers ``widths`` over inputs of shape ``in_shape`` (flattened), with optional batch
    or weight norm, and skip connections ``h + f(h)`` (a bias-free projection where the width
    changes). No widths: the flattened input."""

    def __init__(
        self,
        in_shape: Sequence[int],
        widths: Sequence[int],
        activation: str,
        norm: str | None,
        skip: bool,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        act = lookup("activation", nets.ACTIVATIONS, activation)
        sizes = [math.prod(self.in_shape), *widths]
        self.layers = nn.ModuleList()
        self.skips = nn.ModuleList()
        for a, b in itertools.pairwise(sizes):
            lin = nn.Linear(a, b)
            if norm == "weight":
                lin = nn.utils.parametrizations.weight_norm(lin)
            parts = [lin, *([nn.BatchNorm1d(b)] if norm == "batch" else []), act()]
            self.layers.append(nn.Sequential(*parts))
            if skip:
                self.skips.append(nn.Identity() if a == b else nn.Linear(a, b, bias=False))
        self.width = sizes[-1]

    def forward(self, h: Tensor) -> Tensor:
        batch = h.shape[: h.dim() - len(self.in_shape)]
        h = h.reshape(-1, math.prod(self.in_shape))  # 2-D, as batch norm needs
        for i, layer in enumerate(self.layers):
            h = layer(h) + self.skips[i](h) if len(self.skips) else layer(h)
        return h.reshape(*batch, self.width)


class _Head(nn.Module):
    """A trunk, then a linear layer ``out`` to ``(*batch, *out_shape)``."""

    def __init__(self, trunk: _Trunk, out_shape: Sequence[int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.out_shape = tuple(out_shape)
        self.out = nn.Linear(trunk.width, math.prod(self.out_shape))

    def forward(self, h: Tensor) -> Tensor:
        return self.project(self.trunk(h))

    def project(self, t: Tensor) -> Tensor:
        """The output layer alone, from the trunk's features ``t``."""
        y = self.out(t)
        return y.reshape(*y.shape[:-1], *self.out_shape)


class MLPLadderPaths(nn.Module):
    r"""MLP paths of a ladder (:class:`pvae.nets.LadderPaths`) for data of any shape (flattened).

    Layer l = 1 … L has hidden widths ``hidden[l-1]``: the bottom-up trunk ``up[l-1]`` maps
    h_{l-1} (h_0 = x) through them to h_l; ``q_heads[l-1]`` is one linear layer from h_l to the
    estimate (loc, raw scale) of z_l; ``p_heads[l-1]`` maps z_{l+1} through the same widths
    reversed to the prior (loc, raw scale) of z_l; the decoder maps z_1 through ``hidden[0]``
    reversed to the likelihood's parameters. With ``latent_dims=(100, 50)`` and ``hidden=((200,
    200), (100, 100))`` these are the IWAE paper's networks (Burda et al. 2015, §5).

    Args:
        data_shape: Shape of one datapoint.
        out_shape: The likelihood's parameter shape for that data.
        latent_dims: d_1 … d_L.
        hidden: Per layer, hidden widths; ``(2 d_l, 2 d_l)`` each by default. An empty list
            makes that layer's paths linear.
        activation: A name in :data:`pvae.nets.ACTIVATIONS`.
        norm: ``None``, ``"batch"`` or ``"weight"`` (:data:`NORMS`) in every hidden layer.
        skip: Residual connections ``h + f(h)`` around every hidden layer.
        generative_skip: A deterministic top-down path in the generative model: the trunk of
            ``p_heads[l-1]`` (features :math:`t_l`) reads :math:`[z_{l+1}, t_{l+1}]` and the
            decoder reads :math:`[z_1, t_1]`, so x depends on every layer directly (see
            :class:`pvae.LadderVAE`); inputs are flat vectors.

    Example:
        >>> import torch
        >>> p = MLPLadderPaths((1, 8, 8), (1, 8, 8), (4, 2), hidden=[[16], [8]])
        >>> h1 = p.up[0](torch.zeros(5, 1, 8, 8))
        >>> tuple(p.q_heads[0](h1).shape), tuple(p.p_heads[0](torch.zeros(5, 2)).shape)
        ((5, 2, 4), (5, 2, 4))
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        out_shape: Sequence[int],
        latent_dims: Sequence[int],
        hidden: Sequence[Sequence[int]] | None = None,
        activation: str = "tanh",
        norm: str | None = None,
        skip: bool = False,
        generative_skip: bool = False,
    ) -> None:
        super().__init__()
        dims = tuple(positive_int("latent_dims entries", d) for d in latent_dims)
        widths = _widths(hidden, dims)
        if norm is not None:
            one_of("norm", norm, NORMS)
        self.latent_shapes = tuple((d,) for d in dims)

        def trunk(shape: Sequence[int], w: Sequence[int]) -> _Trunk:
            return _Trunk(shape, w, activation, norm, bool(skip))

        self.up = nn.ModuleList()
        shape: Sequence[int] = tuple(data_shape)
        for w in widths:
            self.up.append(trunk(shape, w))
            shape = (self.up[-1].width,)
        self.q_heads = nn.ModuleList(
            _Head(trunk((u.width,), []), (2, d)) for u, d in zip(self.up, dims, strict=True)
        )
        self.generative_skip = bool(generative_skip)
        heads, feature = [], 0  # built top-down: the width of t_{l+1} feeds layer l's head
        for d, above, w in reversed(list(zip(dims[:-1], dims[1:], widths[1:], strict=True))):
            heads.append(_Head(trunk((above + feature,), tuple(reversed(w))), (2, d)))
            feature = heads[-1].trunk.width if self.generative_skip else 0
        self.p_heads = nn.ModuleList(heads[::-1])
        self.decoder = _Head(
            trunk((dims[0] + feature,), tuple(reversed(widths[0]))), tuple(out_shape)
        )


def _widths(hidden: Any, dims: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The checked hidden widths per layer; ``(2 d_l, 2 d_l)`` each by default."""
    if hidden is None:
        return tuple((2 * d, 2 * d) for d in dims)
    if isinstance(hidden, int | str) or len(hidden) != len(dims):
        raise ValueError(
            f"hidden must give one list of hidden widths per stochastic layer ({len(dims)}), "
            f"got {hidden!r}"
        )
    out = []
    for i, hs in enumerate(hidden):
        if isinstance(hs, int | str) or not isinstance(hs, Sequence):
            raise ValueError(f"hidden[{i}] must be a list of widths (e.g. [200, 200]), got {hs!r}")
        out.append(tuple(positive_int(f"hidden[{i}] entries", h) for h in hs))
    return tuple(out)
