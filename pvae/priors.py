"""Priors p(z): modules whose ``forward()`` returns a ``pyro.distributions`` object over z.

Every prior has ``latent_dim`` and returns a distribution with ``event_shape == (latent_dim,)`` and
empty batch shape; the ``"data"`` plate broadcasts it over datapoints. Priors are normalized log
densities in nats: swapping one is passing another module.

``factorized`` priors are products over latent dimensions (used by per-dimension free bits and
per-dimension KL diagnostics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvae._checks import one_of, positive_float, positive_int

__all__ = [
    "PRIORS",
    "EqualMixture",
    "FlowPrior",
    "LearnedGaussian",
    "MixtureOfGaussians",
    "Prior",
    "StandardNormal",
    "StudentT",
    "VampPrior",
]


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class Prior(nn.Module):
    """Base class: a module over no input whose ``forward()`` is p(z).

    Args:
        latent_dim: Dimension D of z.
    """

    factorized: bool = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = positive_int("latent_dim", latent_dim)

    def bind(self, encoder: nn.Module, data_shape: Sequence[int]) -> None:
        """Called once the VAE knows its encoder and data shape (VampPrior needs both)."""

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

    factorized = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        # Non-persistent buffers follow .to(device) without entering the checkpoint.
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedGaussian(Prior):
    r"""Diagonal Gaussian prior with learnable mean and scale,
    :math:`\sigma = \mathrm{softplus}(s) + \sigma_{\min}`. Analytic KL against Gaussian guides.

    Args:
        latent_dim: Dimension D of z.
        min_scale: Floor on the prior's scale.
    """

    factorized = True

    def __init__(self, latent_dim: int, min_scale: float = 1e-3) -> None:
        super().__init__(latent_dim)
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        self.loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.raw_scale = nn.Parameter(torch.full((self.latent_dim,), _inv_softplus(1 - min_scale)))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, F.softplus(self.raw_scale) + self.min_scale).to_event(1)


class MixtureOfGaussians(Prior):
    r"""Mixture of K diagonal Gaussians with learnable weights, means and scales,
    :math:`p(z) = \sum_k \pi_k \mathcal N(z; \mu_k, \mathrm{diag}\,\sigma_k^2)`.

    No closed-form KL: ``meanfield_elbo`` falls back to the Monte Carlo KL for this prior.

    Args:
        latent_dim: Dimension D of z.
        num_components: K.
        init_spread: Standard deviation of the initial component means (breaks symmetry).
    """

    def __init__(self, latent_dim: int, num_components: int = 10, init_spread: float = 1.0):
        super().__init__(latent_dim)
        k = positive_int("num_components", num_components)
        g = torch.Generator().manual_seed(0)
        spread = positive_float("init_spread", init_spread, allow_zero=True)
        self.logits = nn.Parameter(torch.zeros(k))
        self.loc = nn.Parameter(spread * torch.randn(k, self.latent_dim, generator=g))
        self.raw_scale = nn.Parameter(torch.full((k, self.latent_dim), _inv_softplus(1.0)))

    def forward(self) -> dist.TorchDistribution:
        comp = dist.Normal(self.loc, F.softplus(self.raw_scale) + 1e-4).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), comp)


class VampPrior(Prior):
    r"""VampPrior (Tomczak & Welling 2018): the mixture of the encoder's posteriors at K learnable
    pseudo-inputs, :math:`p(z) = \frac1K \sum_k q_\phi(z \mid u_k)`.

    The prior shares the encoder (it is bound by :meth:`bind` when the VAE is built; the encoder
    is not registered twice). Pseudo-inputs live in [0, 1] through a sigmoid when ``bounded``.

    Args:
        latent_dim: Dimension D of z.
        num_pseudo_inputs: K.
        bounded: Keep pseudo-inputs in [0, 1] (image data).
    """

    def __init__(self, latent_dim: int, num_pseudo_inputs: int = 500, bounded: bool = True):
        super().__init__(latent_dim)
        self.num_pseudo_inputs = positive_int("num_pseudo_inputs", num_pseudo_inputs)
        self.bounded = bool(bounded)
        self.pseudo_inputs: nn.Parameter | None = None
        self._encoder: tuple[nn.Module] | None = None  # a tuple hides it from nn.Module

    def bind(self, encoder: nn.Module, data_shape: Sequence[int]) -> None:
        self._encoder = (encoder,)
        if self.pseudo_inputs is None:
            g = torch.Generator().manual_seed(0)
            init = 0.01 * torch.randn(self.num_pseudo_inputs, *data_shape, generator=g)
            if not self.bounded:
                init = init + 0.5
            self.pseudo_inputs = nn.Parameter(init)

    def forward(self) -> dist.TorchDistribution:
        if self._encoder is None or self.pseudo_inputs is None:
            raise RuntimeError("VampPrior is not bound to an encoder: build the VAE first")
        u = torch.sigmoid(self.pseudo_inputs) if self.bounded else self.pseudo_inputs
        return EqualMixture(self._encoder[0](u))  # components: batch (K,), event (D,)


class EqualMixture(dist.TorchDistribution):
    r"""Equal-weight mixture :math:`\frac1K\sum_k q_k(z)` of the K components of a batched
    distribution. Unlike ``MixtureSameFamily`` it evaluates every component on z expanded to
    ``(..., K, D)``, which conditional flows (whose context has batch (K,)) need."""

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, components: dist.TorchDistribution, batch_shape: Sequence[int] = ()):
        self.components = components
        self.num_components = components.batch_shape[-1]
        super().__init__(torch.Size(batch_shape), components.event_shape, validate_args=False)

    @property
    def support(self):  # type: ignore[override]
        return self.components.support

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        return EqualMixture(self.components, batch_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        ev = len(self.event_shape)
        zz = z.unsqueeze(-1 - ev)
        zz = zz.expand(*zz.shape[: -1 - ev], self.num_components, *self.event_shape)
        return self.components.log_prob(zz).logsumexp(-1) - math.log(self.num_components)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        every = self.components.sample(shape)  # (*shape, K, *event)
        idx = torch.randint(self.num_components, shape, device=every.device)
        idx = idx.reshape(*shape, 1, *[1] * len(self.event_shape))
        idx = idx.expand(*shape, 1, *self.event_shape)
        return every.gather(len(shape), idx).squeeze(len(shape))


class FlowPrior(Prior):
    r"""A normalizing flow on a standard normal: :math:`z = f_L \circ \dots \circ f_1(\epsilon)`,
    :math:`\epsilon \sim \mathcal N(0, I)`, with Pyro's autoregressive transforms
    (Papamakarios et al. 2017; spline flows, Durkan et al. 2019).

    Args:
        latent_dim: Dimension D of z (≥ 2 for autoregressive flows).
        num_flows: Number L of transforms.
        kind: ``"affine"`` (masked affine autoregressive) or ``"spline"`` (rational-quadratic
            spline autoregressive).
        hidden: Hidden widths of each transform's autoregressive network.
    """

    def __init__(
        self,
        latent_dim: int,
        num_flows: int = 2,
        kind: str = "affine",
        hidden: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__(latent_dim)
        if self.latent_dim < 2:
            raise ValueError(
                f"latent_dim must be >= 2 for an autoregressive flow prior, got {latent_dim}"
            )
        one_of("kind", kind, ("affine", "spline"))
        make = T.affine_autoregressive if kind == "affine" else T.spline_autoregressive
        hidden = [positive_int("hidden", h) for h in hidden]
        self.transforms = nn.ModuleList(
            make(self.latent_dim, hidden_dims=hidden)
            for _ in range(positive_int("num_flows", num_flows))
        )
        # A buffer, so the permutation between layers follows the module to its device.
        self.register_buffer("reverse", torch.arange(self.latent_dim - 1, -1, -1), persistent=False)
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)

    def forward(self) -> dist.TorchDistribution:
        layers: list[T.Transform] = []
        for i, t in enumerate(self.transforms):
            if i:  # alternate the variable order between layers
                layers.append(T.Permute(self.reverse))
            layers.append(t)
        return dist.TransformedDistribution(dist.Normal(self.loc, self.scale).to_event(1), layers)


class StudentT(Prior):
    r"""Heavy-tailed factorized Student-t prior
    :math:`p(z) = \prod_d t_\nu(z_d; 0, 1)`, with fixed or learnable degrees of freedom ν.

    Args:
        latent_dim: Dimension D of z.
        df: Degrees of freedom ν (> 0; ν → ∞ recovers the standard normal).
        learn_df: Learn ν (kept above 0.5 through a softplus).
    """

    factorized = True

    def __init__(self, latent_dim: int, df: float = 3.0, learn_df: bool = False) -> None:
        super().__init__(latent_dim)
        df = positive_float("df", df)
        self.learn_df = bool(learn_df)
        if self.learn_df:
            self.raw_df = nn.Parameter(torch.tensor(_inv_softplus(max(df - 0.5, 1e-3))))
        else:
            self.register_buffer("fixed_df", torch.tensor(df), persistent=False)
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)

    @property
    def df(self) -> Tensor:
        return F.softplus(self.raw_df) + 0.5 if self.learn_df else self.fixed_df

    def forward(self) -> dist.TorchDistribution:
        df = self.df.expand(self.latent_dim)
        return dist.StudentT(df, self.loc, torch.ones_like(self.loc)).to_event(1)


PRIORS: Mapping[str, type[Prior]] = {
    "standard_normal": StandardNormal,
    "learned_gaussian": LearnedGaussian,
    "mog": MixtureOfGaussians,
    "vamp": VampPrior,
    "flow": FlowPrior,
    "student_t": StudentT,
}
"""The priors a config's ``[model.prior]`` table names, each built as ``cls(latent_dim, **kw)``."""
