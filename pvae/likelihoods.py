r"""Likelihoods p(x | z): modules mapping decoder output to a ``pyro.distributions`` object over x.

A likelihood declares the decoder output it needs (:meth:`Likelihood.param_shape`) and turns that
output into a distribution whose event covers one whole datapoint, so ``log_prob`` is a normalized
log density (or mass) of a datapoint in nats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvae._checks import positive_float

__all__ = ["Bernoulli", "Gaussian", "Likelihood"]


class Likelihood(nn.Module):
    """Base class for p(x | z) given decoder output."""

    def param_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape the decoder must output for one datapoint of shape ``data_shape``."""
        return tuple(data_shape)

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        """Return p(x | z) with the last ``event_dim`` dimensions as its event."""
        raise NotImplementedError  # pragma: no cover - abstract

    def mean(self, params: Tensor, event_dim: int) -> Tensor:
        """E[x | z], used for reconstructions and sample grids."""
        return self(params, event_dim).mean

    def log_prob(self, params: Tensor, x: Tensor, event_dim: int) -> Tensor:
        """log p(x | z) summed over the event; equals ``self(params, event_dim).log_prob(x)``.

        Evaluation calls this on ``k × B`` draws; subclasses may override it with a fused form.
        """
        return self(params, event_dim).log_prob(x)

    def check_data(self, x: Tensor, *, name: str = "data") -> None:
        """Raise if ``x`` lies outside the support; warn if the density is not normalized there."""


class Bernoulli(Likelihood):
    r"""Factorized Bernoulli over binary pixels, parameterized by logits.

    :math:`\log p(x\mid z) = \sum_i x_i \log\sigma(\ell_i) + (1-x_i)\log\sigma(-\ell_i)`
    with :math:`\ell = f_\theta(z)` (Kingma & Welling 2013, appendix C.1).

    .. warning:: For x in (0, 1) that is not binary this expression is the cross-entropy, not a
       normalized density: reported log p(x) would be meaningless. Binarize the data (static or
       dynamic) or use a continuous Bernoulli.

    Example:
        >>> import torch, pvae
        >>> p = pvae.likelihoods.Bernoulli()(torch.zeros(3, 4), event_dim=1)
        >>> round(float(p.log_prob(torch.ones(4))[0]), 4)  # 4 fair coins
        -2.7726
    """

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        # validate_args=False: non-binary data is checked once in check_data, not every step.
        return dist.Bernoulli(logits=params, validate_args=False).to_event(event_dim)

    def mean(self, params: Tensor, event_dim: int) -> Tensor:
        return torch.sigmoid(params)

    def log_prob(self, params: Tensor, x: Tensor, event_dim: int) -> Tensor:
        # Sum before negating: one pass over the k × B × D tensor fewer than the distribution.
        bce = F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return -bce.sum(tuple(range(-event_dim, 0)))

    def check_data(self, x: Tensor, *, name: str = "data") -> None:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name} must lie in [0, 1] for a Bernoulli likelihood, got values in "
                f"[{lo:.4g}, {hi:.4g}]; rescale it, or use a Gaussian likelihood"
            )
        if not bool(((x == 0) | (x == 1)).all()):
            warnings.warn(
                f"{name} is not binary: a Bernoulli likelihood is then not a normalized density "
                "and reported log p(x) is not a log-likelihood; binarize the data "
                "(binarize='static' or 'dynamic') or use a continuous Bernoulli likelihood",
                UserWarning,
                stacklevel=3,
            )


class Gaussian(Likelihood):
    r"""Factorized Gaussian :math:`p(x\mid z) = \mathcal N(x; \mu_\theta(z), \sigma^2 I)`.

    The decoder outputs the mean. The scale is fixed, or learned (one global scale) as
    :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}`.

    Args:
        scale: Fixed scale, or the initial scale when ``learn_scale`` is true.
        learn_scale: Learn one global scale.
        min_scale: Floor on a learned scale, which keeps the density bounded.

    Example:
        >>> import torch, pvae
        >>> p = pvae.likelihoods.Gaussian(scale=1.0)(torch.zeros(1, 2), event_dim=1)
        >>> round(float(p.log_prob(torch.zeros(2))[0]), 4)  # -log(2π)
        -1.8379
    """

    def __init__(self, scale: float = 0.1, learn_scale: bool = False, min_scale: float = 1e-3):
        super().__init__()
        scale = positive_float("scale", scale)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        self.learn_scale = bool(learn_scale)
        if self.learn_scale:
            if scale <= self.min_scale:
                raise ValueError(f"scale must exceed min_scale={min_scale}, got {scale}")
            raw = math.log(math.expm1(scale - self.min_scale))  # inverse softplus
            self.raw_scale = nn.Parameter(torch.tensor(raw))
        else:
            self.register_buffer("fixed_scale", torch.tensor(scale), persistent=False)

    @property
    def scale(self) -> Tensor:
        if self.learn_scale:
            return F.softplus(self.raw_scale) + self.min_scale
        return self.fixed_scale

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        return dist.Normal(params, self.scale.expand_as(params)).to_event(event_dim)

    def mean(self, params: Tensor, event_dim: int) -> Tensor:
        return params
