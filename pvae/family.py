r"""What every VAE of pvae shares: :class:`BaseVAE`, the base of :class:`pvae.VAE` and
:class:`pvae.HierarchicalVAE`.

A member of the family is a Pyro program (:class:`~pvae.program.PyroProgram`) over a prior on
its top latent, latent sites in between, and a likelihood over a decoder at the bottom:

.. math::

    p_\theta(x, z) = p(z_{\mathrm{top}}) \cdots p_\theta(x \mid z_{\mathrm{bottom}}), \qquad
    q_\phi(z \mid x),

with every sample site of ``model`` and ``guide`` inside ``pyro.plate("data", N,
subsample=...)`` (:meth:`BaseVAE.data_plate`), so a minibatch of B out of N datapoints scales
every log density by N / B and the minibatch loss is an unbiased estimate of the full-data one.
The base holds what does not depend on how many latent layers there are: the data plate and its
generate branch, decoding, sampling and reconstruction, building the default networks for a data
shape, the shape checks and the "not built" errors, and the KL weights.

**KL weights as Pyro scales.** Training may weight the latent part of the ELBO,

.. math::

    \mathcal L_\beta(x) = \mathbb E_q\big[\log p_\theta(x \mid z)\big]
        - \sum_{g} w_g\, \mathrm{KL}_g, \qquad
    \mathrm{KL}_g = \mathbb E_q\big[\log q(z_g \mid \cdot) - \log p(z_g \mid \cdot)\big],

one term per group g of latent sites (the one site ``z`` of a VAE, each layer of a hierarchical
one). The weight :math:`w_g` is β (Higgins et al. 2017; with a warm-up from 0, Bowman et al.
2016, Sønderby et al. 2016, set by :func:`pvae.fit` each step), or 0 while free bits hold the
group's minibatch-mean :math:`\mathrm{KL}_g` below ``free_bits × dim_g`` nats (Kingma et al.
2016, §C.8: no KL gradient for a group under its floor, so the encoder is not pushed to
collapse it). The weight is applied as a Pyro scale on the group's sample statements in
``model`` *and* ``guide`` (:func:`site_weight`; weight 0 as a mask, which Pyro's scale does not
allow), so every Pyro objective sees :math:`\mathcal L_\beta`. pvae's estimators never do: their
weights read masks but not scales from the traces (:mod:`pvae.traces`), and :func:`pvae.fit`
resets β = 1 and free bits = 0 when training ends. With β = 1 and no free bits the program is
the plain model, number for number.

References:
    Higgins et al. (2017), *β-VAE: Learning Basic Visual Concepts with a Constrained
    Variational Framework*.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), *Improved Variational
    Inference with Inverse Autoregressive Flow*, §C.8 (free bits).
    Bowman et al. (2016), *Generating Sentences from a Continuous Space* (KL warm-up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import Tensor, nn

from pvae._checks import positive_float, positive_int
from pvae.likelihoods import Bernoulli, Likelihood
from pvae.program import PyroProgram

__all__ = [
    "BaseVAE",
    "UnitWeighted",
    "checked_prior",
    "group_weight_of_units",
    "nonneg_float",
    "nonneg_int",
    "observation",
    "per_layer",
    "per_unit_log_prob",
    "point_estimate",
    "site_weight",
    "unit_kl",
]


def site_weight(w: float) -> contextlib.AbstractContextManager[Any]:
    r"""The handler that weights a site's log density by ``w ≥ 0``.

    ``poutine.scale(scale=w)`` for w > 0 (nothing for w = 1, which would multiply by 1);
    ``poutine.mask(mask=False)`` for w = 0, since Pyro's scale must be positive: the site then
    adds :math:`0 \cdot \log p` to every objective, and no gradient.
    """
    if w == 1:
        return contextlib.nullcontext()
    return poutine.mask(mask=False) if w == 0 else poutine.scale(scale=w)


def point_estimate(q: dist.TorchDistribution) -> Tensor:
    """A deterministic summary of q(z | x): its mean, or for a flow without a closed-form mean,
    the base distribution's mean pushed through the transforms."""
    if isinstance(q, torch.distributions.TransformedDistribution):
        z = point_estimate(q.base_dist)
        for t in q.transforms:
            z = t(z)
        return z
    return q.mean


