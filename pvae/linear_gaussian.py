r"""A linear-Gaussian VAE, where log p(x) and the posterior are known in closed form.

.. math::

    z \sim \mathcal N(0, I_d), \qquad x \mid z \sim \mathcal N(Wz + b, \sigma^2 I_D)

    p(x) = \mathcal N(x; b, WW^\top + \sigma^2 I), \qquad
    p(z \mid x) = \mathcal N\big(\Sigma W^\top (x - b)/\sigma^2,\ \Sigma\big),
    \quad \Sigma = (I + W^\top W/\sigma^2)^{-1}

With orthogonal columns of W, :math:`W^\top W` is diagonal, so the exact posterior is a diagonal
Gaussian whose mean is linear in x: the toolkit's own guide family holds it exactly. That makes
this model the reference for every estimator: with the exact guide, ELBO = IWAE_k = log p(x) for
every draw; with any other guide the bounds must order and converge as theory says.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pvae.guides import DiagonalNormal
from pvae.likelihoods import Gaussian
from pvae.model import VAE
from pvae.priors import StandardNormal

__all__ = ["LinearGaussian"]


class LinearGaussian:
    """The generative model above with orthogonal, scaled columns of W (float64).

    Args:
        data_dim: D.
        latent_dim: d ≤ D.
        sigma: Observation noise σ.
        seed: Seed for W (orthogonal columns with scales in [0.5, 2]) and b.
    """

    def __init__(self, data_dim: int = 6, latent_dim: int = 2, sigma: float = 0.5, seed: int = 0):
        if latent_dim > data_dim:
            raise ValueError(f"latent_dim must be <= data_dim, got {latent_dim} > {data_dim}")
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, data_dim, generator=g, dtype=torch.float64))
        scales = torch.linspace(0.5, 2.0, latent_dim, dtype=torch.float64)
        self.W = q[:, :latent_dim] * scales
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64)
        self.sigma = float(sigma)
        self.post_var = 1.0 / (1.0 + scales**2 / self.sigma**2)  # diagonal of Σ

    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.W.shape[1]

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x)."""
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.data_dim, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) per datapoint."""
        return self.marginal().log_prob(x)

    def posterior_mean(self, x: Tensor) -> Tensor:
        """E[z | x]."""
        return (x - self.b) @ self.W * (self.post_var / self.sigma**2)

    def sample(self, n: int, seed: int = 1) -> Tensor:
        """n datapoints from p(x)."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.data_dim, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * eps

    def vae(self, loc_shift: float = 0.0, scale_factor: float = 1.0) -> VAE:
        """This model as a :class:`~pvae.VAE` whose guide is the exact posterior, optionally
        made wrong: its mean shifted by ``loc_shift`` and its scale multiplied by
        ``scale_factor``."""
        d, D = self.latent_dim, self.data_dim
        enc = nn.Linear(D, 2 * d).double()
        a = self.W.T * (self.post_var / self.sigma**2)[:, None]  # (d, D): E[z|x] = a (x - b)
        std = self.post_var.sqrt() * scale_factor
        with torch.no_grad():
            enc.weight.zero_()
            enc.weight[:d] = a
            enc.bias[:d] = -(a @ self.b) + loc_shift
            enc.bias[d:] = torch.log(torch.expm1(std))  # inverse softplus
        dec = nn.Linear(d, D).double()
        with torch.no_grad():
            dec.weight.copy_(self.W)
            dec.bias.copy_(self.b)
        prior = StandardNormal(d).double()
        lik = Gaussian(scale=self.sigma).double()
        return VAE(prior, lik, DiagonalNormal(enc, d, min_scale=0.0), dec, data_shape=(D,))

    def exact_log_px_mean(self, x: Tensor) -> float:
        """Mean exact log p(x) over datapoints."""
        return float(self.log_px(x).mean())
