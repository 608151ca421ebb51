r"""Likelihoods p(x | z): modules mapping decoder output to a ``pyro.distributions`` object over x.

A likelihood declares the decoder output it needs (:meth:`Likelihood.param_shape`) and turns that
output into a distribution whose event covers one whole datapoint, so ``log_prob`` is a normalized
log density (or mass) of a datapoint in nats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvae._checks import one_of, positive_float, positive_int

__all__ = [
    "LIKELIHOODS",
    "Bernoulli",
    "Categorical256",
    "ContinuousBernoulli",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
    "Gaussian",
    "Laplace",
    "Likelihood",
]


class Likelihood(nn.Module):
    """Base class for p(x | z) given decoder output."""

    def param_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape the decoder must output for one datapoint of shape ``data_shape``."""
        return tuple(data_shape)

    def build(self, data_shape: Sequence[int]) -> None:
        """Called once the data shape is known (per-dimension parameters are created here)."""

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
        _check_unit_interval(x, name, "Bernoulli", "; rescale it, or use a Gaussian likelihood")
        if not bool(((x == 0) | (x == 1)).all()):
            warnings.warn(
                f"{name} is not binary: a Bernoulli likelihood is then not a normalized density "
                "and reported log p(x) is not a log-likelihood; binarize the data "
                "(binarize='static' or 'dynamic') or use a continuous Bernoulli likelihood",
                UserWarning,
                stacklevel=3,
            )


class ContinuousBernoulli(Likelihood):
    r"""Continuous Bernoulli over [0, 1]-valued pixels (Loaiza-Ganem & Cunningham 2019):

    .. math::

        p(x\mid\lambda) = C(\lambda)\,\lambda^x(1-\lambda)^{1-x}, \quad
        C(\lambda) = \frac{2\tanh^{-1}(1-2\lambda)}{1-2\lambda}\ (C(\tfrac12) = 2),

    a normalized density for non-binary data in [0, 1], where the Bernoulli "likelihood" is not.
    Its mean is not λ; :meth:`mean` returns the true mean.
    """

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params, validate_args=False).to_event(event_dim)

    def check_data(self, x: Tensor, *, name: str = "data") -> None:
        _check_unit_interval(x, name, "continuous Bernoulli")


class _LocScale(Likelihood):
    """Shared parts of location-scale likelihoods: fixed, global or per-dimension scale."""

    family: type[dist.TorchDistribution] = dist.Normal

    def __init__(
        self, scale: float = 0.1, learn_scale: bool | str = False, min_scale: float = 1e-3
    ) -> None:
        super().__init__()
        scale = positive_float("scale", scale)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        if learn_scale is True:
            learn_scale = "global"
        self.learn_scale = one_of(
            "learn_scale", learn_scale or "fixed", ("fixed", "global", "per_dim")
        )
        if self.learn_scale != "fixed" and scale <= self.min_scale:
            raise ValueError(f"scale must exceed min_scale={min_scale}, got {scale}")
        self._init_raw = math.log(math.expm1(scale - self.min_scale))  # inverse softplus
        if self.learn_scale == "global":
            self.raw_scale = nn.Parameter(torch.tensor(self._init_raw))
        elif self.learn_scale == "fixed":
            self.register_buffer("fixed_scale", torch.tensor(scale), persistent=False)
        else:
            self.raw_scale = None  # created by build(), when the data shape is known

    def build(self, data_shape: Sequence[int]) -> None:
        if self.learn_scale == "per_dim" and self.raw_scale is None:
            self.raw_scale = nn.Parameter(torch.full(tuple(data_shape), self._init_raw))

    @property
    def scale(self) -> Tensor:
        if self.learn_scale == "fixed":
            return self.fixed_scale
        if self.raw_scale is None:
            raise RuntimeError("per-dimension scale is created when the VAE is built")
        return F.softplus(self.raw_scale) + self.min_scale

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        return self.family(params, self.scale.expand_as(params)).to_event(event_dim)

    def mean(self, params: Tensor, event_dim: int) -> Tensor:
        return params


