r"""The fast path: Pyro's objectives for a :class:`~pvae.VAE`, computed without tracing.

For the fixed structure of ``VAE.model``/``VAE.guide`` (one latent site ``z`` and one observed
site ``x`` inside the data plate), the losses of ``Trace_ELBO``, ``TraceMeanField_ELBO`` and
:class:`~pvae.objectives.iwae.IWAE` reduce to a few tensor expressions over the same three
distributions. This module evaluates exactly those expressions:

* the same reparameterized draws in the same order (``q.rsample``, as the guide's ``pyro.sample``
  does), so for a fixed seed the loss and every gradient equal Pyro's (tested);
* the plate's N / B scale and the latent sites' β or free-bits weight (``VAE.kl_scale``);
* the analytic KL where ``TraceMeanField_ELBO`` would use it, the Monte Carlo term otherwise;
* the STL and DReG estimators of the IWAE bound.

What it skips is the per-step work of tracing: poutine messengers, site bookkeeping, plate
broadcasting and repeated argument validation (the data and shapes are checked once before
training). A VAE whose ``model`` or ``guide`` is overridden is not this structure: :func:`fit`
then uses Pyro's objectives and says so once.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from torch import Tensor
from torch.distributions import kl_divergence

from pvae.model import VAE
from pvae.objectives.iwae import ESTIMATORS, iwae_loss

__all__ = ["FusedObjective", "log_weights", "supports"]


def supports(vae: VAE) -> str | None:
    """``None`` if the fast path computes this VAE's objectives exactly, else the reason."""
    for name in ("model", "guide"):
        if getattr(type(vae), name) is not getattr(VAE, name):
            return f"{type(vae).__name__} overrides VAE.{name}"
    return None


def log_weights(
    vae: VAE, x: Tensor, q: Any, prior: Any, k: int, log_q: Any = None
) -> tuple[Tensor, Tensor]:
    """``(k, B)`` log weights log p(x | z) + log p(z) − log q(z | x) and the draws z ~ q:
    :func:`pvae.traces.log_weights` for a VAE's two sites, drawing the same numbers.

    Args:
        vae: The VAE.
        x: ``(B, *data_shape)``.
        q: q(z | x) for this x.
        prior: p(z).
        k: Draws per datapoint.
        log_q: q to score the draws with (STL/DReG: q with the encoder's parameters held fixed).
    """
    z = q.rsample((k,))
    scorer = q if log_q is None else log_q
    return vae.log_likelihood(z, x) + prior.log_prob(z) - scorer.log_prob(z), z


class FusedObjective:
    """Negative ELBO / IWAE of a minibatch, scaled to the dataset size, without tracing.

    Args:
        kind: ``"elbo"`` (Trace_ELBO), ``"meanfield_elbo"`` (TraceMeanField_ELBO) or ``"iwae"``.
        num_particles: Particles (K for ``"iwae"``); drawn in one batched pass when
            ``vectorize`` or for ``"iwae"``, else one after another as Pyro's loop does.
        vectorize: Vectorized particles.
        estimator: IWAE encoder gradient estimator.
    """

    def __init__(
        self, kind: str, num_particles: int = 1, vectorize: bool = False, estimator: str = "reparam"
    ) -> None:
        if kind not in ("elbo", "meanfield_elbo", "iwae"):
            raise ValueError(f"unknown fused objective {kind!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
        self.kind = kind
        self.num_particles = num_particles
        self.vectorize = vectorize or kind == "iwae"
        self.estimator = estimator
        self._analytic: bool | None = None

    def _elbo_particle(self, vae: VAE, x: Tensor, q, prior, shape: tuple[int, ...]) -> Tensor:
        """Sum over the minibatch of one (or a batch of) ELBO particles."""
        # As in VAE.guide: the latent weight is decided (free bits may draw from q) before z.
        w = vae.kl_scale(q)
        vae._scale = w
        z = q.rsample(shape)
        recon = vae.log_likelihood(z, x)
        if w == 0:  # masked latent sites, as poutine.mask does: no KL term at all
            return recon.sum()
        if self.kind == "meanfield_elbo" and self._analytic is not False:
            try:
                kl = kl_divergence(q, prior)
                self._analytic = True
                return recon.sum() - w * kl.sum() * (recon.numel() // kl.numel())
            except NotImplementedError:
                self._analytic = False
        return recon.sum() + w * (prior.log_prob(z) - q.log_prob(z)).sum()

    def loss(self, vae: VAE, x: Tensor, size: int) -> Tensor:
        """The differentiable loss; equals Pyro's ``differentiable_loss`` for the same draws."""
        scale = size / x.shape[0]
        with pyro.validation_enabled(False):
            q = vae.encode(x)
            prior = vae.prior()
            if self.kind == "iwae":
                return self._iwae(vae, x, q, prior, scale)
            p = self.num_particles
            if self.vectorize:
                total = self._elbo_particle(vae, x, q, prior, (p,) if p > 1 else ())
            else:
                total = sum(self._elbo_particle(vae, x, q, prior, ()) for _ in range(p))
            return -scale * total / p

    def _iwae(self, vae: VAE, x: Tensor, q, prior, scale: float) -> Tensor:
        fixed_q = None
        if self.estimator != "reparam":  # log q with the encoder's parameters held fixed
            fixed = {n: p.detach() for n, p in vae.encoder.named_parameters()}
            fixed_q = torch.func.functional_call(vae.encoder, fixed, (x,))
        lw, z = log_weights(vae, x, q, prior, self.num_particles, fixed_q)
        return iwae_loss(lw, scale, self.estimator, (z,))