def observation(x: Tensor | None) -> Tensor | None:
    """What the model's ``"x"`` site observes: ``x``, or ``None`` (draw x) when there is no data
    or when every log density of the site is masked away (``poutine.mask(False)``, as
    :class:`pyro.infer.Predictive` runs a model): an observation then informs nothing, and the
    model draws x from p(x | z) instead of echoing the data."""
    if x is None:
        return None
    masked = any(isinstance(m, MaskMessenger) and m.mask is False for m in _PYRO_STACK)
    return None if masked else x


def checked_prior(prior: Any) -> nn.Module:
    """``prior`` if it is a :class:`pvae.priors.Prior` module (an ``nn.Module`` with a
    ``latent_dim``), else ``TypeError``."""
    if not isinstance(prior, nn.Module) or not hasattr(prior, "latent_dim"):
        raise TypeError(f"prior must be a pvae.priors.Prior module, got {type(prior).__name__}")
    return prior


class BaseVAE(PyroProgram):
    r"""Base of pvae's VAEs: a prior, a likelihood over a decoder, the data plate, building for a
    data shape, and the KL weights β and free bits (see the module docstring).

    A subclass sets :attr:`networks`, writes ``model`` and ``guide`` (their latent sites inside
    :meth:`data_plate`, weighted with :func:`site_weight`), and fills four hooks:
    ``_build_networks(shape)`` (create the default networks), ``_prior_encoder()`` (what a
    :class:`~pvae.priors.VampPrior` is bound to), ``_checked_code(x)`` (dry-run the inference
    networks on ``x``, returning the decoder's input at their means) and ``_prior_code(n)``
    (draw ``n`` decoder inputs from the generative chain).

    Args:
        prior: The prior of the top latent, a :class:`pvae.priors.Prior`.
        likelihood: p(x | z) given decoder output; :class:`~pvae.likelihoods.Bernoulli` by
            default.
        name: Prefix of the parameters' Pyro ``param`` site names (unique by default).

    Attributes:
        beta: β, the weight of every latent site's log densities (1: the plain model).
        free_bits: Nats per latent dimension below which a group's KL gets weight 0 (0: off).
        data_shape: Shape of one datapoint, once built; ``None`` before.
    """

    networks: ClassVar[tuple[str, ...]] = ("decoder",)
    """Attributes that hold networks; the program is built when none of them is ``None``."""

    fused_path: ClassVar[bool] = False
    """Whether :mod:`pvae.objectives.fused` computes this class's objectives without tracing
    (asked through :func:`pvae.objectives.fused.supports`, never by type)."""

    def __init__(self, prior: Any, likelihood: Likelihood | None, name: str | None) -> None:
        super().__init__(name)
        self.prior = checked_prior(prior)
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        self.data_shape: tuple[int, ...] | None = None
        # KL regularization, set by the training loop (see the module docstring).
        self.beta = 1.0
        self.free_bits = 0.0

    # -- building --------------------------------------------------------------------------------
    @property
    def is_built(self) -> bool:
        """Whether the data shape is fixed and every network exists."""
        return self.data_shape is not None and all(
            getattr(self, n) is not None for n in self.networks
        )

    def build(self, data_shape: Sequence[int]) -> Self:
        """Fix the data shape, creating the default networks that were not given.

        Idempotent for the same shape; raises ``ValueError`` for another one.
        """
        shape = self._fix_data_shape(data_shape)
        if shape is None:
            return self
        self.data_shape = shape
        self.likelihood.build(shape)
        self._build_networks(shape)
        self.prior.bind(self._prior_encoder(), shape)
        return self

    def _build_networks(self, shape: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _prior_encoder(self) -> Any:
        raise NotImplementedError

    def _require_built(self) -> None:
        if not self.is_built:
            raise ValueError(
                f"the {type(self).__name__} is not built: call vae.build(data_shape) or pvae.fit "
                "first"
            )

    def check_compatible(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless every network fits data like ``x`` (a dry run)."""
        self._require_built()
        shape = tuple(x.shape[1:])
        if shape != self.data_shape:
            raise ValueError(
                f"data has datapoints of shape {shape}, but the {type(self).__name__} was built "
                f"for {self.data_shape}"
            )
        with torch.no_grad():
            out = tuple(self.decoder(self._checked_code(x[:2])).shape[1:])
        want = tuple(self.likelihood.param_shape(self.data_shape))
        if out != want:
            raise ValueError(
                f"decoder output shape {out} does not match the likelihood's parameter shape "
                f"{want} for data of shape {self.data_shape}"
            )

    def _checked_code(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- the distributions, usable without Pyro --------------------------------------------------
    def decode(self, z: Tensor) -> dist.TorchDistribution:
        """p(x | z) for the decoder's latent z of shape ``(..., D)``."""
        return self.likelihood(self.decoder(z), len(self.data_shape))

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) for z of shape ``(..., B, D)`` and x of shape ``(B, *data_shape)``."""
        return self.likelihood.log_prob(self.decoder(z), x, len(self.data_shape))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x | z], for reconstructions and sample grids."""
        return self.likelihood.mean(self.decoder(z), len(self.data_shape))

    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z] at the inference networks' point estimate: a deterministic reconstruction."""
        return self.decode_mean(self._point_code(x))

    def _point_code(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, mean: bool = False) -> Tensor:
        """Draw ``n`` datapoints x ~ p(x) (or E[x | z] with ``mean=True``, for a picture grid).

        Pyro's route gives the same draws with every latent:
        ``Predictive(vae.model, num_samples=S)(None, batch_size=n)``.
        """
        self._require_built()
        z = self._prior_code(positive_int("n", n))
        return self.decode_mean(z) if mean else self.decode(z).sample()

    def _prior_code(self, n: int) -> Tensor:
        raise NotImplementedError

    # -- Pyro program ----------------------------------------------------------------------------
    @staticmethod
    def data_plate(
        x: Tensor | None,
        size: int | None = None,
        subsample: Tensor | None = None,
        batch_size: int | None = None,
    ) -> pyro.plate:
        """The ``"data"`` plate of ``model`` and ``guide``.

        Over the minibatch ``x``, scaled by N / B when the dataset size N = ``size`` is given
        (``subsample`` names the minibatch's indices; only its size matters for the scale, so by
        default no randperm of size N is drawn). With ``x=None`` (the model generating) over
        ``batch_size`` datapoints, 1 by default.
        """
        if x is None:
            n = positive_int("batch_size", batch_size) if batch_size is not None else 1
            return pyro.plate("data", n if size is None else size, subsample_size=n, dim=-1)
        if size is None:
            return pyro.plate("data", x.shape[0], dim=-1)
        if subsample is None:
            subsample = torch.arange(x.shape[0], device=x.device)
        return pyro.plate("data", size, subsample=subsample, dim=-1)

    def _guide_data(self, x: Tensor | None) -> Tensor:
        """``x`` for the guide, which needs data and built networks; else ``ValueError``."""
        if x is None:
            raise ValueError(
                "the guide q(z | x) needs data x; for prior-predictive draws run the model alone "
                "(Predictive(vae.model, num_samples=S)(None, batch_size=B))"
            )
        self._require_built()
        return x

    def group_weight(self, kl: float, dim: int) -> float:
        r"""The weight of one group of latent sites whose minibatch-mean KL is ``kl`` nats over
        ``dim`` dimensions: β, or 0 while free bits hold it under its floor,
        :math:`\mathrm{KL}_g < \text{free\_bits} \cdot \dim_g` (Kingma et al. 2016)."""
        if self.free_bits <= 0:
            return self.beta
        return self.beta if kl >= self.free_bits * dim else 0.0

    def model_weight(self, decided: float) -> float:
        """The weight the model gives a latent group: β, or with free bits the weight the guide
        decided (``decided``) at its last call, since every ELBO runs the guide first."""
        return decided if self.free_bits > 0 else self.beta