class Gaussian(_LocScale):
    r"""Factorized Gaussian :math:`p(x\mid z) = \mathcal N(x; \mu_\theta(z), \sigma^2)`.

    The decoder outputs the mean. The scale is fixed, learned as one global value, or learned per
    data dimension (``learn_scale="per_dim"``), as
    :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}`.

    Args:
        scale: Fixed scale, or the initial scale when learned.
        learn_scale: ``False``/``"fixed"``, ``True``/``"global"`` or ``"per_dim"``.
        min_scale: Floor on a learned scale, which keeps the density bounded.

    Example:
        >>> import torch, pvae
        >>> p = pvae.likelihoods.Gaussian(scale=1.0)(torch.zeros(1, 2), event_dim=1)
        >>> round(float(p.log_prob(torch.zeros(2))[0]), 4)  # -log(2π)
        -1.8379
    """

    family = dist.Normal


class Laplace(_LocScale):
    r"""Factorized Laplace :math:`p(x\mid z) = \prod_i \frac{1}{2b}e^{-|x_i-\mu_i|/b}`: an L1
    reconstruction term with a proper normalizing constant. Same scale options as
    :class:`Gaussian`."""

    family = dist.Laplace


def _log_bin_mass(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    r"""log P(level x) under Logistic(loc, e^{log_scale}) discretized to the levels k/255.

    With :math:`u = (x - \mu + \tfrac{1}{510})/s` and :math:`l = (x - \mu - \tfrac{1}{510})/s`,
    a middle bin has mass :math:`\sigma(u) - \sigma(l) = \sigma(u)\,\sigma(-l)\,(1 - e^{l-u})`,
    an identity with no cancellation, so its log is accurate even where the mass underflows
    (PixelCNN++'s fallback to the density at the bin's centre is not needed). The bin at 0 takes
    the lower tail (:math:`\sigma(u)`), the bin at 1 the upper (:math:`\sigma(-l)`).
    """
    half = 0.5 / 255
    inv_s = torch.exp(-log_scale)
    centered = x - loc
    upper = inv_s * (centered + half)
    lower = inv_s * (centered - half)
    mid = (
        F.logsigmoid(upper)
        + F.logsigmoid(-lower)
        + torch.log(-torch.expm1(lower - upper).clamp_max(-1e-12))
    )
    lo_edge = F.logsigmoid(upper)  # x = 0: P(X ≤ 0.5/255)
    hi_edge = F.logsigmoid(-lower)  # x = 1: P(X > 1 - 0.5/255)
    return torch.where(x < half, lo_edge, torch.where(x > 1 - half, hi_edge, mid))


def _logistic_level(loc: Tensor, log_scale: Tensor) -> Tensor:
    """A draw of Logistic(loc, e^{log_scale}) rounded to the nearest level k/255 in [0, 1]."""
    u = torch.rand(loc.shape, device=loc.device, dtype=loc.dtype).clamp(1e-6, 1 - 1e-6)
    y = loc + log_scale.exp() * (u.log() - (-u).log1p())
    return (y.clamp(0, 1) * 255).round() / 255


class _DiscretizedLogisticDist(dist.TorchDistribution):
    """Logistic(μ, s) discretized to the 256 levels {0, 1/255, …, 1}; the edge bins take the
    tails (Salimans et al. 2017). A probability mass function on the levels."""

    arg_constraints: ClassVar[dict] = {
        "loc": torch.distributions.constraints.real,
        "log_scale": torch.distributions.constraints.real,
    }
    support = torch.distributions.constraints.unit_interval
    has_rsample = False

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = None):
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        return _DiscretizedLogisticDist(
            self.loc.expand(batch_shape), self.log_scale.expand(batch_shape)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        return _log_bin_mass(x, self.loc, self.log_scale)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return _logistic_level(self.loc.expand(shape), self.log_scale.expand(shape))

    @property
    def mean(self) -> Tensor:
        return self.loc.clamp(0, 1)


class DiscretizedLogistic(Likelihood):
    r"""Discretized logistic over 8-bit pixel levels {0, 1/255, …, 1} (Kingma et al. 2016;
    Salimans et al. 2017): a probability mass function, so bits/dim are comparable with the
    literature. The decoder outputs a location and a log-scale per pixel (two channels).

    Args:
        min_log_scale: Floor on the log-scale (keeps the mass of the center bin below 1).
    """

    levels: ClassVar[int] = 256

    def __init__(self, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.min_log_scale = float(min_log_scale)

    def param_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        return (2, *data_shape)

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        loc, log_scale = params.select(-event_dim - 1, 0), params.select(-event_dim - 1, 1)
        log_scale = log_scale.clamp_min(self.min_log_scale)
        return _DiscretizedLogisticDist(torch.sigmoid(loc), log_scale).to_event(event_dim)

    def check_data(self, x: Tensor, *, name: str = "data") -> None:
        _check_levels(x, name, "discretized logistic")


def _num_coupling(channels: int) -> int:
    return channels * (channels - 1) // 2


def _in_order(loc: Tensor, coef: Tensor, value: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Channels in order, ``x_c = value(loc_c + Σ_{c'<c} coef_{c,c'} x_{c'}, c)``, stacked last."""
    xs: list[Tensor] = []
    for c in range(loc.shape[-1]):
        m = loc[..., c]
        if c:
            i = _num_coupling(c)
            m = m + (coef[..., i : i + c] * torch.stack(xs, -1)).sum(-1)
        xs.append(value(m, c))
    return torch.stack(xs, -1)


class _DiscretizedLogisticMixtureDist(dist.TorchDistribution):
    """K discretized logistics per pixel, mixed with one weight per pixel, the channels coupled
    within a component (:class:`DiscretizedLogisticMixture`). Tensors are kept pixel-last:
    ``logits`` ``(*batch, *spatial, K)``, ``loc`` and ``log_scale`` ``(*batch, *spatial, K, C)``,
    ``coef`` ``(*batch, *spatial, K, C(C-1)/2)``; with ``channel_axis`` x is ``(C, *spatial)``,
    without it x is ``spatial`` (one channel)."""

    arg_constraints: ClassVar[dict] = {}
    support = torch.distributions.constraints.unit_interval
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        log_scale: Tensor,
        coef: Tensor,
        n_spatial: int,
        flat: bool,
    ) -> None:
        self.logits, self.loc, self.log_scale, self.coef = logits, loc, log_scale, coef
        self.n_spatial, self.flat = n_spatial, flat
        spatial = tuple(logits.shape[-1 - n_spatial : -1])
        event = spatial if flat else (loc.shape[-1], *spatial)
        super().__init__(logits.shape[: -1 - n_spatial], event, validate_args=False)

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        n = len(self.batch_shape)
        new = [t.expand(*batch_shape, *t.shape[n:]) for t in (self.logits, self.loc)]
        new += [t.expand(*batch_shape, *t.shape[n:]) for t in (self.log_scale, self.coef)]
        return _DiscretizedLogisticMixtureDist(*new, self.n_spatial, self.flat)

    def _pixels(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1) if self.flat else x.movedim(-1 - self.n_spatial, -1)

    def _image(self, y: Tensor) -> Tensor:
        return y.squeeze(-1) if self.flat else y.movedim(-1, -1 - self.n_spatial)

    def log_prob(self, x: Tensor) -> Tensor:
        xk = self._pixels(x).unsqueeze(-2)  # (..., *spatial, 1, C)
        c = self.loc.shape[-1]
        loc = torch.stack(
            [
                self.loc[..., j]
                + (self.coef[..., _num_coupling(j) : _num_coupling(j + 1)] * xk[..., :j]).sum(-1)
                for j in range(c)
            ],
            -1,
        )
        per_component = _log_bin_mass(xk, loc, self.log_scale).sum(-1)
        per_pixel = torch.logsumexp(per_component + F.log_softmax(self.logits, -1), -1)
        return per_pixel.sum(tuple(range(-self.n_spatial, 0)))

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            k = dist.Categorical(logits=self.logits, validate_args=False).sample(sample_shape)
            pick = F.one_hot(k, self.logits.shape[-1]).to(self.loc.dtype).unsqueeze(-1)
            loc, log_scale, coef = (
                (t * pick).sum(-2) for t in (self.loc, self.log_scale, self.coef)
            )
            y = _in_order(loc, coef, lambda m, c: _logistic_level(m, log_scale[..., c]))
        return self._image(y)

    @property
    def mean(self) -> Tensor:
        """The mean of the continuous mixture (before rounding to levels), clamped to [0, 1]."""
        per_component = _in_order(self.loc, self.coef, lambda m, c: m)
        weights = torch.softmax(self.logits, -1).unsqueeze(-1)
        return self._image((weights * per_component).sum(-2).clamp(0, 1))


class DiscretizedLogisticMixture(Likelihood):
    r"""A mixture of discretized logistics per pixel over 8-bit levels {0, 1/255, …, 1}
    (PixelCNN++, Salimans et al. 2017): a probability mass function, so bits/dim are the
    literature's (:func:`pvae.evaluation.bits.bits_per_dim`).

    For a pixel with channels :math:`x_1..x_C` (data ``(C, H, W)``; a vector is one channel),

    .. math::

        P(x) = \sum_{k=1}^K \pi_k \prod_{c=1}^C P_{\mathrm{DL}}\big(x_c;\
            \mu_{kc} + \textstyle\sum_{c'<c} a_{kcc'} x_{c'},\ s_{kc}\big),

    where :math:`P_{\mathrm{DL}}(x; \mu, s)` is the mass that Logistic(μ, s) puts on the bin of
    half-width 1/510 around the level x, the edge levels 0 and 1 taking the tails (as
    :class:`DiscretizedLogistic`). The channels of a pixel share the component weights
    :math:`\pi = \mathrm{softmax}(\text{logits})`; within a component, channel c is linear in
    the channels before it (PixelCNN++'s coupling, :math:`a = \tanh(\cdot)`; ``coupled=False``
    sets a = 0). Data are in [0, 1] (pvae's convention; PixelCNN++ writes the same model on
    [-1, 1]); :math:`\mu = \mathrm{sigmoid}(\cdot)`, :math:`\log s` is floored at
    ``min_log_scale``. With K = 1 and no coupling it is :class:`DiscretizedLogistic`.

    The decoder outputs ``(K·(1 + 2C + M), *spatial)`` per datapoint, :math:`M = C(C-1)/2` when
    coupled (else 0): the K logits, then per component C locations, C log-scales, M coefficients.

    Args:
        n_mix: Components K (PixelCNN++ and NVAE use 10).
        coupled: Couple the channels of a pixel linearly within a component.
        min_log_scale: Floor on the log-scales.

    Example:
        >>> import torch, pvae
        >>> lik = pvae.likelihoods.DiscretizedLogisticMixture(n_mix=3)
        >>> lik.param_shape((3, 8, 8))
        (30, 8, 8)
        >>> x = torch.randint(0, 256, (5, 3, 8, 8)) / 255
        >>> lik(torch.zeros(5, 30, 8, 8), event_dim=3).log_prob(x).shape
        torch.Size([5])
    """

    levels: ClassVar[int] = 256

    def __init__(self, n_mix: int = 10, coupled: bool = True, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.n_mix = positive_int("n_mix", n_mix)
        if not isinstance(coupled, bool):
            raise TypeError(f"coupled must be true or false, got {coupled!r}")
        self.coupled, self.min_log_scale = coupled, float(min_log_scale)

    def _per_component(self, channels: int) -> int:
        return 1 + 2 * channels + (_num_coupling(channels) if self.coupled else 0)

    def param_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        data_shape = tuple(data_shape)
        channels, spatial = (
            (1, data_shape) if len(data_shape) < 2 else (data_shape[0], data_shape[1:])
        )
        return (self.n_mix * self._per_component(channels), *spatial)

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        if event_dim < 1:
            raise ValueError(
                f"event_dim must be at least 1 for a mixture likelihood, got {event_dim}"
            )
        n_spatial, k = max(event_dim - 1, 1), self.n_mix
        p = params.movedim(-1 - n_spatial, -1)  # (*batch, *spatial, P)
        per, extra = divmod(p.shape[-1], k)
        channels = next((c for c in range(1, per) if self._per_component(c) == per), None)
        if extra or channels is None or (event_dim == 1 and channels != 1):
            m = " + C(C-1)/2" if self.coupled else ""
            raise ValueError(
                f"params must have n_mix·(1 + 2C{m}) entries on axis {-1 - n_spatial} for some "
                f"channel count C (C = 1 for vector data), n_mix={k}; got shape "
                f"{tuple(params.shape)} with event_dim={event_dim}"
            )
        rest = p[..., k:].unflatten(-1, (k, per - 1))
        loc = torch.sigmoid(rest[..., :channels])
        log_scale = rest[..., channels : 2 * channels].clamp_min(self.min_log_scale)
        coef = (
            torch.tanh(rest[..., 2 * channels :])
            if self.coupled
            else rest.new_zeros((*rest.shape[:-1], _num_coupling(channels)))
        )
        return _DiscretizedLogisticMixtureDist(
            p[..., :k], loc, log_scale, coef, n_spatial, flat=event_dim == 1
        )

    def check_data(self, x: Tensor, *, name: str = "data") -> None:
        _check_levels(x, name, "discretized logistic mixture")


class _LevelsCategorical(dist.TorchDistribution):
    """A categorical over 256 levels observed as x = level / 255."""

    arg_constraints: ClassVar[dict] = {"logits": torch.distributions.constraints.real}
    support = torch.distributions.constraints.unit_interval

    def __init__(self, logits: Tensor, validate_args: bool | None = None):
        self.logits = logits
        self._cat = dist.Categorical(logits=logits, validate_args=False)
        super().__init__(self._cat.batch_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        return _LevelsCategorical(self.logits.expand(*batch_shape, 256))

    def log_prob(self, x: Tensor) -> Tensor:
        return self._cat.log_prob((x * 255).round().long())

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self._cat.sample(sample_shape).to(self.logits.dtype) / 255

    @property
    def mean(self) -> Tensor:
        levels = torch.arange(256, device=self.logits.device, dtype=self.logits.dtype) / 255
        return (self._cat.probs * levels).sum(-1)


class Categorical256(Likelihood):
    """A 256-way categorical per pixel over the levels {0, 1/255, …, 1} (van den Oord et al.
    2016): the most flexible 8-bit likelihood, at 256 decoder outputs per pixel."""

    levels: ClassVar[int] = 256

    def param_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        return (256, *data_shape)

    def forward(self, params: Tensor, event_dim: int) -> dist.TorchDistribution:
        logits = params.movedim(-event_dim - 1, -1)
        return _LevelsCategorical(logits).to_event(event_dim)

    def check_data(self, x: Tensor, *, name: str = "data") -> None:
        _check_levels(x, name, "256-level categorical")


def _check_unit_interval(x: Tensor, name: str, what: str, hint: str = "") -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} must lie in [0, 1] for a {what} likelihood, got values in "
            f"[{lo:.4g}, {hi:.4g}]{hint}"
        )


def _check_levels(x: Tensor, name: str, what: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    scaled = x * 255
    if lo < 0 or hi > 1 or float((scaled - scaled.round()).abs().max()) > 1e-3:
        raise ValueError(
            f"{name} must be 8-bit levels k/255 in [0, 1] for a {what} likelihood, got values in "
            f"[{lo:.4g}, {hi:.4g}]"
            + (
                ""
                if lo < 0 or hi > 1
                else " that are not multiples of "
                "1/255; load uint8 images or use a continuous likelihood"
            )
        )


LIKELIHOODS: Mapping[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "continuous_bernoulli": ContinuousBernoulli,
    "gaussian": Gaussian,
    "laplace": Laplace,
    "discretized_logistic": DiscretizedLogistic,
    "discretized_logistic_mixture": DiscretizedLogisticMixture,
    "categorical": Categorical256,
}
"""The likelihoods a config's ``[model.likelihood]`` table names, each built as ``cls(**kw)``."""
