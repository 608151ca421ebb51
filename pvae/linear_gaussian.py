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

:class:`LinearGaussianChain` is the two-layer analogue, the reference for hierarchical models
(:class:`~pvae.HierarchicalVAE`): a linear-Gaussian chain :math:`z_2 \to z_1 \to x` whose
marginal and joint posterior are Gaussian, and whose bottom-up guide can be exact; so can the
top-down guide of a :class:`~pvae.LadderVAE` with precision-weighted merging
(:meth:`LinearGaussianChain.ladder`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pvae.guides import DiagonalNormal
from pvae.hierarchical import HierarchicalVAE
from pvae.ladder import LadderVAE
from pvae.likelihoods import Gaussian
from pvae.model import VAE
from pvae.priors import StandardNormal

__all__ = ["LinearGaussian", "LinearGaussianChain"]


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


def _inv_softplus(y: Tensor) -> Tensor:
    return torch.log(torch.expm1(y))


def _linear_normal(weight: Tensor, bias: Tensor, std: Tensor) -> DiagonalNormal:
    """A :class:`~pvae.guides.DiagonalNormal` over a linear layer: N(weight · h + bias,
    diag(std²)) whatever h, in float64."""
    d, n_in = weight.shape
    lin = nn.Linear(n_in, 2 * d).double()
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:d] = weight
        lin.bias[:d] = bias
        lin.bias[d:] = _inv_softplus(std.expand(d))
    return DiagonalNormal(lin, d, min_scale=0.0)


