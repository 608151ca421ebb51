r"""Amortized guides q(z | x): modules mapping a batch of x to a distribution over z.

Every Gaussian part maps the encoder's raw output s to a standard deviation through one of
:data:`SCALES`, chosen by the guide's ``scale`` argument (``[model.guide] scale = "exp"`` in a
config):

* ``"softplus"`` (default): :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}`, which grows
  linearly for large s, so a large raw output cannot make σ explode.
* ``"exp"``: :math:`\sigma = \exp(s) + \sigma_{\min}`, the log-σ output of Kingma & Welling
  (2013); gradients in s are relative changes of σ, at the risk of overflow for large s.

The floor :math:`\sigma_{\min}` (``min_scale``) is added in both cases: it keeps
:math:`\log q` bounded when the encoder grows confident (set it to 0 for the bare map).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvae._checks import lookup, positive_float, positive_int

__all__ = [
    "GUIDES",
    "IAF",
    "SCALES",
    "DiagonalNormal",
    "LowRankNormal",
]

SCALES: dict[str, Callable[[Tensor], Tensor]] = {"softplus": F.softplus, "exp": torch.exp}
"""Maps from an encoder's raw output to a positive standard deviation (before the floor)."""


def _scale_map(scale: str) -> Callable[[Tensor], Tensor]:
    return lookup("scale", SCALES, scale)


class DiagonalNormal(nn.Module):
    r"""Diagonal Gaussian guide :math:`q_\phi(z\mid x) = \mathcal N(\mu_\phi(x),
    \mathrm{diag}\,\sigma_\phi(x)^2)` (Kingma & Welling 2013).

    ``net`` maps x to ``2 * latent_dim`` features: the mean, and a raw scale s mapped to
    :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}` (or :math:`\exp(s) + \sigma_{\min}`,
    see the module docstring); the floor keeps :math:`\log q` bounded when the encoder grows
    confident.

    Args:
        net: Encoder network, x of shape ``(..., *data_shape)`` to ``(..., 2 * latent_dim)``.
        latent_dim: Dimension D of z.
        min_scale: Floor on the posterior standard deviation.
        scale: ``"softplus"`` or ``"exp"``: the map from raw output to σ (:data:`SCALES`).

    Raises:
        ValueError: an unknown ``scale`` (the message lists the valid ones).

    Example:
        >>> import torch
        >>> q = DiagonalNormal(torch.nn.Linear(5, 4), latent_dim=2, scale="exp")
        >>> q(torch.zeros(3, 5)).batch_shape, q(torch.zeros(3, 5)).event_shape
        (torch.Size([3]), torch.Size([2]))
    """

    def __init__(
        self, net: nn.Module, latent_dim: int, min_scale: float = 1e-4, scale: str = "softplus"
    ) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = positive_int("latent_dim", latent_dim)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        self.scale = scale
        self._sd = _scale_map(scale)

    @staticmethod
    def num_params(latent_dim: int) -> int:
        """Encoder output width needed for ``latent_dim`` (guides may take more arguments)."""
        return 2 * latent_dim

    def forward(self, x: Tensor) -> dist.TorchDistribution:
        h = self.net(x)
        if h.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"encoder output must have last dimension 2 * latent_dim = {2 * self.latent_dim}"
                f", got shape {tuple(h.shape)}"
            )
        loc, raw = h.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, self._sd(raw) + self.min_scale).to_event(1)