# -- KL weights per layer and per group of units ---------------------------------------------------
class UnitWeighted(dist.TorchDistribution):
    r"""A factorized distribution whose log density weights each unit:
    :math:`\log \tilde p(z) = \sum_u w_u \log p_u(z_u)`; draws are the base distribution's.

    How a site carries free bits per group of units (some units' log densities at weight 0, the
    others at β); not a normalized density unless every weight is 1.

    Args:
        base: ``Independent`` over one event dimension of a univariate distribution.
        weight: ``(d,)`` weights, one per unit.
    """

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, base: dist.Independent, weight: Tensor) -> None:
        self.base, self.weight = base, weight
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> Any:
        return self.base.support

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def expand(self, batch_shape: Any, _instance: Any = None) -> UnitWeighted:
        return UnitWeighted(self.base.expand(batch_shape), self.weight)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        return self.base.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return (self.base.base_dist.log_prob(value) * self.weight).sum(-1)


def per_unit_log_prob(d: Any) -> Callable[[Tensor], Tensor] | None:
    """The per-unit log density of ``d`` when it is an ``Independent`` over one event dimension
    of a univariate distribution (a density that factorizes over units), else ``None``."""
    if (
        isinstance(d, dist.Independent)
        and d.reinterpreted_batch_ndims == 1
        and d.base_dist.event_shape == ()
    ):
        return d.base_dist.log_prob
    return None


