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
import torch
from torch import Tensor, nn

from pvae import nets
from pvae.family import BaseVAE, observation, point_estimate, site_weight
from pvae.guides import DiagonalNormal
from pvae.likelihoods import Likelihood
from pvae.priors import Prior

__all__ = ["VAE", "point_estimate"]


class VAE(BaseVAE):
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

    networks = ("encoder", "decoder")
    fused_path = True  # pvae.objectives.fused computes its objectives (see fused.supports)

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
        super().__init__(prior, likelihood, name)
        self.encoder = encoder
        self.decoder = decoder
        self.hidden = tuple(hidden)
        self._scale: float = 1.0  # the latent site's weight chosen by the last guide call
        if data_shape is not None:
            self.build(data_shape)

    @property
    def latent_dim(self) -> int:
        """D, the width of z."""
        return int(self.prior.latent_dim)

    def _build_networks(self, shape: tuple[int, ...]) -> None:
        """The default MLP encoder (a diagonal Gaussian) and decoder, where none was given."""
        if self.encoder is None:
            width = DiagonalNormal.num_params(self.latent_dim)
            self.encoder = DiagonalNormal(nets.MLP(shape, width, self.hidden), self.latent_dim)
        if self.decoder is None:
            param_shape = self.likelihood.param_shape(shape)
            self.decoder = nets.MLP(self.latent_dim, param_shape, tuple(reversed(self.hidden)))

    def _prior_encoder(self) -> nn.Module:
        return self.encoder

    def _checked_code(self, x: Tensor) -> Tensor:
        q = self.encode(x)
        if q.event_shape != (self.latent_dim,):
            raise ValueError(
                f"encoder must return a distribution with event shape ({self.latent_dim},),"
                f" got {tuple(q.event_shape)}"
            )
        return point_estimate(q)

    # -- the three distributions, usable without Pyro -------------------------------------------
    def encode(self, x: Tensor) -> dist.TorchDistribution:
        """q(z | x) for a batch of x."""
        return self.encoder(x)

    def _point_code(self, x: Tensor) -> Tensor:
        return point_estimate(self.encode(x))

    def _prior_code(self, n: int) -> Tensor:
        return self.prior().sample((n,))

    # -- Pyro program ----------------------------------------------------------------------------
    def kl_scale(self, q: dist.TorchDistribution) -> float:
        r"""Scale of the latent sites: β, or 0 while free bits hold the KL below its floor.

        Scaling the ``z`` site of both model and guide by β turns the ELBO into
        :math:`\mathbb E_q[\log p(x\mid z)] - \beta\,\mathrm{KL}` (Higgins et al. 2017).
        Free bits (Kingma et al. 2016), one group over all latent dimensions: while the
        minibatch-mean KL is below ``free_bits × latent_dim`` nats the KL term gets no gradient
        (scale 0), so the encoder is not pushed to collapse. The KL is in closed form where
        PyTorch knows it, else one draw of :math:`\log q(z\mid x) - \log p(z)`.
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
        return self.group_weight(float(kl.mean()), self.latent_dim)

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
        self._require_built()
        plate = self.data_plate(x, size, subsample, batch_size)
        obs = observation(x)
        with plate:
            with site_weight(self.model_weight(self._scale)):
                z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decode(z), obs=obs)

    def guide(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        **_: Any,
    ) -> Tensor:
        """q(z | x) in the same ``"data"`` plate as :meth:`model`, its site weighted by
        :meth:`kl_scale`."""
        x = self._guide_data(x)
        with self.data_plate(x, size, subsample):
            q = self.encode(x)
            self._scale = self.kl_scale(q)
            with site_weight(self._scale):
                return pyro.sample("z", q)
