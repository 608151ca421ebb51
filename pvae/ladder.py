r"""A hierarchical VAE with top-down inference: the Ladder VAE (Sønderby et al. 2016).

.. math::

    p_\theta(x, z_{1:L}) = p(z_L)\,\prod_{l=1}^{L-1} p_\theta(z_l \mid z_{l+1})\;
        p_\theta(x \mid z_1), \qquad
    q_\phi(z_{1:L} \mid x) = q_\phi(z_L \mid x)\,\prod_{l=1}^{L-1} q_\phi(z_l \mid z_{l+1}, x)

Inference runs in two passes. A deterministic bottom-up pass :math:`h_0 = x,\ h_{l} =
\mathrm{up}_{l-1}(h_{l-1})` gives each layer a bottom-up estimate
:math:`(\hat\mu_l, \hat\sigma_l)` (the paths' ``q_heads``). The guide then draws top-down, as the
model does: :math:`z_L \sim \mathcal N(\hat\mu_L, \hat\sigma_L^2)`, and for l = L−1 … 1 it
computes the model's own prior :math:`p(z_l \mid z_{l+1}) = \mathcal N(\mu_p, \sigma_p^2)` (the
paths' ``p_heads``, the same modules as the model's) at the :math:`z_{l+1}` it drew, and merges
it with the bottom-up estimate:

* ``merge="precision"`` (Sønderby et al. 2016, eq. 18–19), a product of Gaussians:
  :math:`\sigma_q^2 = (\hat\sigma^{-2} + \sigma_p^{-2})^{-1}`,
  :math:`\mu_q = (\hat\mu\,\hat\sigma^{-2} + \mu_p\,\sigma_p^{-2})\,\sigma_q^2`. When the bottom-up
  estimate is the Gaussian message of x about z_l this is the exact conditional posterior
  (:meth:`pvae.LinearGaussianChain.ladder` builds such a model).
* ``merge="residual"`` (NVAE, Vahdat & Kautz 2020, eq. 2): the bottom-up head gives a relative
  shift and scale, :math:`q = \mathcal N(\mu_p + \Delta\mu,\ (\sigma_p\,\Delta\sigma)^2)`, so the
  KL term of a unit depends on :math:`\Delta\mu/\sigma_p` and :math:`\Delta\sigma` alone. (Here
  :math:`\Delta\mu, \Delta\sigma` come from the bottom-up features only; the top-down
  dependence enters through :math:`\mu_p, \sigma_p`.)

The top layer's posterior is the bottom-up estimate itself, so any :mod:`pvae.priors` prior can
sit on top; every scale is :math:`\mathrm{softplus}(s) + \sigma_{\min}`. Each latent site
``"z<l>"`` holds z_l flattened to a vector of :math:`d_l = \prod` ``latent_shapes[l-1]`` units,
and every site, ``"x"`` included, lies in the ``"data"`` plate: :func:`pvae.log_px`,
:func:`pvae.bounds`, AIS, the diagnostics and Pyro's ``SVI`` read the right weights from the
traces, as for :class:`~pvae.HierarchicalVAE`. Because q(z_l | z_{l+1}, x) and
p(z_l | z_{l+1}) are conditioned on the same draw, the closed-form KL of
``TraceMeanField_ELBO`` is unbiased here (it is not for a bottom-up chain).

**KL control per layer and per group of units.** On top of :class:`~pvae.family.BaseVAE`'s β and
free bits (set by :func:`pvae.fit`), layer l's KL term is weighted by a warm-up
:math:`\min(1, (t + 1)/W_l)` (``warmup_steps``; t counts training steps, see below), and free
bits hold per layer (``free_bits``, nats per unit) and per group of units
(``free_bits_groups``: layer l's units split into that many contiguous groups; Kingma et al.
2016, §C.8): a group whose minibatch-mean KL is under ``free_bits × units`` gets weight 0, the
objective's :math:`\max(\lambda, \mathrm{KL}_g)` in gradient. A layer's weight is a Pyro scale
(or mask, for 0) on its site in model and guide; when only some of its groups are held, the
site's distribution is :class:`pvae.family.UnitWeighted`, whose log density weights each unit.
These per-layer controls shape training gradients only: they apply in training mode with
gradients on, so every pvae estimator (``@torch.no_grad``) and validation (``eval()``) see the
plain model.

**Counting steps.** t is the number of backward passes that have gone through the model's
inference network in training mode (one per :func:`pvae.fit` step or ``SVI.step``, however
many times the guide ran in it). It is the buffer ``kl_step``, saved in checkpoints, so a resumed
run continues its warm-up.

References:
    Sønderby, Raiko, Maaløe, Sønderby & Winther (2016), *Ladder Variational Autoencoders*.
    Vahdat & Kautz (2020), *NVAE: A Deep Hierarchical Variational Autoencoder*.
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), *Improved Variational
    Inference with Inverse Autoregressive Flow*, §C.8 (free bits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pvae import nets
from pvae._checks import lookup, one_of, positive_float, positive_int
from pvae.family import (
    BaseVAE,
    UnitWeighted,
    group_weight_of_units,
    nonneg_float,
    nonneg_int,
    observation,
    per_layer,
    per_unit_log_prob,
    site_weight,
    unit_kl,
)
from pvae.hierarchical import hidden_widths, layer_widths
from pvae.ladder_paths import NORMS, MLPLadderPaths
from pvae.likelihoods import Likelihood
from pvae.priors import Prior, StandardNormal

__all__ = ["MERGES", "NORMS", "LadderVAE", "MLPLadderPaths"]

MERGES = ("precision", "residual")
"""How a layer's bottom-up estimate and its top-down prior make q (see the module docstring)."""
Weight = float | Tensor
"""A latent site's weight: one number, or one per unit (a ``(d,)`` tensor)."""