class LowRankNormal(nn.Module):
    r"""Low-rank plus diagonal Gaussian guide,
    :math:`q(z\mid x) = \mathcal N(\mu(x), F(x)F(x)^\top + \mathrm{diag}\,d(x))` with
    :math:`F \in \mathbb R^{D\times r}` (Rezende et al. 2014), which captures posterior
    correlations a diagonal guide cannot.

    Args:
        net: Encoder network, x to ``num_params(latent_dim, rank)`` features.
        latent_dim: D.
        rank: r.
        min_scale: Floor on the diagonal standard deviation.
        scale: ``"softplus"`` or ``"exp"``: the map from raw output to the diagonal standard
            deviation :math:`\sqrt{d}` (:data:`SCALES`).
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        rank: int = 2,
        min_scale: float = 1e-4,
        scale: str = "softplus",
    ) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = positive_int("latent_dim", latent_dim)
        self.rank = positive_int("rank", rank)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        self.scale = scale
        self._sd = _scale_map(scale)

    @staticmethod
    def num_params(latent_dim: int, rank: int = 2) -> int:
        return latent_dim * (2 + rank)

    def forward(self, x: Tensor) -> dist.TorchDistribution:
        d, r = self.latent_dim, self.rank
        h = self.net(x)
        loc, raw_diag, factor = h.split([d, d, d * r], dim=-1)
        diag = (self._sd(raw_diag) + self.min_scale) ** 2
        factor = factor.reshape(*factor.shape[:-1], d, r) / math.sqrt(d * r)
        return dist.LowRankMultivariateNormal(loc, factor, diag)


class IAF(nn.Module):
    r"""Diagonal Gaussian followed by inverse autoregressive flows conditioned on x
    (Kingma et al. 2016): :math:`z = f_L(\dots f_1(\epsilon_0; h(x)); h(x))`,
    :math:`\epsilon_0 \sim \mathcal N(\mu(x), \mathrm{diag}\,\sigma(x)^2)`.

    Each step is Pyro's conditional affine autoregressive transform with the context h(x) from
    the encoder. Sampling and the density of a drawn z are one pass each; the density of an
    arbitrary z needs the (sequential) inverse.

    Args:
        net: Encoder network, x to ``num_params(latent_dim, context_dim)`` features.
        latent_dim: D (≥ 2).
        num_flows: L.
        context_dim: Width of the context h(x).
        hidden: Hidden widths of each autoregressive network.
        min_scale: Floor on the base standard deviation.
        scale: ``"softplus"`` or ``"exp"``: the map from raw output to the base standard
            deviation (:data:`SCALES`).
    """

    def __init__(
        self,
        net: nn.Module,
        latent_dim: int,
        num_flows: int = 2,
        context_dim: int = 16,
        hidden: tuple[int, ...] = (64,),
        min_scale: float = 1e-4,
        scale: str = "softplus",
    ) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = positive_int("latent_dim", latent_dim)
        if self.latent_dim < 2:
            raise ValueError(f"latent_dim must be >= 2 for an IAF guide, got {latent_dim}")
        self.context_dim = positive_int("context_dim", context_dim)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        self.scale = scale
        self._sd = _scale_map(scale)
        self.flows = nn.ModuleList(
            T.conditional_affine_autoregressive(
                self.latent_dim,
                self.context_dim,
                hidden_dims=[positive_int("hidden", h) for h in hidden],
            )
            for _ in range(positive_int("num_flows", num_flows))
        )
        self.register_buffer("reverse", torch.arange(self.latent_dim - 1, -1, -1), persistent=False)

    @staticmethod
    def num_params(latent_dim: int, context_dim: int = 16) -> int:
        return 2 * latent_dim + context_dim

    def forward(self, x: Tensor) -> dist.TorchDistribution:
        d = self.latent_dim
        h = self.net(x)
        loc, raw, ctx = h.split([d, d, self.context_dim], dim=-1)
        base = dist.Normal(loc, self._sd(raw) + self.min_scale).to_event(1)
        layers: list[T.Transform] = []
        for i, flow in enumerate(self.flows):
            if i:
                layers.append(T.Permute(self.reverse))
            layers.append(flow.condition(ctx))
        return dist.TransformedDistribution(base, layers)


GUIDES: Mapping[str, type[nn.Module]] = {
    "diagonal": DiagonalNormal,
    "low_rank": LowRankNormal,
    "iaf": IAF,
}
"""The guides a config's ``[model.guide]`` table names, each built as
``cls(net=encoder, latent_dim=d, **kw)`` over an encoder with ``cls.num_params(d, ...)`` outputs."""
