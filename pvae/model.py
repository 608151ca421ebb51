r"""The VAE as a Pyro model/guide pair over swappable components.

.. math::

    p_\theta(x, z) = p(z)\, p_\theta(x \mid z), \qquad q_\phi(z \mid x)

``VAE.model(x)`` samples the prior and observes x through the likelihood inside
``pyro.plate("data", size, subsample=...)``; ``VAE.guide(x)`` samples the amortized encoder in the
same plate. With a minibatch of B out of N datapoints the plate scales every log density by N / B,
so the minibatch loss is an unbiased estimate of the full-data ELBO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import Tensor, nn

from pvae import nets
from pvae._checks import positive_int
from pvae.guides import DiagonalNormal
from pvae.likelihoods import Bernoulli, Likelihood
from pvae.priors import Prior
from pvae.program import PyroProgram

__all__ = ["VAE", "point_estimate"]


def _weight(w: float) -> poutine.messenger.Messenger:
    """Scale a site's log density by ``w`` ≥ 0 (Pyro's scale needs w > 0; 0 is a mask)."""
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


def _masked_out() -> bool:
    """Whether every log density of the current site is masked away (``poutine.mask(False)``,
    as :class:`pyro.infer.Predictive` runs a model): an observation then informs nothing."""
    return any(isinstance(m, MaskMessenger) and m.mask is False for m in _PYRO_STACK)


class VAE(PyroProgram):
    r"""Variational autoencoder over a prior, a likelihood, an encoder (guide) and a decoder.

    Components are plain ``nn.Module`` objects, so their parameters are ordinary module
    parameters: :func:`pvae.fit` trains them with a torch optimizer over ``vae.parameters()``.
    ``vae.model`` and ``vae.guide`` are also complete Pyro programs for Pyro's own routes:
    ``pyro.infer.SVI`` with a ``pyro.optim`` optimizer (the parameters appear as ``param``
    sites named ``"<vae.pyro_name>.<path>"``, unique per instance, so two VAEs in one process
    stay independent), Pyro's PyTorch-style ``Trace_ELBO()(vae.model, vae.guide)`` module, and
    ``pyro.infer.Predictive`` (see :meth:`model`).

    Args:
        prior: p(z), a :class:`pvae.priors.Prior`.
        likelihood: p(x | z) given decoder output; :class:`pvae.likelihoods.Bernoulli` by default.
        encoder: The amortized guide, x to a distribution over z. Defaults to a diagonal Gaussian
            over an MLP, built when the data shape is known.
        decoder: z of shape ``(..., D)`` to likelihood parameters of shape
            ``(..., *likelihood.param_shape(data_shape))``. Defaults to an MLP.
        data_shape: Shape of one datapoint. If omitted, :func:`pvae.fit` infers it from the data.
        hidden: Hidden widths of the default MLP encoder and decoder.
        name: Prefix of the parameters' Pyro ``param`` site names (unique by default).

    Example:
        >>> import torch, pyro, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(1, 8, 8))
        >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide,
        ...                                                   torch.ones(5, 1, 8, 8))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        prior: Prior,
        likelihood: Likelihood | None = None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        data_shape: Sequence[int] | None = None,
        hidden: Sequence[int] = (256, 128),
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if not isinstance(prior, nn.Module) or not hasattr(prior, "latent_dim"):
            raise TypeError(f"prior must be a pvae.priors.Prior module, got {type(prior).__name__}")
        self.prior = prior
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        self.encoder = encoder
        self.decoder = decoder
        self.hidden = tuple(hidden)
        self.data_shape: tuple[int, ...] | None = None
        # KL regularization, set by the training loop (see kl_scale).
        self.beta = 1.0
        self.free_bits = 0.0
        self._scale: float = 1.0  # the latent sites' scale chosen by the last guide call
        if data_shape is not None:
            self.build(data_shape)

    @property
    def latent_dim(self) -> int:
        return int(self.prior.latent_dim)

    @property
    def is_built(self) -> bool:
        return self.data_shape is not None and self.encoder is not None and self.decoder is not None

    def build(self, data_shape: Sequence[int]) -> VAE:
        """Fix the data shape, creating default MLP encoder/decoder where none was given.

        Idempotent for the same shape; raises ``ValueError`` for another one.
        """
        shape = self._fix_data_shape(data_shape)
        if shape is None:
            return self
        self.data_shape = shape
        self.likelihood.build(shape)
        param_shape = self.likelihood.param_shape(shape)
        if self.encoder is None:
            width = DiagonalNormal.num_params(self.latent_dim)
            self.encoder = DiagonalNormal(nets.MLP(shape, width, self.hidden), self.latent_dim)
        if self.decoder is None:
            self.decoder = nets.MLP(self.latent_dim, param_shape, tuple(reversed(self.hidden)))
        self.prior.bind(self.encoder, shape)
        return self

    def check_compatible(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless encoder and decoder fit data like ``x`` (a dry run)."""
        if not self.is_built:
            raise ValueError("the VAE is not built: call vae.build(data_shape) or pvae.fit first")
        shape = tuple(x.shape[1:])
        if shape != self.data_shape:
            raise ValueError(
                f"data has datapoints of shape {shape}, but the VAE was built for {self.data_shape}"
            )
        with torch.no_grad():
            q = self.encode(x[:2])
            if q.event_shape != (self.latent_dim,):
                raise ValueError(
                    f"encoder must return a distribution with event shape ({self.latent_dim},),"
                    f" got {tuple(q.event_shape)}"
                )
            out = tuple(self.decoder(point_estimate(q)).shape[1:])
        want = self.likelihood.param_shape(self.data_shape)
        if out != tuple(want):
            raise ValueError(
                f"decoder output shape {out} does not match the likelihood's parameter shape "
                f"{tuple(want)} for data of shape {self.data_shape}"
            )

    # -- the three distributions, usable without Pyro -------------------------------------------
    def encode(self, x: Tensor) -> dist.TorchDistribution:
        """q(z | x) for a batch of x."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> dist.TorchDistribution:
        """p(x | z) for z of shape ``(..., D)``."""
        return self.likelihood(self.decoder(z), len(self.data_shape))

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) for z of shape ``(..., B, D)`` and x of shape ``(B, *data_shape)``."""
        return self.likelihood.log_prob(self.decoder(z), x, len(self.data_shape))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x | z], for reconstruction and sample grids."""
        return self.likelihood.mean(self.decoder(z), len(self.data_shape))

    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z] at the point estimate of q(z | x): a deterministic reconstruction."""
        return self.decode_mean(point_estimate(self.encode(x)))

    def sample(self, n: int, mean: bool = False) -> Tensor:
        """Draw ``n`` datapoints x ~ p(x) (or E[x | z] with ``mean=True``, for a picture grid)."""
        z = self.prior().sample((positive_int("n", n),))
        return self.decode_mean(z) if mean else self.decode(z).sample()

    # -- Pyro program ----------------------------------------------------------------------------
    def kl_scale(self, q: dist.TorchDistribution) -> float:
        r"""Scale of the latent sites: β, or 0 while free bits hold the KL below its floor.

        Scaling the ``z`` site of both model and guide by β turns the ELBO into
        :math:`\mathbb E_q[\log p(x\mid z)] - \beta\,\mathrm{KL}` (Higgins et al. 2017).
        Free bits (Kingma et al. 2016), one group over all latent dimensions: while the
        minibatch-mean KL is below ``free_bits × latent_dim`` nats the KL term gets no gradient
        (scale 0), so the encoder is not pushed to collapse.
        """
        if self.free_bits <= 0:
            return self.beta
        with torch.no_grad():
            prior = self.prior()
            try:
                kl = torch.distributions.kl_divergence(q, prior)
            except NotImplementedError:
                z = q.sample()
                kl = q.log_prob(z) - prior.log_prob(z)
        return self.beta if float(kl.mean()) >= self.free_bits * self.latent_dim else 0.0

    @staticmethod
    def _plate(x: Tensor, size: int | None, subsample: Tensor | None) -> pyro.plate:
        if size is None:
            return pyro.plate("data", x.shape[0], dim=-1)
        if subsample is None:
            # Only the minibatch size matters for the N / B scale; avoid a randperm of size N.
            subsample = torch.arange(x.shape[0], device=x.device)
        return pyro.plate("data", size, subsample=subsample, dim=-1)

    def model(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        batch_size: int | None = None,
        **_: Any,
    ) -> Tensor:
        """p(z) p(x | z) for a minibatch ``x`` out of ``size`` datapoints.

        With ``x=None`` the model *generates*: it draws ``batch_size`` datapoints (default 1), so
        ``Predictive(vae.model, num_samples=S)(None, batch_size=B)`` gives prior-predictive x.
        Under ``poutine.mask(mask=False)``, which is how :class:`pyro.infer.Predictive` runs a
        model, an observed x would contribute to no log density; the model then draws x from
        p(x | z) instead of echoing the data, so ``Predictive(vae.model, guide=vae.guide,
        num_samples=S)(x)`` gives posterior-predictive draws (z from the guide at x).

        Args:
            x: Minibatch of shape ``(B, *data_shape)``, or ``None`` to sample.
            size: Size N of the whole dataset; the plate scales log densities by N / B.
            subsample: Indices of the minibatch in the dataset (optional).
            batch_size: Datapoints to draw when ``x`` is ``None``.

        Returns:
            x: the observed or the drawn datapoints.
        """
        if not self.is_built:
            raise ValueError("the VAE is not built: call vae.build(data_shape) or pvae.fit first")
        if x is None:
            n = positive_int("batch_size", batch_size) if batch_size is not None else 1
            plate = pyro.plate("data", n if size is None else size, subsample_size=n, dim=-1)
        else:
            plate = self._plate(x, size, subsample)
        obs = None if x is None or _masked_out() else x
        # With free bits the guide (run first by every ELBO) decides the scale; reuse it.
        scale = self._scale if self.free_bits > 0 else self.beta
        with plate:
            with _weight(scale):
                z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decode(z), obs=obs)

    def guide(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        **_: Any,
    ) -> Tensor:
        """q(z | x) in the same ``"data"`` plate as :meth:`model`."""
        if x is None:
            raise ValueError(
                "the guide q(z | x) needs data x; for prior-predictive draws run the model alone "
                "(Predictive(vae.model, num_samples=S)(None, batch_size=B))"
            )
        if not self.is_built:
            raise ValueError("the VAE is not built: call vae.build(data_shape) or pvae.fit first")
        with self._plate(x, size, subsample):
            q = self.encode(x)
            self._scale = self.kl_scale(q)
            with _weight(self._scale):
                return pyro.sample("z", q)
