r"""Amortized guides q(z | x): modules mapping a batch of x to a distribution over z."""

from __future__ import annotations

import pyro.distributions as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pvae._checks import positive_float, positive_int

__all__ = ["DiagonalNormal"]


class DiagonalNormal(nn.Module):
    r"""Diagonal Gaussian guide :math:`q_\phi(z\mid x) = \mathcal N(\mu_\phi(x),
    \mathrm{diag}\,\sigma_\phi(x)^2)` (Kingma & Welling 2013).

    ``net`` maps x to ``2 * latent_dim`` features: the mean, and a raw scale mapped through
    :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}`; the floor keeps
    :math:`\log q` bounded when the encoder grows confident.

    Args:
        net: Encoder network, x of shape ``(..., *data_shape)`` to ``(..., 2 * latent_dim)``.
        latent_dim: Dimension D of z.
        min_scale: Floor on the posterior standard deviation.
    """

    def __init__(self, net: nn.Module, latent_dim: int, min_scale: float = 1e-4) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = positive_int("latent_dim", latent_dim)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)

    @staticmethod
    def num_params(latent_dim: int) -> int:
        """Encoder output width needed for ``latent_dim``."""
        return 2 * latent_dim

    def forward(self, x: Tensor) -> dist.TorchDistribution:
        h = self.net(x)
        if h.shape[-1] != 2 * self.latent_dim:
            raise ValueError(
                f"encoder output must have last dimension 2 * latent_dim = {2 * self.latent_dim}"
                f", got shape {tuple(h.shape)}"
            )
        loc, raw = h.split(self.latent_dim, dim=-1)
        return dist.Normal(loc, F.softplus(raw) + self.min_scale).to_event(1)