class _TopEncoder:
    """u ↦ q(z_L | u), the top layer's posterior, which depends on u alone: what a
    :class:`~pvae.priors.VampPrior` on top is bound to (exactly the VampPrior, as for one layer).
    Holds no modules of its own, so nothing is registered twice."""

    def __init__(self, program: LadderVAE) -> None:
        self._program = program

    def __call__(self, u: Tensor) -> dist.TorchDistribution:
        p = self._program
        h = u
        for up in p.paths.up:
            h = up(h)
        return p.normal(p.paths.q_heads[-1](h), p.num_layers - 1)


class _Decoder:
    """The paths' decoder over the code: flat z_1 (the site's value), reshaped to
    ``latent_shapes[0]``; with a generative skip, the flat :math:`[z_1, t_1]` as it is."""

    def __init__(self, program: LadderVAE) -> None:
        self._program = program

    def __call__(self, code: Tensor) -> Tensor:
        p = self._program
        return p.paths.decoder(code if p.generative_skip else p.unflat(code, 0))


class LadderVAE(BaseVAE):
    r"""VAE with L ≥ 2 stochastic layers and top-down inference (see the module docstring).

    Args:
        latent_dims: Widths of z_1 (bottom) … z_L (top); taken from ``paths`` when given.
        prior: p(z_L), a :class:`pvae.priors.Prior` over d_L dimensions;
            :class:`~pvae.priors.StandardNormal` by default.
        likelihood: p(x | z_1) given decoder output; :class:`~pvae.likelihoods.Bernoulli` by
            default.
        merge: ``"precision"`` or ``"residual"`` (:data:`MERGES`).
        hidden: Per layer, the hidden widths of the default :class:`MLPLadderPaths`.
        activation: Their activation (a name in :data:`pvae.nets.ACTIVATIONS`).
        norm: ``None``, ``"batch"`` or ``"weight"`` normalization in their hidden layers.
        skip: Residual connections around their hidden layers.
        generative_skip: A deterministic top-down path in the generative model (Dieng et al.
            2019's skip connections; the top-down state of Kingma et al. 2016 and NVAE): the
            features :math:`t_l` of the network that gives p(z_l | ·) feed the layer below with
            :math:`z_l`, so :math:`p(z_l \mid z_{l+1}, t_{l+1})` and :math:`p(x \mid z_1, t_1)`:
            x depends on every layer directly, not only through z_1's noise, which keeps the top
            layers in use. The default MLP paths only.
        paths: The deterministic networks, a :class:`pvae.nets.LadderPaths` module (MLP or conv);
            by default :class:`MLPLadderPaths`, built for the data shape.
        min_scale: σ_min, added to every softplus scale.
        layer_warmup: Per layer (or one for all), warm-up steps W_l of its KL weight (0: none).
        layer_free_bits: Per layer (or one for all), free bits in nats per unit; overrides the
            global ``free_bits`` during training.
        free_bits_groups: Per layer (or one for all), how many contiguous groups of units the
            free bits hold separately (1: the whole layer, as :class:`~pvae.HierarchicalVAE`).
        data_shape: Shape of one datapoint (or call :meth:`build`; :func:`pvae.fit` does).
        name: Prefix of the parameters' Pyro ``param`` site names (unique by default).

    Example:
        >>> import torch, pyro, pvae
        >>> m = pvae.LadderVAE((4, 2), hidden=[[16], [8]], data_shape=(1, 8, 8))
        >>> tr = pyro.poutine.trace(m.guide).get_trace(torch.ones(5, 1, 8, 8))
        >>> [n for n in tr.nodes if n.startswith("z")]  # top-down: z_L first
        ['z2', 'z1']
        >>> m.sample(3).shape
        torch.Size([3, 1, 8, 8])
    """

    networks = ("paths",)

    def __init__(
        self,
        latent_dims: Sequence[int] | None = None,
        prior: Prior | None = None,
        likelihood: Likelihood | None = None,
        merge: str = "precision",
        hidden: Sequence[Sequence[int]] | None = None,
        activation: str = "tanh",
        norm: str | None = None,
        skip: bool = False,
        generative_skip: bool = False,
        paths: nn.Module | None = None,
        min_scale: float = 1e-4,
        layer_warmup: int | Sequence[int] | None = None,
        layer_free_bits: float | Sequence[float] | None = None,
        free_bits_groups: int | Sequence[int] | None = None,
        data_shape: Sequence[int] | None = None,
        name: str | None = None,
    ) -> None:
        shapes = _latent_shapes(latent_dims, paths)
        dims = tuple(math.prod(s) for s in shapes)
        super().__init__(prior if prior is not None else StandardNormal(dims[-1]), likelihood, name)
        if int(self.prior.latent_dim) != dims[-1]:
            raise ValueError(
                f"the prior is over z_L, the top layer of {dims[-1]} units (latent_dims="
                f"{list(dims)}), but has latent_dim={self.prior.latent_dim}"
            )
        L = len(dims)
        self.latent_shapes, self.latent_dims = shapes, dims
        self.merge = one_of("merge", merge, MERGES)
        self.hidden = hidden_widths(hidden, dims)
        lookup("activation", nets.ACTIVATIONS, activation)
        if norm is not None:
            one_of("norm", norm, NORMS)
        self.activation, self.norm, self.skip = activation, norm, bool(skip)
        if generative_skip and paths is not None and not getattr(paths, "generative_skip", False):
            raise ValueError(
                "generative_skip needs paths built with it (MLPLadderPaths(..., "
                f"generative_skip=True)); got {type(paths).__name__} without it"
            )
        self.generative_skip = bool(generative_skip or getattr(paths, "generative_skip", False))
        self.min_scale = positive_float("min_scale", min_scale, allow_zero=True)
        self.layer_warmup = per_layer("layer_warmup", layer_warmup, L, nonneg_int)
        self.layer_free_bits = per_layer("layer_free_bits", layer_free_bits, L, nonneg_float)
        groups = per_layer("free_bits_groups", free_bits_groups, L, positive_int) or (1,) * L
        for i, (g, d) in enumerate(zip(groups, dims, strict=True)):
            if g > d:
                raise ValueError(f"free_bits_groups[{i}] = {g} exceeds the layer's {d} units")
        self.free_bits_groups: tuple[int, ...] = groups
        self.paths = _checked_paths(paths, L)
        self.register_buffer("kl_step", torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(_restore_step)
        self._step = 0  # training steps so far (kl_step's value, without a device sync)
        self._token = object()  # the backward pass that will count the current step
        self._decided: tuple[Weight, ...] = ()  # the layers' weights from the last guide
        self._priors: dict[int, tuple[Tensor, dist.Independent]] = {}  # the last guide's p_l
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
    def decoder(self) -> _Decoder | None:
        """z_1 (flat, the site's value) to the likelihood's parameters, through the paths."""
        return None if self.paths is None else _Decoder(self)

    def build(self, data_shape: Sequence[int]) -> LadderVAE:
        """As :meth:`pvae.family.BaseVAE.build`; then checks that free bits over several groups
        of the top layer have a prior that factorizes over units."""
        super().build(data_shape)
        if self.free_bits_groups[-1] > 1 and per_unit_log_prob(self.prior()) is None:
            raise ValueError(
                f"free_bits_groups[-1] = {self.free_bits_groups[-1]} needs a top prior that "
                f"factorizes over units; the {type(self.prior).__name__} does not (use 1 group "
                "for the top layer)"
            )
        return self

    def _build_networks(self, shape: tuple[int, ...]) -> None:
        if self.paths is None:
            out = self.likelihood.param_shape(shape)
            args = (self.hidden, self.activation, self.norm, self.skip, self.generative_skip)
            self.paths = MLPLadderPaths(shape, out, self.latent_dims, *args)

    def _prior_encoder(self) -> _TopEncoder:
        return _TopEncoder(self)

    def unflat(self, z: Tensor, layer: int) -> Tensor:
        """Flat z of 0-based ``layer`` (a site's value) in the paths' shape for it."""
        return z.reshape(*z.shape[:-1], *self.latent_shapes[layer])

    def loc_scale(self, raw: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """A head's ``(*batch, 2, *shape)`` output as flat (loc, softplus(raw) + σ_min)."""
        shape = self.latent_shapes[layer]
        if tuple(raw.shape[raw.dim() - len(shape) - 1 :]) != (2, *shape):
            raise ValueError(
                f"a head of layer {layer + 1} must output (*batch, 2, *{shape}), got "
                f"{tuple(raw.shape)}"
            )
        k = raw.dim() - len(shape) - 1
        loc, raw_scale = raw.select(k, 0), raw.select(k, 1)
        flat = (*loc.shape[:k], self.latent_dims[layer])
        return loc.reshape(flat), (F.softplus(raw_scale) + self.min_scale).reshape(flat)

    def normal(self, raw: Tensor, layer: int) -> dist.Independent:
        """The diagonal Gaussian a head's output describes."""
        return dist.Normal(*self.loc_scale(raw, layer)).to_event(1)

    # -- the passes ------------------------------------------------------------------------------
    def bottom_up(self, x: Tensor) -> list[Tensor]:
        """The deterministic features ``[h_1, …, h_L]`` of the bottom-up pass."""
        hs, h = [], x
        for up in self.paths.up:
            h = up(h)
            hs.append(h)
        return hs

    def estimates(self, hs: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Each layer's bottom-up (loc, scale) from the features ``hs``."""
        heads = self.paths.q_heads
        return [
            self.loc_scale(head(h), i) for i, (head, h) in enumerate(zip(heads, hs, strict=True))
        ]

    def conditional(
        self, layer: int, z_above: Tensor, feature: Tensor | None = None
    ) -> dist.Independent:
        """p(z_l | z_{l+1}) for 0-based ``layer`` < L − 1, at the flat draw ``z_above`` (and,
        with a generative skip, the top-down ``feature`` :math:`t_{l+1}`; none for the layer
        under the top)."""
        return self.prior_step(layer, z_above, feature)[0]

    def prior_step(
        self, layer: int, z_above: Tensor, feature: Tensor | None = None
    ) -> tuple[dist.Independent, Tensor | None]:
        """(p(z_l | ·), t_l) for 0-based ``layer`` < L − 1: :meth:`conditional` and, with a
        generative skip, the top-down features it computed on the way (else ``None``)."""
        head = self.paths.p_heads[layer]
        if not self.generative_skip:
            return self.normal(head(self.unflat(z_above, layer + 1)), layer), None
        t = head.trunk(z_above if feature is None else torch.cat([z_above, feature], -1))
        return self.normal(head.project(t), layer), t

    def code(self, z1: Tensor, feature: Tensor | None) -> Tensor:
        """The decoder's input: flat z_1, or :math:`[z_1, t_1]` with a generative skip."""
        return z1 if feature is None else torch.cat([z1, feature], -1)

    def pair(
        self,
        layer: int,
        est: tuple[Tensor, Tensor],
        z_above: Tensor | None,
        feature: Tensor | None = None,
    ) -> tuple[dist.Independent, Any, Tensor | None]:
        """(q, p, t) of 0-based ``layer``: the posterior merged from the bottom-up estimate
        ``est`` and the prior at ``z_above`` (the draw of the layer above; ``None`` at the top,
        where q is the estimate and p the top prior), and :meth:`prior_step`'s features given
        the layer above's ``feature``."""
        if z_above is None:
            return dist.Normal(*est).to_event(1), self.prior(), None
        p, t = self.prior_step(layer, z_above, feature)
        # the model replays the guide's draws: it reuses this prior instead of running the
        # p-head again (the same numbers; one network pass per layer and step saved)
        self._priors[layer] = (z_above, p, t)
        mu_p, s_p = p.base_dist.loc, p.base_dist.scale
        mu_h, s_h = est
        if self.merge == "precision":
            prec_h, prec_p = s_h.pow(-2), s_p.pow(-2)
            var = 1.0 / (prec_h + prec_p)
            q = dist.Normal((mu_h * prec_h + mu_p * prec_p) * var, var.sqrt())
        else:
            q = dist.Normal(mu_p + mu_h, s_p * s_h)
        return q.to_event(1), p, t

    def _top_down(self, x: Tensor, pick: Callable[[dist.Independent], Tensor]) -> list[tuple]:
        """``[(q_l, p_l, z_l, t_l)]`` bottom to top, drawing each z_l with ``pick(q_l)``."""
        est = self.estimates(self.bottom_up(x))
        out, z, t = [], None, None
        for i in reversed(range(self.num_layers)):
            q, p, t = self.pair(i, est[i], z, t)
            z = pick(q)
            out.append((q, p, z, t))
        return out[::-1]

    def posterior_means(self, x: Tensor) -> list[Tensor]:
        """``[μ_1, …, μ_L]``: the top-down pass at each layer's posterior mean (each q given the
        mean of the layer above): a deterministic summary for reconstructions and embeddings."""
        self._require_built()
        return [z for _, _, z, _ in self._top_down(x, lambda q: q.mean)]

    def _point_code(self, x: Tensor) -> Tensor:
        _, _, z1, t1 = self._top_down(x, lambda q: q.mean)[0]
        return self.code(z1, t1)

    def _checked_code(self, x: Tensor) -> Tensor:
        return self._point_code(x)  # loc_scale checks every head's output shape

    def _chain(self, n: int) -> tuple[list[Tensor], Tensor | None]:
        """``[z_1, …, z_L]`` drawn down the generative chain for ``n`` datapoints, and t_1."""
        self._require_built()
        z, t = self.prior().sample((positive_int("n", n),)), None
        out = [z]
        for i in reversed(range(self.num_layers - 1)):
            p, t = self.prior_step(i, z, t)
            z = p.sample()
            out.append(z)
        return out[::-1], t

    def sample_latents(self, n: int) -> list[Tensor]:
        """Draw ``[z_1, …, z_L]`` (flat) for ``n`` datapoints down the generative chain."""
        return self._chain(n)[0]

    def _prior_code(self, n: int) -> Tensor:
        zs, t1 = self._chain(n)
        return self.code(zs[0], t1)

    # -- KL weights ------------------------------------------------------------------------------
    def _controls_on(self) -> bool:
        """Whether the per-layer KL controls apply: training mode with gradients on."""
        return self.training and torch.is_grad_enabled()

    def _ramp(self, layer: int) -> float:
        w = self.layer_warmup
        if w is None or w[layer] == 0 or not self._controls_on():
            return 1.0
        return min(1.0, (self._step + 1) / w[layer])

    def _floor(self, layer: int) -> float:
        if self.layer_free_bits is not None and self._controls_on():
            return self.layer_free_bits[layer]
        return self.free_bits

    def layer_weight(self, layer: int, q: Any, p: Any) -> Weight:
        """The weight of 0-based ``layer``'s site given its (q, p): β times its warm-up, or
        with free bits 0 for the groups of units held under their floor (see the module
        docstring)."""
        w = self.beta * self._ramp(layer)
        floor = self._floor(layer)
        if floor <= 0 or w == 0:
            return w
        return group_weight_of_units(unit_kl(q, p), floor, w, self.free_bits_groups[layer])

    def unit_kls(self, x: Tensor) -> list[Tensor]:
        r"""Each layer's minibatch-mean KL term per unit, bottom to top, from one top-down draw:
        :math:`\mathrm{KL}(q(z_l \mid z_{l+1}, x) \,\|\, p(z_l \mid z_{l+1}))` in closed form at
        the drawn :math:`z_{l+1}` (the top: against p(z_L), in closed form where PyTorch has it,
        else one draw); a 0-d tensor for a top prior that does not factorize over units. Draws
        its own noise, without gradient."""
        self._require_built()
        with torch.no_grad():
            return [unit_kl(q, p) for q, p, _, _ in self._top_down(x, lambda q: q.sample())]

    def layer_kls(self, x: Tensor) -> list[float]:
        r"""Each layer's minibatch-mean KL term, bottom to top (the sums of :meth:`unit_kls`):
        their sum is a one-draw estimate of :math:`\mathrm{KL}(q(z_{1:L} \mid x) \,\|\,
        p(z_{1:L}))`; the per-layer groups of free bits."""
        return [float(k.sum()) for k in self.unit_kls(x)]

    def layer_weights(self, x: Tensor) -> tuple[Weight, ...]:
        """The weight of each layer's sites, bottom to top, as the guide would choose them at
        ``x`` now (:meth:`layer_weight`, with a draw of its own)."""
        self._require_built()
        with torch.no_grad():
            layers = self._top_down(x, lambda q: q.sample())
        return tuple(self.layer_weight(i, q, p) for i, (q, p, _, _) in enumerate(layers))

    def _count_step(self, h: Tensor) -> None:
        """Count the training step that ``h`` (the first bottom-up feature, on every path to
        the loss) takes part in: once, at the first backward pass through it."""
        if not (self._controls_on() and h.requires_grad):
            return
        token = self._token

        def hook(grad: Tensor) -> None:
            if self._token is token:  # the first backward of this step; later guides share it
                self._step += 1
                self.kl_step.fill_(self._step)
                self._token = object()

        h.register_hook(hook)

    # -- Pyro program ----------------------------------------------------------------------------
    @staticmethod
    def _sample(name: str, d: Any, w: Weight) -> Tensor:
        if isinstance(w, Tensor):
            return pyro.sample(name, UnitWeighted(d, w))
        with site_weight(w):
            return pyro.sample(name, d)

    def _model_weights(self) -> tuple[Weight, ...]:
        """The guide's choice where free bits decide (every ELBO runs the guide first), else
        β times each layer's warm-up."""
        L = self.num_layers
        if any(self._floor(i) > 0 for i in range(L)) and len(self._decided) == L:
            return self._decided
        return tuple(self.beta * self._ramp(i) for i in range(L))

    def model(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        batch_size: int | None = None,
        **_: Any,
    ) -> Tensor:
        """p(z_L) ∏ p(z_l | z_{l+1}) p(x | z_1) for a minibatch ``x`` out of ``size`` datapoints,
        with the conventions of :meth:`pvae.HierarchicalVAE.model` (``x=None`` draws
        ``batch_size`` datapoints; under ``poutine.mask(False)`` x is drawn, not observed).

        Returns:
            x: the observed or the drawn datapoints.
        """
        self._require_built()
        obs = observation(x)
        w = self._model_weights()
        L = self.num_layers
        priors, self._priors = self._priors, {}
        with self.data_plate(x, size, subsample, batch_size):
            z, t = self._sample(f"z{L}", self.prior(), w[L - 1]), None
            for i in reversed(range(L - 1)):
                z_above, p, t_i = priors.get(i, (None, None, None))
                p, t = (p, t_i) if z_above is z else self.prior_step(i, z, t)
                z = self._sample(f"z{i + 1}", p, w[i])
            return pyro.sample("x", self.decode(self.code(z, t)), obs=obs)

    def guide(
        self,
        x: Tensor | None = None,
        size: int | None = None,
        subsample: Tensor | None = None,
        **_: Any,
    ) -> Tensor:
        """q(z_L | x) ∏ q(z_l | z_{l+1}, x), drawn top-down in the same ``"data"`` plate as
        :meth:`model`, after one bottom-up pass; layer l's site weighted by
        :meth:`layer_weight`.

        Returns:
            The draw of the bottom layer z_1.
        """
        x = self._guide_data(x)
        self._priors = {}
        with self.data_plate(x, size, subsample):
            hs = self.bottom_up(x)
            self._count_step(hs[0])
            est = self.estimates(hs)
            z, t, decided = None, None, []
            for i in reversed(range(self.num_layers)):
                q, p, t = self.pair(i, est[i], z, t)
                w = self.layer_weight(i, q, p)
                decided.append(w)
                z = self._sample(f"z{i + 1}", q, w)
        self._decided = tuple(decided[::-1])
        return z


def _restore_step(module: LadderVAE, _: Any) -> None:
    """After ``load_state_dict``: the step count from the loaded ``kl_step``."""
    module._step = int(module.kl_step)
    module._token = object()


def _latent_shapes(latent_dims: Any, paths: Any) -> tuple[tuple[int, ...], ...]:
    """The layers' event shapes: the paths' ``latent_shapes`` (which ``latent_dims``, when
    given, must match in units), else one vector per ``latent_dims`` entry (default (64, 32))."""
    if paths is not None and not (
        isinstance(paths, nn.Module) and isinstance(paths, nets.LadderPaths)
    ):
        raise TypeError(
            "paths must be an nn.Module with the pvae.nets.LadderPaths attributes (latent_shapes, "
            f"up, q_heads, p_heads, decoder), got {type(paths).__name__}"
        )
    if paths is None:
        dims = layer_widths((64, 32) if latent_dims is None else latent_dims)
        shapes = tuple((d,) for d in dims)
    else:
        shapes = tuple(tuple(int(s) for s in shape) for shape in paths.latent_shapes)
        dims = tuple(math.prod(s) for s in shapes)
        if latent_dims is not None and tuple(latent_dims) != dims:
            raise ValueError(
                f"latent_dims={list(latent_dims)} does not match the paths' latent_shapes "
                f"{list(shapes)} ({list(dims)} units)"
            )
    if len(shapes) < 2:
        raise ValueError(
            f"a LadderVAE needs at least 2 stochastic layers, got {len(shapes)}; for one layer "
            "use pvae.VAE"
        )
    return shapes


def _checked_paths(paths: Any, L: int) -> nn.Module | None:
    if paths is None:
        return None
    for attr, n in (("up", L), ("q_heads", L), ("p_heads", L - 1)):
        if len(getattr(paths, attr)) != n:
            raise ValueError(f"paths.{attr} must hold {n} modules, got {len(getattr(paths, attr))}")
    return paths
