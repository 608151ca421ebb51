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
from pvae._checks import lookup, positive_int
from pvae.family import BaseVAE, observation, point_estimate, site_weight
from pvae.guides import DiagonalNormal
from pvae.likelihoods import Likelihood
from pvae.priors import Prior, StandardNormal

__all__ = ["HierarchicalVAE", "hidden_widths", "layer_widths"]


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


class HierarchicalVAE(BaseVAE):
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

    **KL weights.** ``beta`` and ``free_bits`` (:class:`~pvae.family.BaseVAE`; :func:`pvae.fit`
    sets them each step, warm-up included) weight each layer's site ``"z<l>"`` in model and guide
    as a Pyro scale; free bits act per layer, on the layer's KL term :meth:`layer_kls`
    against ``free_bits × dim_l`` nats (Kingma et al. 2016).

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
        skip: Residual connections around the default MLPs' hidden layers
            (:class:`pvae.nets.MLP`).
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

    networks = ("encoders", "conditionals", "decoder")

    def __init__(
        self,
        latent_dims: Sequence[int] = (100, 50),
        prior: Prior | None = None,
        likelihood: Likelihood | None = None,
        hidden: Sequence[Sequence[int]] | None = None,
        activation: str = "tanh",
        skip: bool = False,
        encoders: Sequence[nn.Module] | None = None,
        conditionals: Sequence[nn.Module] | None = None,
        decoder: nn.Module | None = None,
        data_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        dims = layer_widths(latent_dims)
        top = dims[-1]
        super().__init__(prior if prior is not None else StandardNormal(top), likelihood, name)
        if int(self.prior.latent_dim) != top:
            raise ValueError(
                f"the prior is over z_L, the top layer of {top} dimensions "
                f"(latent_dims={list(dims)}), but has latent_dim={self.prior.latent_dim}"
            )
        self.latent_dims = dims
        L = len(dims)
        self.hidden = hidden_widths(hidden, dims)
        if isinstance(activation, str):  # an unknown name fails here, not at build time
            lookup("activation", nets.ACTIVATIONS, activation)
        self.activation = activation
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be True or False, got {skip!r}")
        self.skip = skip
        self.encoders = _module_list("encoders", encoders, L)
        self.conditionals = _module_list("conditionals", conditionals, L - 1)
        self.decoder = decoder
        self._scales: tuple[float, ...] = (1.0,) * L  # the layers' weights from the last guide
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

    def _build_networks(self, shape: tuple[int, ...]) -> None:
        """Diagonal Gaussians over MLPs for the encoders and conditionals, and an MLP decoder,
        where none were given."""
        dims, act, skip = self.latent_dims, self.activation, self.skip
        inputs: list[int | tuple[int, ...]] = [shape, *dims[:-1]]
        if self.encoders is None:
            self.encoders = nn.ModuleList(
                DiagonalNormal(nets.MLP(i, 2 * d, h, act, skip=skip), d)
                for i, d, h in zip(inputs, dims, self.hidden, strict=True)
            )
        if self.conditionals is None:
            self.conditionals = nn.ModuleList(
                DiagonalNormal(nets.MLP(above, 2 * d, tuple(reversed(h)), act, skip=skip), d)
                for d, above, h in zip(dims[:-1], dims[1:], self.hidden[1:], strict=True)
            )
        if self.decoder is None:
            param_shape = self.likelihood.param_shape(shape)
            widths = tuple(reversed(self.hidden[0]))
            self.decoder = nets.MLP(dims[0], param_shape, widths, act, skip=skip)

    def _prior_encoder(self) -> _MeanChain:
        return _MeanChain(self)

    def _checked_code(self, x: Tensor) -> Tensor:
        """The chain's means at ``x``, checking every network's event shape on the way."""
        h, means = x, []
        for i, enc in enumerate(self.encoders, 1):
            h = point_estimate(_event(f"encoders[{i - 1}]", enc(h), self.latent_dims[i - 1]))
            means.append(h)
        for i, cond in enumerate(self.conditionals, 1):
            _event(f"conditionals[{i - 1}]", cond(means[i]), self.latent_dims[i - 1])
        return means[0]

    # -- the distributions, usable without Pyro --------------------------------------------------
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

    def _point_code(self, x: Tensor) -> Tensor:
        return self.posterior_means(x)[0]

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

    def _prior_code(self, n: int) -> Tensor:
        return self.sample_latents(n)[0]

    # -- Pyro program ----------------------------------------------------------------------------
    def layer_kls(self, x: Tensor) -> list[float]:
        r"""Each layer's minibatch-mean KL term, from one draw of the inference chain:
        :math:`\mathrm{KL}_l \approx \frac1B \sum_n \big[\log q(z_l \mid z_{l-1})
        - \log p(z_l \mid z_{l+1})\big]` with :math:`z_{1:L} \sim q(\cdot \mid x)`,
        :math:`z_0 = x` and :math:`p(z_L \mid z_{L+1}) = p(z_L)`. The terms sum to the
        one-draw estimate of :math:`\mathrm{KL}(q(z_{1:L} \mid x) \,\|\, p(z_{1:L}))`; they are
        the per-layer groups of free bits (Kingma et al. 2016, §C.8). No closed form: the
        conditional :math:`p(z_l \mid z_{l+1})` is evaluated at a :math:`z_{l+1}` drawn given
        :math:`z_l` (see the class's warning). Draws its own noise, without gradient.
        """
        with torch.no_grad():
            h, zs, log_q = x, [], []
            for enc in self.encoders:
                q = enc(h)
                h = q.sample()
                zs.append(h)
                log_q.append(q.log_prob(h))
            log_p = [cond(zs[i + 1]).log_prob(zs[i]) for i, cond in enumerate(self.conditionals)]
            log_p.append(self.prior().log_prob(zs[-1]))
            return [float((a - b).mean()) for a, b in zip(log_q, log_p, strict=True)]

    def layer_weights(self, x: Tensor) -> tuple[float, ...]:
        """The weight of each layer's sites, bottom to top: β, or with free bits 0 for a layer
        whose KL term (:meth:`layer_kls`) is under ``free_bits × dim_l`` nats (see
        :mod:`pvae.family`)."""
        if self.free_bits <= 0:
            return (self.beta,) * self.num_layers
        kls = self.layer_kls(x)
        return tuple(self.group_weight(k, d) for k, d in zip(kls, self.latent_dims, strict=True))

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
        num_samples=S)(x)`` is the posterior predictive. Layer l's site is weighted as the
        guide's (:meth:`layer_weights`).

        Args:
            x: Minibatch of shape ``(B, *data_shape)``, or ``None`` to sample.
            size: Size N of the whole dataset; the plate scales log densities by N / B.
            subsample: Indices of the minibatch in the dataset (optional).
            batch_size: Datapoints to draw when ``x`` is ``None``.

        Returns:
            x: the observed or the drawn datapoints.
        """
        self._require_built()
        obs = observation(x)
        w = [self.model_weight(s) for s in self._scales]
        L = self.num_layers
        with self.data_plate(x, size, subsample, batch_size):
            with site_weight(w[L - 1]):
                z = pyro.sample(f"z{L}", self.prior())
            for i in range(L - 1, 0, -1):
                with site_weight(w[i - 1]):
                    z = pyro.sample(f"z{i}", self.conditionals[i - 1](z))
            return pyro.sample("x", self.decode(z), obs=obs)

    def guide(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        **_: Any,
    ) -> Tensor:
        """q(z_1 | x) ∏ q(z_l | z_{l-1}) in the same ``"data"`` plate as :meth:`model`, layer l's
        site weighted by :meth:`layer_weights`.

        Returns:
            The draw of the top layer z_L.
        """
        h = self._guide_data(x)
        with self.data_plate(x, size, subsample):
            self._scales = self.layer_weights(x)
            for i, (enc, w) in enumerate(zip(self.encoders, self._scales, strict=True), 1):
                with site_weight(w):
                    h = pyro.sample(f"z{i}", enc(h))
        return h


def layer_widths(latent_dims: Any) -> tuple[int, ...]:
    """The checked widths of the stochastic layers, bottom (z_1) first."""
    if isinstance(latent_dims, int) or not len(latent_dims):
        raise ValueError(
            f"latent_dims must be a non-empty sequence of layer widths (z_1 first), got "
            f"{latent_dims!r}"
        )
    return tuple(positive_int("latent_dims entries", d) for d in latent_dims)


def hidden_widths(hidden: Any, dims: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The checked hidden widths per layer; ``(2 · dim_l, 2 · dim_l)`` each by default."""
    L = len(dims)
    if hidden is None:
        hidden = [(2 * d, 2 * d) for d in dims]
    if isinstance(hidden, int) or len(hidden) != L:
        raise ValueError(
            f"hidden must give one sequence of hidden widths per stochastic layer ({L}), "
            f"got {hidden!r}"
        )
    return tuple(
        tuple(positive_int(f"hidden[{i}] entries", h) for h in _widths(i, hs))
        for i, hs in enumerate(hidden)
    )


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
