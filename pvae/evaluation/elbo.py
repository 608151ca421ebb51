r"""Per-datapoint ELBO, reconstruction and KL terms (evaluation only, no gradients).

.. math::

    \mathcal L(x) = \underbrace{\mathbb E_q[\log p(x\mid z)]}_{\text{reconstruction}}
                    - \underbrace{\mathrm{KL}(q(z\mid x)\,\|\,p(z))}_{\text{KL}}

The KL term is the closed form when ``torch.distributions.kl_divergence`` knows the pair, else the
Monte Carlo average of :math:`\log q(z\mid x) - \log p(z)` over the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from pvae._checks import positive_int
from pvae.model import VAE

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
        """Means over datapoints with their standard errors, and bits/dim."""
        n = self.elbo.numel()

        def se(t: Tensor) -> float:
            return float(t.std() / math.sqrt(n)) if n > 1 else float("nan")

        elbo = float(self.elbo.mean())
        return {
            "n": n,
            "elbo": elbo,
            "elbo_se": se(self.elbo),
            "recon": float(self.recon.mean()),
            "kl": float(self.kl.mean()),
            "bits_per_dim": -elbo / (self.num_dims * math.log(2)),
            "analytic_kl": self.analytic_kl,
        }


def _analytic_kl(q: torch.distributions.Distribution, p: torch.distributions.Distribution):
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


@torch.no_grad()
def evaluate_elbo(
    vae: VAE, x: Tensor, num_samples: int = 1, batch_size: int = 1024, analytic_kl: bool = True
) -> ElboEstimate:
    """Estimate the ELBO of every datapoint in ``x``, in chunks of ``batch_size`` datapoints.

    Args:
        vae: A built VAE.
        x: Data of shape ``(N, *data_shape)`` on the VAE's device.
        num_samples: Samples of z per datapoint for the reconstruction (and MC KL) term.
        batch_size: Datapoints per chunk, which bounds peak memory.
        analytic_kl: Use the closed-form KL when the prior/guide pair has one.

    Returns:
        An :class:`ElboEstimate` with one entry per datapoint.
    """
    num_samples = positive_int("num_samples", num_samples)
    batch_size = positive_int("batch_size", batch_size)
    if x.shape[0] == 0:
        raise ValueError("x is empty: expected at least one datapoint")
    elbos, recons, kls, ses = [], [], [], []
    used_analytic = analytic_kl
    prior = vae.prior()
    for xb in x.split(batch_size):
        q = vae.encode(xb)
        z = q.rsample((num_samples,))
        log_lik = vae.decode(z).log_prob(xb)
        recon = log_lik.mean(0)
        kl = _analytic_kl(q, prior) if analytic_kl else None
        if kl is None:
            used_analytic = False
            terms = log_lik - q.log_prob(z) + prior.log_prob(z)  # per-draw ELBO
            kl = recon - terms.mean(0)
        else:
            terms = log_lik
        ses.append(
            terms.std(0) / math.sqrt(num_samples)
            if num_samples > 1
            else torch.full_like(recon, math.nan)
        )
        recons.append(recon)
        kls.append(kl)
        elbos.append(recon - kl)
    return ElboEstimate(
        torch.cat(elbos),
        torch.cat(recons),
        torch.cat(kls),
        used_analytic,
        math.prod(x.shape[1:]),
        torch.cat(ses),
    )
