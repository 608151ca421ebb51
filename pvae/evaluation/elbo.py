r"""Per-datapoint ELBO, reconstruction and KL terms (evaluation only, no gradients).

.. math::

    \mathcal L(x) = \underbrace{\mathbb E_q[\log p(x\mid z)]}_{\text{reconstruction}}
                    - \underbrace{\mathrm{KL}(q(z\mid x)\,\|\,p(z))}_{\text{KL}}

Defined on Pyro traces (:mod:`pvae.traces`), so it serves any model/guide pair whose sites lie in
the ``"data"`` plate: the reconstruction term sums the observed sites, the KL term the latent
sites. Site by site, as :class:`pyro.infer.TraceMeanField_ELBO` does, the KL is the closed form
when ``torch.distributions.kl_divergence`` knows the pair of the guide's and the model's
distributions at the drawn values of the site's parents, else the Monte Carlo term
:math:`\log q - \log p` over the same samples. The closed form is used only where it is
unbiased: when every latent that conditions the site in the model was drawn before it in the
guide (not for z₁ of a bottom-up hierarchical guide, whose z₂ is drawn after z₁ but conditions
z₁ in the model).

For a pair with enumerated discrete sites (``config_enumerate``), the ELBO is the one
:class:`pyro.infer.TraceEnum_ELBO` trains: the enumerated sites summed out exactly, weighted by
q(y | x), the continuous ones sampled (:mod:`pvae.enumeration`); the KL term is then
reconstruction minus ELBO, its continuous part a Monte Carlo estimate (``analytic_kl`` False).
With the exact posterior as guide every draw gives log p(x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from torch import Tensor
from torch.distributions import kl_divergence

from pvae._checks import positive_int
from pvae.enumeration import EnumWeights
from pvae.evaluation._weights import Target, resolve
from pvae.program import param_sites
from pvae.traces import (
    closed_form_blockers,
    data_frame,
    particle_traces,
    per_datapoint,
    site_terms,
)

__all__ = ["ElboEstimate", "evaluate_elbo"]


@dataclass
class ElboEstimate:
    """Per-datapoint ELBO estimate (all tensors of shape ``(N,)``, nats).

    Attributes:
        elbo: Reconstruction minus KL.
        recon: Monte Carlo estimate of E_q[log p(x | z)].
        kl: KL(q(z | x) ‖ p(z)), analytic when available.
        analytic_kl: Whether ``kl`` is the closed form.
        num_dims: Number of data dimensions, for bits per dimension.
        se: Monte Carlo standard error of each datapoint's ELBO estimate (NaN with one sample).
    """

    elbo: Tensor
    recon: Tensor
    kl: Tensor
    analytic_kl: bool
    num_dims: int
    se: Tensor

    def summary(self) -> dict[str, float | int | bool]:
        r"""Means over datapoints, two standard errors, and bits/dim.

        ``elbo_se`` is the standard error of the mean over datapoints, :math:`\mathrm{sd}_n
        (\hat{\mathcal L}_n)/\sqrt N`: what a different sample of test points would change (it
        includes the Monte Carlo noise). ``elbo_mc_se`` is the Monte Carlo error alone,
        :math:`\sqrt{\sum_n \mathrm{se}_n^2}/N`: what other draws of z on the same points would
        change (NaN with one draw per datapoint).
        """
        n = self.elbo.numel()

        def se(t: Tensor) -> float:
            return float(t.std() / math.sqrt(n)) if n > 1 else float("nan")

        elbo = float(self.elbo.mean())
        return {
            "n": n,
            "elbo": elbo,
            "elbo_se": se(self.elbo),
            "elbo_mc_se": float(self.se.double().pow(2).sum().sqrt() / n),
            "recon": float(self.recon.mean()),
            "kl": float(self.kl.mean()),
            "bits_per_dim": -elbo / (self.num_dims * math.log(2)),
            "analytic_kl": self.analytic_kl,
        }


def _site_kl(guide_site: dict, model_site: dict, n_dims: int, s: int) -> Tensor | None:
    """Closed-form KL of one latent site, per particle and datapoint, or ``None``."""
    try:
        kl = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None
    kl = scale_and_mask(kl, mask=model_site["mask"])
    frame = data_frame(model_site, "data")
    return per_datapoint(kl, n_dims, frame.dim, s, frame.size, model_site["name"])


def _chunk_terms(
    target: Target, xb: Tensor, kw: Mapping[str, Any], s: int, analytic_kl: bool
) -> tuple[Tensor, Tensor, bool]:
    """``(S, b)`` reconstruction and KL terms of one chunk, and whether the KL was analytic."""
    if isinstance(target.source, EnumWeights):  # enumerated sites summed out: Monte Carlo KL
        elbo, recon = target.source.terms(xb, kw, s).elbo()
        return recon, recon - elbo, False
    model_trace, guide_trace = particle_traces(target.program, (xb,), kw, s, target.nesting)
    terms = site_terms(model_trace, guide_trace, s, target.nesting)
    recon = sum(terms.model[name] for name in terms.observed)
    kl: Tensor | float = 0.0
    analytic = analytic_kl
    # Closed form only where unbiased (see closed_form_blockers): not at z1 of a bottom-up guide.
    blockers = closed_form_blockers(model_trace, guide_trace)
    for name, lq in terms.guide.items():
        closed = (
            _site_kl(guide_trace.nodes[name], model_trace.nodes[name], target.nesting + 1, s)
            if analytic_kl and not blockers[name]
            else None
        )
        if closed is None:
            analytic = False
            closed = lq - terms.model[name]
        kl = kl + closed
    return recon, kl, analytic


@torch.no_grad()
def evaluate_elbo(
    model: Any,
    x_or_guide: Any,
    x: Tensor | None = None,
    *,
    num_samples: int = 1,
    batch_size: int = 1024,
    analytic_kl: bool = True,
    kwargs: Mapping[str, Any] | None = None,
) -> ElboEstimate:
    """Estimate the ELBO of every datapoint in ``x``, in chunks of ``batch_size`` datapoints.

    Called like :func:`pvae.log_px`: ``evaluate_elbo(pair, x)`` or
    ``evaluate_elbo(model, guide, x)``.

    Args:
        model: A pair (object with ``.model``/``.guide``) or a model callable.
        x_or_guide: The data, or the guide when ``model`` is a callable.
        x: The data, when a guide was passed.
        num_samples: Samples of the latents per datapoint (a vectorized particle plate).
        batch_size: Datapoints per chunk, which bounds peak memory.
        analytic_kl: Use the closed-form KL at every latent site that has one.
        kwargs: Extra keyword arguments of model and guide (see :func:`pvae.log_px`).

    Returns:
        An :class:`ElboEstimate` with one entry per datapoint; ``analytic_kl`` says whether
        every latent site's KL was in closed form.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
        >>> est = pvae.evaluate_elbo(vae, torch.ones(3, 4), num_samples=10)
        >>> est.elbo.shape, est.analytic_kl
        (torch.Size([3]), True)
    """
    num_samples = positive_int("num_samples", num_samples)
    batch_size = positive_int("batch_size", batch_size)
    target = resolve(model, x_or_guide, x, kwargs)
    x = target.x
    recons, kls, ses = [], [], []
    used_analytic = analytic_kl
    with pyro.validation_enabled(False), param_sites(False):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            kw = target.kwargs_for(start, start + xb.shape[0])
            recon_s, kl_s, analytic = _chunk_terms(target, xb, kw, num_samples, analytic_kl)
            used_analytic = used_analytic and analytic
            per_draw = recon_s - kl_s  # (S, b)
            recons.append(recon_s.mean(0))
            kls.append(torch.as_tensor(kl_s).expand_as(recon_s).mean(0))
            ses.append(
                per_draw.std(0) / math.sqrt(num_samples)
                if num_samples > 1
                else torch.full_like(recon_s[0], math.nan)
            )
    recon, kl = torch.cat(recons), torch.cat(kls)
    return ElboEstimate(recon - kl, recon, kl, used_analytic, target.num_dims, torch.cat(ses))
