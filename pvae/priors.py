"""Priors p(z): modules whose ``forward()`` returns a ``pyro.distributions`` object over z.

Every prior has ``latent_dim`` and returns a distribution with ``event_shape == (latent_dim,)`` and
empty batch shape; the ``"data"`` plate broadcasts it over datapoints. Priors are normalized log
densities in nats: swapping one is passing another module.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pvae._checks import positive_int

__all__ = ["Prior", "StandardNormal"]


class Prior(nn.Module):
    """Base class: a module over no input whose ``forward()`` is p(z).

    Args:
        latent_dim: Dimension D of z.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = positive_int("latent_dim", latent_dim)

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


class StandardNormal(Prior):
    r"""Isotropic Gaussian prior :math:`p(z) = \mathcal N(z; 0, I_D)`.

    Its KL against a diagonal Gaussian guide is analytic, so ``TraceMeanField_ELBO`` uses the
    closed form :math:`\mathrm{KL} = \tfrac12\sum_d(\mu_d^2 + \sigma_d^2 - 1 - \log\sigma_d^2)`.

    Args:
        latent_dim: Dimension D of z.

    Example:
        >>> import pvae
        >>> pvae.priors.StandardNormal(latent_dim=2)().event_shape
        torch.Size([2])
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        # Non-persistent buffers follow .to(device) without entering the checkpoint.
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
