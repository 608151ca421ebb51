r"""A VAE with L stochastic layers, as one Pyro program (Burda et al. 2015, §5).

.. math::

    p_\theta(x, z_{1:L}) = p(z_L)\,\prod_{l=1}^{L-1} p_\theta(z_l \mid z_{l+1})\;
        p_\theta(x \mid z_1), \qquad
    q_\phi(z_{1:L} \mid x) = q_\phi(z_1 \mid x)\,\prod_{l=2}^{L} q_\phi(z_l \mid z_{l-1})

The top prior :math:`p(z_L)` is any :mod:`pvae.priors` prior and :math:`p(x \mid z_1)` any
:mod:`pvae.likelihoods` likelihood over an MLP decoder; every conditional
:math:`p(z_l \mid z_{l+1})` and :math:`q(z_l \mid z_{l-1})` is a diagonal Gaussian whose mean and
scale come from an MLP (:class:`pvae.guides.DiagonalNormal`). The latent sites ``"z1"`` …
``"zL"`` and the observed site ``"x"`` all lie in ``pyro.plate("data", ...)``, so every pvae
estimator (:func:`pvae.log_px`, :func:`pvae.bounds`, the IWAE objective, active units per layer)
reads the right importance weights from the traces: each weight is
:math:`\log p(x, z_{1:L}) - \log q(z_{1:L} \mid x)` with every layer in it.

References:
    Burda, Grosse & Salakhutdinov (2015), *Importance Weighted Autoencoders*, §5 (architecture:
    stochastic layers of 100 and 50 units; two deterministic tanh layers of 200 units between x
    and z_1, two of 100 units between z_1 and z_2).
    Tomczak & Welling (2018), *VAE with a VampPrior*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pvae import nets
from pvae._checks import positive_int
from pvae.guides import DiagonalNormal
from pvae.likelihoods import Bernoulli, Likelihood
from pvae.model import _masked_out, point_estimate
from pvae.priors import Prior, StandardNormal
from pvae.program import PyroProgram

__all__ = ["HierarchicalVAE"]


def _data_plate(
    x: Tensor | None, size: int | None, subsample: Tensor | None, batch_size: int | None
) -> pyro.plate:
    """The ``"data"`` plate of :meth:`HierarchicalVAE.model` and ``guide`` (as in
    :class:`pvae.VAE`): over the minibatch, scaled by N / B when ``size`` is given."""
    if x is None:
        n = positive_int("batch_size", batch_size) if batch_size is not None else 1
        return pyro.plate("data", n if size is None else size, subsample_size=n, dim=-1)
    if size is None:
        return pyro.plate("data", x.shape[0], dim=-1)
    if subsample is None:
        subsample = torch.arange(x.shape[0], device=x.device)
    return pyro.plate("data", size, subsample=subsample, dim=-1)


class _MeanChain:
    """u ↦ q(z_L | μ_{L-1}(u)): the last inference layer at the means of the layers below, the
    "encoder" a :class:`~pvae.priors.VampPrior` at the top of the chain is bound to. Holds no
    modules of its own (the program owns the encoders), so nothing is registered twice."""

    def __init__(self, program: HierarchicalVAE) -> None:
        self._program = program

    def __call__(self, u: Tensor) -> dist.TorchDistribution:
        p = self._program
        h = u
        for enc in p.encoders[:-1]:
            h = point_estimate(enc(h))
        return p.encoders[-1](h)


class HierarchicalVAE(PyroProgram):
    r"""VAE with L ≥ 1 stochastic layers: generative chain :math:`z_L \to \dots \to z_1 \to x`,
    bottom-up inference :math:`x \to z_1 \to \dots \to z_L` (see the module docstring).

    The defaults reproduce the two-layer architecture of Burda et al. (2015): with
    ``latent_dims=(100, 50)``, MLPs of two tanh layers of ``2 · dim`` units link each layer to
    the one below it: 200 between x and z_1, 100 between z_1 and z_2, in both directions.

    **Top prior.** Any :mod:`pvae.priors` prior over ``latent_dims[-1]`` dimensions. A
    :class:`~pvae.priors.VampPrior` needs :math:`q(z_L \mid u)` at its pseudo-inputs u, which in
    a bottom-up chain is the integral :math:`\int q(z_L\mid z_{L-1})\cdots q(z_1\mid u)\,
    dz_{1:L-1}`, with no closed form. It is given the chain's means instead:
    :math:`p(z_L) = \frac1K\sum_k q(z_L \mid \mu_{L-1}(u_k))` with
    :math:`\mu_l(u) = \mathbb E\,q(z_l \mid \mu_{l-1}(u))`, :math:`\mu_0(u) = u`, a normalized
    mixture that equals the VampPrior for L = 1 but is only its mean-field analogue above.

    .. warning:: ``pyro.infer.TraceMeanField_ELBO`` (pvae's ``"meanfield_elbo"``) is *biased*
       for L ≥ 2: it uses the closed-form KL of :math:`q(z_l\mid z_{l-1})` against
       :math:`p(z_l\mid z_{l+1})` at a :math:`z_{l+1}` that the guide drew *given* :math:`z_l`,
       which is not the expectation the ELBO needs. Train with ``Trace_ELBO`` or the IWAE.

    Args:
        latent_dims: Widths of z_1 (bottom) … z_L (top).
        prior: p(z_L), a :class:`pvae.priors.Prior` over ``latent_dims[-1]`` dimensions;
            :class:`~pvae.priors.StandardNormal` by default.
        likelihood: p(x | z_1) given decoder output; :class:`~pvae.likelihoods.Bernoulli` by
            default.
        hidden: Per layer l = 1 … L, the hidden widths of the MLPs between z_{l-1} and z_l
            (z_0 = x): the inference MLP uses them in order, the generative one reversed. Default
            ``(2 · dim_l, 2 · dim_l)`` for each layer.
        activation: Activation of the default MLPs (a name in :data:`pvae.nets.ACTIVATIONS`).
        encoders: L modules, the l-th mapping z_{l-1} (x for l = 1) to the distribution
            q(z_l | z_{l-1}) with event shape ``(dim_l,)``. Default: diagonal Gaussians over MLPs.
        conditionals: L − 1 modules, the l-th mapping z_{l+1} to p(z_l | z_{l+1}) with event
            shape ``(dim_l,)``. Default: diagonal Gaussians over MLPs.
        decoder: z_1 of shape ``(..., dim_1)`` to likelihood parameters. Default: an MLP.
        data_shape: Shape of one datapoint (or call :meth:`build`; :func:`pvae.fit` does).
        name: Prefix of the parameters' Pyro ``param`` site names (unique by default).

    Example:
        >>> import torch, pyro, pvae
        >>> m = pvae.HierarchicalVAE((4, 2), data_shape=(1, 8, 8))
        >>> tr = pyro.poutine.trace(m.guide).get_trace(torch.ones(5, 1, 8, 8))
        >>> [n for n in tr.nodes if n.startswith("z")], tuple(tr.nodes["z2"]["value"].shape)
        (['z1', 'z2'], (5, 2))
        >>> m.sample(3).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self,
        latent_dims: Sequence[int] = (100, 50),
        prior: Prior | None = None,
        likelihood: Likelihood | None = None,
        hidden: Sequence[Sequence[int]] | None = None,
        activation: str = "tanh",
        encoders: Sequence[nn.Module] | None = None,
        conditionals: Sequence[nn.Module] | None = None,
        decoder: nn.Module | None = None,
        data_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if isinstance(latent_dims, int) or not len(latent_dims):
            raise ValueError(
                f"latent_dims must be a non-empty sequence of layer widths (z_1 first), got "
                f"{latent_dims!r}"
            )
        self.latent_dims = tuple(positive_int("latent_dims entries", d) for d in latent_dims)
        L = len(self.latent_dims)
        top = self.latent_dims[-1]
        prior = prior if prior is not None else StandardNormal(top)
        if not isinstance(prior, nn.Module) or not hasattr(prior, "latent_dim"):
            raise TypeError(f"prior must be a pvae.priors.Prior module, got {type(prior).__name__}")
        if int(prior.latent_dim) != top:
            raise ValueError(
                f"the prior is over z_L, the top layer of {top} dimensions "
                f"(latent_dims={list(self.latent_dims)}), but has latent_dim={prior.latent_dim}"
            )
        self.prior = prior
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        if hidden is None:
            hidden = [(2 * d, 2 * d) for d in self.latent_dims]
        if isinstance(hidden, int) or len(hidden) != L:
            raise ValueError(
                f"hidden must give one sequence of hidden widths per stochastic layer ({L}), "
                f"got {hidden!r}"
            )
        self.hidden = tuple(
            tuple(positive_int(f"hidden[{i}] entries", h) for h in _widths(i, hs))
            for i, hs in enumerate(hidden)
        )
        nets._activation(activation)  # an unknown name fails here, not at build time
        self.activation = activation
        self.encoders = _module_list("encoders", encoders, L)
        self.conditionals = _module_list("conditionals", conditionals, L - 1)
        self.decoder = decoder
        self.data_shape: tuple[int, ...] | None = None
        if data_shape is not None:
            self.build(data_shape)

    # -- structure -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, the number of stochastic layers."""
        return len(self.latent_dims)

    @property
    def sites(self) -> tuple[str, ...]:
        """Names of the latent sites, bottom to top: ``("z1", …, "zL")``."""
        return tuple(f"z{i}" for i in range(1, self.num_layers + 1))

    @property
    def is_built(self) -> bool:
        return (
            self.data_shape is not None
            and self.encoders is not None
            and self.conditionals is not None
            and self.decoder is not None
        )

    def build(self, data_shape: Sequence[int]) -> HierarchicalVAE:
        """Fix the data shape, creating the default networks that were not given.

        Idempotent for the same shape; raises ``ValueError`` for another one.
        """
        shape = self._fix_data_shape(data_shape)
        if shape is None:
            return self
        self.data_shape = shape
        self.likelihood.build(shape)
        dims, act = self.latent_dims, self.activation
        inputs: list[int | tuple[int, ...]] = [shape, *dims[:-1]]
        if self.encoders is None:
            self.encoders = nn.ModuleList(
                DiagonalNormal(nets.MLP(i, 2 * d, h, act), d)
                for i, d, h in zip(inputs, dims, self.hidden, strict=True)
            )
        if self.conditionals is None:
            self.conditionals = nn.ModuleList(
                DiagonalNormal(nets.MLP(above, 2 * d, tuple(reversed(h)), act), d)
                for d, above, h in zip(dims[:-1], dims[1:], self.hidden[1:], strict=True)
            )
        if self.decoder is None:
            param_shape = self.likelihood.param_shape(shape)
            self.decoder = nets.MLP(dims[0], param_shape, tuple(reversed(self.hidden[0])), act)
        self.prior.bind(_MeanChain(self), shape)
        return self

    def _require_built(self) -> None:
        if not self.is_built:
            raise ValueError(
                "the HierarchicalVAE is not built: call model.build(data_shape) or pvae.fit first"
            )

    def check_compatible(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless every network fits data like ``x`` (a dry run)."""
        self._require_built()
        shape = tuple(x.shape[1:])
        if shape != self.data_shape:
            raise ValueError(
                f"data has datapoints of shape {shape}, but the HierarchicalVAE was built for "
                f"{self.data_shape}"
            )
        with torch.no_grad():
            h = x[:2]
            means = []
            for i, enc in enumerate(self.encoders, 1):
                h = point_estimate(_event(f"encoders[{i - 1}]", enc(h), self.latent_dims[i - 1]))
                means.append(h)
            for i, cond in enumerate(self.conditionals, 1):
                _event(f"conditionals[{i - 1}]", cond(means[i]), self.latent_dims[i - 1])
            out = tuple(self.decoder(means[0]).shape[1:])
        want = tuple(self.likelihood.param_shape(self.data_shape))
        if out != want:
            raise ValueError(
                f"decoder output shape {out} does not match the likelihood's parameter shape "
                f"{want} for data of shape {self.data_shape}"
            )

    # -- the distributions, usable without Pyro --------------------------------------------------
    def decode(self, z1: Tensor) -> dist.TorchDistribution:
        """p(x | z_1) for z_1 of shape ``(..., dim_1)``."""
        return self.likelihood(self.decoder(z1), len(self.data_shape))

    def decode_mean(self, z1: Tensor) -> Tensor:
        """E[x | z_1], for reconstructions and sample grids."""
        return self.likelihood.mean(self.decoder(z1), len(self.data_shape))

    def posterior_means(self, x: Tensor) -> list[Tensor]:
        """The inference chain at its means, ``[μ_1(x), …, μ_L(x)]`` with
        :math:`\\mu_l = \\mathbb E\\,q(z_l \\mid \\mu_{l-1})`, :math:`\\mu_0 = x`: a deterministic
        summary for reconstructions (``decode_mean(posterior_means(x)[0])``) and embeddings."""
        self._require_built()
        out, h = [], x
        for enc in self.encoders:
            h = point_estimate(enc(h))
            out.append(h)
        return out

    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z_1] at the chain's means: a deterministic reconstruction."""
        return self.decode_mean(self.posterior_means(x)[0])

    def sample_latents(self, n: int) -> list[Tensor]:
        """Draw ``[z_1, …, z_L]`` for ``n`` datapoints down the generative chain."""
        self._require_built()
        n = positive_int("n", n)
        z = self.prior().sample((n,))
        out = [z]
        for cond in reversed(self.conditionals):
            z = cond(z).sample()
            out.append(z)
        return out[::-1]

    def sample(self, n: int, mean: bool = False) -> Tensor:
        """Draw ``n`` datapoints x ~ p(x) (or E[x | z_1] with ``mean=True``, for a picture grid).

        Pyro's route gives the same draws with every latent:
        ``Predictive(m.model, num_samples=S)(None, batch_size=n)``.
        """
        z1 = self.sample_latents(n)[0]
        return self.decode_mean(z1) if mean else self.decode(z1).sample()

    # -- Pyro program ----------------------------------------------------------------------------
    def model(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        batch_size: int | None = None,
        **_: Any,
    ) -> Tensor:
        """p(z_L) ∏ p(z_l | z_{l+1}) p(x | z_1) for a minibatch ``x`` out of ``size`` datapoints.

        Same conventions as :meth:`pvae.VAE.model`: ``x=None`` draws ``batch_size`` datapoints
        (default 1); under ``poutine.mask(mask=False)`` (how :class:`pyro.infer.Predictive` runs
        a model) x is drawn rather than observed, so ``Predictive(m.model, guide=m.guide,
        num_samples=S)(x)`` is the posterior predictive.

        Args:
            x: Minibatch of shape ``(B, *data_shape)``, or ``None`` to sample.
            size: Size N of the whole dataset; the plate scales log densities by N / B.
            subsample: Indices of the minibatch in the dataset (optional).
            batch_size: Datapoints to draw when ``x`` is ``None``.

        Returns:
            x: the observed or the drawn datapoints.
        """
        self._require_built()
        obs = None if x is None or _masked_out() else x
        with _data_plate(x, size, subsample, batch_size):
            z = pyro.sample(f"z{self.num_layers}", self.prior())
            for i in range(self.num_layers - 1, 0, -1):
                z = pyro.sample(f"z{i}", self.conditionals[i - 1](z))
            return pyro.sample("x", self.decode(z), obs=obs)

    def guide(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        **_: Any,
    ) -> Tensor:
        """q(z_1 | x) ∏ q(z_l | z_{l-1}) in the same ``"data"`` plate as :meth:`model`.

        Returns:
            The draw of the top layer z_L.
        """
        if x is None:
            raise ValueError(
                "the guide q(z | x) needs data x; for prior-predictive draws run the model alone "
                "(Predictive(m.model, num_samples=S)(None, batch_size=B))"
            )
        self._require_built()
        h = x
        with _data_plate(x, size, subsample, None):
            for i, enc in enumerate(self.encoders, 1):
                h = pyro.sample(f"z{i}", enc(h))
        return h


def _widths(i: int, hs: Any) -> Sequence[int]:
    if isinstance(hs, int) or not isinstance(hs, Sequence):
        raise ValueError(f"hidden[{i}] must be a sequence of widths (e.g. [200, 200]), got {hs!r}")
    return hs


def _module_list(name: str, mods: Sequence[nn.Module] | None, n: int) -> nn.ModuleList | None:
    if mods is None:
        return None
    mods = list(mods)
    if len(mods) != n:
        raise ValueError(f"{name} must hold {n} modules (one per layer), got {len(mods)}")
    for i, m in enumerate(mods):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name}[{i}] must be an nn.Module, got {type(m).__name__}")
    return nn.ModuleList(mods)


def _event(name: str, q: Any, d: int) -> Any:
    if not isinstance(q, torch.distributions.Distribution) or tuple(q.event_shape) != (d,):
        got = tuple(q.event_shape) if hasattr(q, "event_shape") else type(q).__name__
        raise ValueError(f"{name} must return a distribution with event shape ({d},), got {got}")
    return q