class LinearGaussianChain:
    r"""A two-layer linear-Gaussian chain, with its exact marginal and posterior (float64).

    .. math::

        z_2 \sim \mathcal N(0, I_{d_2}), \quad
        z_1 \mid z_2 \sim \mathcal N(A z_2 + a, \sigma_1^2 I_{d_1}), \quad
        x \mid z_1 \sim \mathcal N(W z_1 + b, s^2 I_D)

    **Marginal.** :math:`z_1 \sim \mathcal N(a, \Lambda)` with
    :math:`\Lambda = AA^\top + \sigma_1^2 I`, so
    :math:`p(x) = \mathcal N(x;\ Wa + b,\ W\Lambda W^\top + s^2 I)`.

    **Posterior.** :math:`(z_1, z_2)` is jointly Gaussian with x, so :math:`p(z_1, z_2 \mid x)`
    is Gaussian (:meth:`posterior`, by Gaussian conditioning). Because
    :math:`z_2 \perp x \mid z_1` it factorizes bottom-up, exactly as the guide of a
    :class:`~pvae.HierarchicalVAE` does:

    .. math::

        p(z_1, z_2 \mid x) = p(z_1 \mid x)\, p(z_2 \mid z_1), \qquad
        p(z_1 \mid x) = \mathcal N\big(\Sigma_1(\Lambda^{-1}a + W^\top(x - b)/s^2),\
            \Sigma_1\big), \quad \Sigma_1 = (\Lambda^{-1} + W^\top W/s^2)^{-1},

        p(z_2 \mid z_1) = \mathcal N\big(\Sigma_2 A^\top (z_1 - a)/\sigma_1^2,\ \Sigma_2\big),
        \quad \Sigma_2 = (I + A^\top A/\sigma_1^2)^{-1}.

    Both means are linear (in x, in z_1); the guide's diagonal Gaussians hold the factors
    exactly when :math:`\Sigma_1` and :math:`\Sigma_2` are diagonal. Here W has orthogonal
    columns (so :math:`W^\top W` is diagonal) and A has one non-zero entry per column, in
    distinct rows (a scaled, signed, partial permutation), so both :math:`A^\top A` and
    :math:`AA^\top` — hence :math:`\Lambda` and :math:`\Sigma_1` — are diagonal. (For A with
    orthogonal columns alone, :math:`\Sigma_2` stays diagonal but :math:`\Lambda` does not, and
    a diagonal q(z_1 | x) would no longer be exact.)

    **Top-down.** The same posterior factorizes the other way, as a
    :class:`~pvae.LadderVAE`'s guide does: :math:`p(z_1, z_2 \mid x) = p(z_2 \mid x)\,
    p(z_1 \mid z_2, x)`, with

    .. math::

        p(z_2 \mid x) = \mathcal N\big(\Sigma_2' (WA)^\top S^{-1} (x - Wa - b),\ \Sigma_2'\big),
        \quad S = \sigma_1^2 WW^\top + s^2 I, \quad
        \Sigma_2' = (I + (WA)^\top S^{-1} WA)^{-1},

        p(z_1 \mid z_2, x) \propto \mathcal N(z_1; Az_2 + a, \sigma_1^2 I)\,
            \mathcal N(x; Wz_1 + b, s^2 I)
            = \mathcal N\big(z_1;\ \sigma_q^2(\hat\mu\,\hat\sigma^{-2}
            + (Az_2 + a)\,\sigma_1^{-2}),\ \sigma_q^2\big),

    a product of the top-down prior and the Gaussian message of x about z_1,
    :math:`\hat\mu = (W^\top W)^{-1} W^\top (x - b)`, :math:`\hat\sigma^2 =
    s^2 / \mathrm{diag}(W^\top W)` (W's columns are orthogonal), with
    :math:`\sigma_q^{-2} = \hat\sigma^{-2} + \sigma_1^{-2}`: exactly the Ladder VAE's
    precision-weighted merge. :math:`W^\top S^{-1} W` is diagonal (W has orthogonal columns), so
    with A's one entry per column :math:`\Sigma_2'` is diagonal too: both factors are diagonal
    Gaussians with means linear in x (and z_2), which :meth:`ladder` sets.

    Args:
        data_dim: D.
        latent_dims: ``(d_1, d_2)`` with ``d_2 ≤ d_1 ≤ D``.
        sigma1: σ₁, the noise of z_1 given z_2.
        sigma: s, the observation noise.
        seed: Seed for W (orthogonal columns, scales in [0.5, 2]), b, A (scales in [0.5, 1.5],
            random signs and rows) and a.

    Example:
        >>> import pvae
        >>> ref = pvae.LinearGaussianChain(data_dim=6, latent_dims=(3, 2))
        >>> x = ref.sample(4)
        >>> est = pvae.log_px(ref.program(), x, k=10)
        >>> bool((est.log_px - ref.log_px(x)).abs().max() < 1e-8)
        True
    """

    def __init__(
        self,
        data_dim: int = 6,
        latent_dims: tuple[int, int] = (3, 2),
        sigma1: float = 0.6,
        sigma: float = 0.5,
        seed: int = 0,
    ) -> None:
        d1, d2 = latent_dims
        if not data_dim >= d1 >= d2 >= 1:
            raise ValueError(
                f"need data_dim >= d_1 >= d_2 >= 1, got data_dim={data_dim}, "
                f"latent_dims={tuple(latent_dims)}"
            )
        f64 = torch.float64
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, data_dim, generator=g, dtype=f64))
        self.W = q[:, :d1] * torch.linspace(0.5, 2.0, d1, dtype=f64)
        self.b = torch.randn(data_dim, generator=g, dtype=f64)
        rows = torch.randperm(d1, generator=g)[:d2]
        signs = torch.randint(2, (d2,), generator=g).to(f64) * 2 - 1
        self.A = torch.zeros(d1, d2, dtype=f64)
        self.A[rows, torch.arange(d2)] = signs * torch.linspace(0.5, 1.5, d2, dtype=f64)
        self.a = torch.randn(d1, generator=g, dtype=f64)
        self.sigma1 = float(sigma1)
        self.sigma = float(sigma)

    @property
    def data_dim(self) -> int:
        return self.W.shape[0]

    @property
    def latent_dims(self) -> tuple[int, int]:
        return self.W.shape[1], self.A.shape[1]

    def _eye(self, n: int) -> Tensor:
        return torch.eye(n, dtype=torch.float64)

    def z1_cov(self) -> Tensor:
        """Λ = A Aᵀ + σ₁² I, the marginal covariance of z_1."""
        return self.A @ self.A.T + self.sigma1**2 * self._eye(self.latent_dims[0])

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x)."""
        cov = self.W @ self.z1_cov() @ self.W.T + self.sigma**2 * self._eye(self.data_dim)
        return torch.distributions.MultivariateNormal(self.W @ self.a + self.b, cov)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) per datapoint."""
        return self.marginal().log_prob(x)

    def posterior(self, x: Tensor) -> torch.distributions.MultivariateNormal:
        """The exact joint posterior p(z_1, z_2 | x) over the concatenation ``(z_1, z_2)``, batch
        ``(N,)``, by conditioning the joint Gaussian of (z_1, z_2, x) on x (no use of the
        diagonal structure: the reference a guide is checked against)."""
        d2 = self.latent_dims[1]
        mean = torch.cat([self.a, torch.zeros(d2, dtype=torch.float64)])
        cov = torch.cat(
            [torch.cat([self.z1_cov(), self.A], 1), torch.cat([self.A.T, self._eye(d2)], 1)]
        )
        H = torch.cat([self.W, torch.zeros(self.data_dim, d2, dtype=torch.float64)], 1)
        S = H @ cov @ H.T + self.sigma**2 * self._eye(self.data_dim)
        gain = torch.linalg.solve(S, H @ cov).T  # cov Hᵀ S⁻¹
        loc = mean + (x - (H @ mean + self.b)) @ gain.T
        post = cov - gain @ H @ cov
        return torch.distributions.MultivariateNormal(loc, 0.5 * (post + post.T))

    def sample(self, n: int, seed: int = 1) -> Tensor:
        """n datapoints from p(x), drawn down the chain."""
        d1, d2 = self.latent_dims
        g = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n, d2, generator=g, dtype=torch.float64)
        z1 = z2 @ self.A.T + self.a + self.sigma1 * torch.randn(n, d1, generator=g, dtype=z2.dtype)
        eps = torch.randn(n, self.data_dim, generator=g, dtype=z2.dtype)
        return z1 @ self.W.T + self.b + self.sigma * eps

    def program(self, loc_shift: float = 0.0, scale_factor: float = 1.0) -> HierarchicalVAE:
        """This model as a two-layer :class:`~pvae.HierarchicalVAE` with linear networks, whose
        guide q(z_1 | x) q(z_2 | z_1) is the exact posterior (see the class docstring),
        optionally made wrong: both layers' means shifted by ``loc_shift`` and their scales
        multiplied by ``scale_factor``."""
        d1, d2 = self.latent_dims
        s2, s12 = self.sigma**2, self.sigma1**2
        lam = self.z1_cov()
        cov1 = torch.linalg.inv(torch.linalg.inv(lam) + self.W.T @ self.W / s2)  # Σ₁
        cov2 = torch.linalg.inv(self._eye(d2) + self.A.T @ self.A / s12)  # Σ₂
        gain1 = cov1 @ self.W.T / s2  # E[z1 | x] = gain1 x + off1
        off1 = cov1 @ (torch.linalg.solve(lam, self.a) - self.W.T @ self.b / s2)
        gain2 = cov2 @ self.A.T / s12  # E[z2 | z1] = gain2 (z1 - a)
        shift = torch.tensor(loc_shift, dtype=torch.float64)
        encoders = [
            _linear_normal(gain1, off1 + shift, cov1.diagonal().sqrt() * scale_factor),
            _linear_normal(gain2, -gain2 @ self.a + shift, cov2.diagonal().sqrt() * scale_factor),
        ]
        conditional = _linear_normal(self.A, self.a, torch.tensor(self.sigma1, dtype=torch.float64))
        decoder = nn.Linear(d1, self.data_dim).double()
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
        return HierarchicalVAE(
            (d1, d2),
            prior=StandardNormal(d2).double(),
            likelihood=Gaussian(scale=self.sigma).double(),
            encoders=encoders,
            conditionals=[conditional],
            decoder=decoder,
            data_shape=(self.data_dim,),
        )

    def top_posterior(self) -> tuple[Tensor, Tensor, Tensor]:
        """p(z_2 | x) = N(gain x + offset, diag(var)) (see the class docstring): ``(gain,
        offset, var)``, checking that its covariance is diagonal."""
        d2 = self.latent_dims[1]
        WA = self.W @ self.A
        S = self.sigma1**2 * self.W @ self.W.T + self.sigma**2 * self._eye(self.data_dim)
        cov = torch.linalg.inv(self._eye(d2) + WA.T @ torch.linalg.solve(S, WA))
        if not torch.allclose(cov, torch.diag(cov.diagonal()), atol=1e-12):
            raise ValueError("Cov(z_2 | x) is not diagonal for this chain")  # pragma: no cover
        gain = cov @ torch.linalg.solve(S, WA).T
        return gain, -gain @ (self.W @ self.a + self.b), cov.diagonal()

    def ladder(self, loc_shift: float = 0.0, scale_factor: float = 1.0) -> LadderVAE:
        """This model as a two-layer :class:`~pvae.LadderVAE` (precision-weighted merging) with
        linear paths, whose top-down guide p(z_2 | x) p(z_1 | z_2, x) is the exact posterior
        (see the class docstring), optionally made wrong: both bottom-up estimates' means
        shifted by ``loc_shift`` and their scales multiplied by ``scale_factor``."""
        d1, d2 = self.latent_dims
        m = LadderVAE(
            (d1, d2),
            prior=StandardNormal(d2).double(),
            likelihood=Gaussian(scale=self.sigma).double(),
            hidden=[[], []],
            min_scale=0.0,
            data_shape=(self.data_dim,),
        ).double()
        f64 = torch.float64
        ww = (self.W * self.W).sum(0)  # diag(WᵀW)
        msg = self.W.T / ww[:, None]  # the message's mean: msg (x - b)
        gain2, off2, var2 = self.top_posterior()
        heads = m.paths.q_heads
        _set_head(
            heads[0].out, msg, -msg @ self.b + loc_shift, self.sigma / ww.sqrt() * scale_factor
        )
        _set_head(heads[1].out, gain2, off2 + loc_shift, var2.sqrt() * scale_factor)
        _set_head(m.paths.p_heads[0].out, self.A, self.a, torch.tensor(self.sigma1, dtype=f64))
        with torch.no_grad():
            m.paths.decoder.out.weight.copy_(self.W)
            m.paths.decoder.out.bias.copy_(self.b)
        return m


def _set_head(lin: nn.Linear, weight: Tensor, bias: Tensor, std: Tensor) -> None:
    """A linear ladder head: loc = weight · h + bias, scale = std whatever h."""
    d = weight.shape[0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:d] = weight
        lin.bias[:d] = bias
        lin.bias[d:] = _inv_softplus(std.expand(d))