def unit_kl(q: dist.Independent, p: Any) -> Tensor:
    r"""Minibatch-mean KL per unit, ``(d,)``, of a diagonal Gaussian q against p: closed form
    where PyTorch has it, else one draw of :math:`\log q_u - \log p_u`; a 0-d tensor (the whole
    layer, one draw) when p does not factorize over units."""
    with torch.no_grad():
        lead = tuple(range(q.base_dist.loc.dim() - 1))
        pu = per_unit_log_prob(p)
        if pu is None:
            z = q.sample()
            return (q.log_prob(z) - p.log_prob(z)).mean()
        try:
            kl = torch.distributions.kl_divergence(q.base_dist, p.base_dist)
        except NotImplementedError:
            z = q.sample()
            kl = q.base_dist.log_prob(z) - pu(z)
        return kl.expand(q.base_dist.loc.shape).mean(lead)


def per_layer(name: str, value: Any, n: int, check: Callable[[str, Any], Any]) -> tuple | None:
    """``value`` as one checked entry per layer (a scalar applies to every layer), or ``None``."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * n
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(
            f"{name} must be one number or a list of {n} (one per layer), got {value!r}"
        )
    return tuple(check(f"{name} entries", v) for v in value)


def nonneg_int(name: str, v: Any) -> int:
    """``v`` if it is an integer >= 0, else ``ValueError``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be integers >= 0, got {v!r}")
    return v


def nonneg_float(name: str, v: Any) -> float:
    """``v`` as a float if it is a finite number >= 0, else raise."""
    return positive_float(name, v, allow_zero=True)


def group_weight_of_units(kl: Tensor, floor: float, weight: float, groups: int) -> float | Tensor:
    r"""The weight of a layer whose units' minibatch-mean KL terms are ``kl`` (``(d,)``), under
    free bits of ``floor`` nats per unit over ``groups`` contiguous groups of units (Kingma et al.
    2016, §C.8): ``weight`` for a group whose KL is at least ``floor × units``, 0 for one held
    under it. One number when every group agrees, else a ``(d,)`` tensor of per-unit weights
    (for :class:`UnitWeighted`). A 0-d ``kl`` (a layer that does not factorize) is one group."""
    if kl.dim() == 0 or groups == 1:
        return weight if float(kl.sum()) >= floor * kl.numel() else 0.0
    chunks = kl.tensor_split(groups)
    held = [float(c.sum()) < floor * c.numel() for c in chunks]
    if not any(held):
        return weight
    if all(held):
        return 0.0
    return torch.cat(
        [torch.full_like(c, 0.0 if h else weight) for c, h in zip(chunks, held, strict=True)]
    )
