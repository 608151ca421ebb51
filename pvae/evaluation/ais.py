r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC): stochastic lower
*and* upper bounds on log p(x), per datapoint, for any model/guide pair.

**Intermediate targets.** Per datapoint, over the latents z (every latent site of the guide,
flattened into one vector, see below), with :math:`0 = \beta_0 < \beta_1 < \dots < \beta_T = 1`:

.. math::

    \log f_\beta(z) = \log f_0(z) + \beta\,\ell(z), \qquad
    \begin{cases}
        f_0 = q(z \mid x),\ \ \ell = \log p(x, z) - \log q(z \mid x) & \text{start = "guide"}\\
        f_0 = p(z),\ \ \ \ \ \ \ \ \ell = \log p(x \mid z) & \text{start = "prior"}
    \end{cases}

so :math:`f_0` is a normalized density we can sample, and :math:`f_1 = p(x, z)`, whose
normalizer is p(x). The schedule is ``"linear"`` (:math:`\beta_t = t/T`) or ``"sigmoid"``
(Grosse et al. 2015: :math:`\tilde\beta_t = \sigma(\delta(2t/T - 1))`, δ = 4, rescaled to
[0, 1]), which spends more steps near both ends.

**Forward AIS** (Neal 2001). Draw :math:`z_0 \sim f_0`; for t = 1 … T add the increment
:math:`(\beta_t - \beta_{t-1})\,\ell(z_{t-1})` to the log weight, then move
:math:`z_t \sim \mathcal T_t(z_{t-1}, \cdot)` with an HMC transition leaving
:math:`f_{\beta_t}` invariant (the last move, :math:`\mathcal T_T`, cannot change the weight and
is skipped: T increments, T − 1 transitions). Then
:math:`\mathbb E[w] = Z_T / Z_0 = p(x)`, so over C independent chains
:math:`\log\hat p(x) = \log \frac1C \sum_c w_c` has :math:`\mathbb E[\log\hat p(x)] \le \log p(x)`
by Jensen's inequality: a stochastic **lower bound**. With T = 1 it is the importance-weighted
bound with k = C (start ``"guide"``); it tightens to log p(x) as T grows.

**Reverse AIS** (Grosse, Ghahramani & Adams 2015). Forward AIS applied to the reversed sequence
:math:`g_s = f_{\beta_{T-s}}`, s = 0 … T. Start at :math:`y_0 \sim g_0 = p(z \mid x)`; for
s = 1 … T add :math:`(\beta_{T-s} - \beta_{T-s+1})\,\ell(y_{s-1})` (a non-positive step in β)
to the log weight, then move :math:`y_s` with the transition leaving :math:`g_s = f_{\beta_{T-s}}`
invariant (again the last one, at :math:`\beta_0`, is skipped). The same argument as forward
gives :math:`\mathbb E[w^{\mathrm{rev}}] = Z(g_T)/Z(g_0) = Z_0/Z_T = 1/p(x)`, so
:math:`-\log\frac1C\sum_c w^{\mathrm{rev}}_c` has expectation :math:`\ge \log p(x)`: a stochastic
**upper bound**. It needs an exact posterior sample, which we have for data simulated from the
model: :math:`(z^*, x) \sim p(z, x)` means :math:`z^* \sim p(z \mid x)` (all C reverse chains of a
datapoint start at its one :math:`z^*`; each is unbiased for 1/p(x), so their mean is too).
:func:`bdmc` simulates such data and sandwiches log p(x) between the two bounds; the gap bounds
the error of the forward estimate on these data (Grosse et al. 2016, BREAD; Wu et al. 2017).

**Transitions.** Hamiltonian Monte Carlo (:func:`hmc_step`): identity mass, ``leapfrog`` steps,
one Metropolis accept per chain. The step size is per datapoint, shared by its chains, and
adapted after every transition toward ``target_accept`` (× 1.02 when the chains' mean acceptance
probability is above it, ÷ 1.02 otherwise; Wu et al. 2017), kept within [1e-5, 10]; each chain's
step of each transition is that size times a random factor in [0.8, 1.2], so a fixed trajectory
length cannot resonate with the period of a Gaussian direction (Neal 2011, sec. 5.4.2.2).

.. warning:: Adapting the step size from the chains' own acceptance makes the transitions
   depend on the past, as in Wu et al. (2017); the effect on the bounds is small in practice but
   the guarantees above hold exactly only for a fixed schedule of step sizes.

**Latents.** Every latent site of the guide (in guide order, all inside the ``"data"`` plate,
checked with :func:`pvae.traces.check_sites`) is mapped to the unconstrained space by
``torch.distributions.biject_to(support)`` and flattened into one vector per (chain,
datapoint); the log-Jacobian enters :math:`f_0` (it cancels in ℓ). Discrete latents are refused.

**Energy.** By definition, :math:`\log p(x, z)` and :math:`\log q(z \mid x)` are read from Pyro
traces of the model and the guide conditioned on the latents' values (:mod:`pvae.traces`), so a
second latent can never be left out. For a standard :class:`~pvae.VAE` a fused energy computes
the same numbers (q(z | x) encoded once per block of datapoints); tests prove them equal.

**Random numbers.** With an integer ``seed``, the start of datapoint n is drawn under a
generator seeded by (seed, n), and every momentum and accept draw is a counter-based hash of
(seed, n, step, chain, coordinate): the numbers of a datapoint do not depend on how the data are
split into blocks (``memory_budget``), nor on the device's generator. ``seed=None`` uses the
global generator.

References:
    Neal, R. M. (2001). Annealed importance sampling. *Statistics and Computing* 11, 125–139.

    Neal, R. M. (2011). MCMC using Hamiltonian dynamics. *Handbook of Markov Chain Monte
    Carlo*, ch. 5.

    Grosse, R. B., Ghahramani, Z., & Adams, R. P. (2015). Sandwiching the marginal likelihood
    using bidirectional Monte Carlo. arXiv:1511.02543.

    Grosse, R. B., Ancha, S., & Roy, D. M. (2016). Measuring the reliability of MCMC inference
    with bidirectional Monte Carlo (BREAD). *NeurIPS*.

    Wu, Y., Burda, Y., Salakhutdinov, R., & Grosse, R. (2017). On the quantitative analysis of
    decoder-based generative models. *ICLR*.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor
from torch.distributions import biject_to, constraints

from pvae._checks import one_of, positive_float, positive_int
from pvae.distributed import gather_blocks
from pvae.distributed import info as dist_info
from pvae.evaluation._weights import (
    _FAST_WORKSET,
    _FAST_WORKSET_ACCEL,
    DEFAULT_BUDGET,
    FusedWeights,
    Tally,
    Target,
    _bytes_per_draw,
    resolve,
    seeded,
)
from pvae.evaluation.log_px import _finish
from pvae.program import Program, as_program, param_sites
from pvae.traces import (
    PARTICLES,
    _data_frame,
    check_sites,
    inspect_pair,
    particle_traces,
    site_terms,
)

__all__ = [
    "SCHEDULES",
    "STARTS",
    "AISEstimate",
    "BDMCResult",
    "ais",
    "bdmc",
    "hmc_step",
    "reverse_ais",
    "simulate",
]

_STEP_RANGE = (1e-5, 10.0)
_ADAPT = 1.02
# Each transition's step size is jittered by a factor in [1 - J, 1 + J] per chain: without it a
# fixed trajectory length can resonate with a Gaussian direction and return the chain to where it
# started (Neal 2011, sec. 5.4.2.2); jitter drawn independently of the state keeps f invariant.
_JITTER = 0.2
# Working memory of one (chain, datapoint) relative to one forward draw: the autograd graph of the
# energy and the backward pass through it, plus the chain's states.
_GRAD_FACTOR = 4
# simulate's stream under `seeded`: not a datapoint index, so the simulated data and the chains
# started on them (datapoint n under (seed, n)) never share draws.
_SIMULATION = 1_000_002


def _linear(steps: int) -> Tensor:
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)


def _sigmoid(steps: int, delta: float = 4.0) -> Tensor:
    s = torch.sigmoid(delta * (2 * torch.arange(steps + 1, dtype=torch.float64) / steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


SCHEDULES: dict[str, Callable[[int], Tensor]] = {"linear": _linear, "sigmoid": _sigmoid}
STARTS = ("guide", "prior")


# -- results --------------------------------------------------------------------------------------
@dataclass(repr=False)
class AISEstimate:
    """Per-datapoint AIS estimate of log p(x) (tensors of shape ``(N,)``, float64, nats).

    Attributes:
        log_px: Forward: :math:`\\log\\frac1C\\sum_c w_c`, a stochastic lower bound. Reverse:
            :math:`-\\log\\frac1C\\sum_c w^{\\mathrm{rev}}_c`, a stochastic upper bound.
        se: Monte Carlo standard error over chains (delta method, as :func:`pvae.log_px`).
            Reverse chains share their start z*, so theirs misses the variation of z*: compare
            averages over datapoints with the spread over datapoints instead.
        log_w: ``(N, C)`` log weights of the chains (reverse: of 1/p(x)).
        accept: Mean acceptance probability of the HMC transitions (NaN when steps = 1).
        step_size: Final HMC step size.
        steps, chains, leapfrog, schedule, start: The settings.
        direction: ``"forward"`` or ``"reverse"``.
        seconds: Wall time.
        num_dims: Data dimensions, for bits per dimension.
    """

    log_px: Tensor
    se: Tensor
    log_w: Tensor
    accept: Tensor
    step_size: Tensor
    steps: int
    chains: int
    leapfrog: int
    schedule: str
    start: str
    direction: str
    seconds: float
    num_dims: int

    @property
    def bits_per_dim(self) -> Tensor:
        """:math:`-\\log_2 \\hat p(x) / D` per datapoint."""
        return -self.log_px / (self.num_dims * math.log(2))

    def summary(self) -> dict[str, Any]:
        """Means over datapoints. ``log_px_se`` is the Monte Carlo error of the mean
        (:math:`\\sqrt{\\sum_n \\mathrm{se}_n^2}/N`, as :meth:`LogPxEstimate.summary`);
        ``log_px_sd`` the spread over datapoints."""
        n = self.log_px.numel()
        return {
            "n": n,
            "direction": self.direction,
            "log_px": float(self.log_px.mean()),
            "log_px_se": float(self.se.pow(2).sum().sqrt() / n) if self.chains > 1 else None,
            "log_px_sd": float(self.log_px.std()) if n > 1 else None,
            "accept_mean": float(self.accept.mean()),
            "steps": self.steps,
            "chains": self.chains,
            "seconds": self.seconds,
            "bits_per_dim": float(self.bits_per_dim.mean()),
        }

    def __str__(self) -> str:
        s = self.summary()
        se = "n/a" if s["log_px_se"] is None else f"{s['log_px_se']:.4f}"
        bound = "lower" if self.direction == "forward" else "upper"
        return (
            f"AIS {self.direction} ({bound} bound) log p(x) = {s['log_px']:.4f} ± {se} nats "
            f"(n={s['n']}, steps={self.steps}, chains={self.chains}, leapfrog={self.leapfrog}, "
            f"accept {s['accept_mean']:.2f}, {s['seconds']:.1f} s)"
        )

    def __repr__(self) -> str:
        return f"<AISEstimate {self}>"


@dataclass(repr=False)
class BDMCResult:
    """Bidirectional Monte Carlo on data simulated from the model.

    Attributes:
        x: The simulated data.
        latents: The exact posterior samples (every latent site's value) that generated x.
        forward: Forward AIS (lower bound).
        reverse: Reverse AIS from the exact latents (upper bound).
    """

    x: Tensor
    latents: dict[str, Tensor]
    forward: AISEstimate
    reverse: AISEstimate

    @property
    def gap(self) -> Tensor:
        """Upper minus lower bound per datapoint: bounds the error of either estimate."""
        return self.reverse.log_px - self.forward.log_px

    def summary(self) -> dict[str, Any]:
        f, r = self.forward.summary(), self.reverse.summary()
        n = self.gap.numel()
        gap_se = self.forward.se.pow(2).add(self.reverse.se.pow(2)).sum().sqrt() / n
        return {
            "n": n,
            "lower": f["log_px"],
            "lower_se": f["log_px_se"],
            "upper": r["log_px"],
            "upper_se": r["log_px_se"],
            "gap": float(self.gap.mean()),
            "gap_se": float(gap_se),
            "steps": self.forward.steps,
            "chains": self.forward.chains,
            "seconds": self.forward.seconds + self.reverse.seconds,
        }

    def __str__(self) -> str:
        s = self.summary()
        return (
            f"BDMC {s['lower']:.4f} ≤ log p(x) ≤ {s['upper']:.4f} nats (gap {s['gap']:.4f} "
            f"± {s['gap_se']:.4f}; n={s['n']}, steps={s['steps']}, chains={s['chains']})"
        )

    def __repr__(self) -> str:
        return f"<BDMCResult {self}>"


# -- HMC ------------------------------------------------------------------------------------------
def _hmc(
    z: Tensor,
    logf: Tensor,
    grad: Tensor,
    extras: tuple[Tensor, ...],
    fn: Callable[[Tensor], tuple[Tensor, Tensor, tuple[Tensor, ...]]],
    eps: Tensor,
    num_leapfrog: int,
    momentum: Tensor,
    uniform: Tensor,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...], Tensor]:
    """One HMC transition from (z, log f(z), ∇ log f(z)) with the given momentum and uniform
    draws. ``fn(z)`` returns ``(log f, ∇ log f, extras)``; the extras of the accepted state are
    returned with it, so a caller never evaluates the energy twice at one state."""
    e = eps.unsqueeze(-1)
    p = momentum + 0.5 * e * grad
    q = z
    lf, g, ex = logf, grad, extras
    for i in range(num_leapfrog):
        q = q + e * p
        lf, g, ex = fn(q)
        p = p + (e if i < num_leapfrog - 1 else 0.5 * e) * g
    log_a = lf - logf - 0.5 * (p * p).sum(-1) + 0.5 * (momentum * momentum).sum(-1)
    log_a = torch.where(torch.isnan(log_a), -math.inf, log_a)
    prob = log_a.clamp(max=0.0).exp()
    acc = uniform < prob

    def pick(new: Tensor, old: Tensor) -> Tensor:
        return torch.where(acc.reshape(acc.shape + (1,) * (new.dim() - acc.dim())), new, old)

    return (
        pick(q, z),
        pick(lf, logf),
        pick(g, grad),
        tuple(pick(a, b) for a, b in zip(ex, extras, strict=True)),
        prob,
    )


def hmc_step(
    z: Tensor,
    log_f_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
    step_size: float | Tensor,
    num_leapfrog: int,
) -> tuple[Tensor, Tensor]:
    r"""One Hamiltonian Monte Carlo transition per chain, leaving :math:`f` invariant.

    Identity mass matrix, ``num_leapfrog`` leapfrog steps of size ε, then a Metropolis accept
    with probability :math:`\min(1, e^{-H(z', p') + H(z, p)})`,
    :math:`H = -\log f(z) + \tfrac12\lVert p\rVert^2` (Neal 2011). A proposal whose log density
    is NaN is rejected. Momentum and accept draws come from torch's global generator.

    Args:
        z: ``(..., D)`` current states (every leading dimension is a batch of chains).
        log_f_and_grad: ``z ↦ (log f(z), ∇_z log f(z))`` with shapes ``(...)`` and ``(..., D)``.
        step_size: ε, a number or a tensor broadcastable to ``z.shape[:-1]``.
        num_leapfrog: Leapfrog steps L ≥ 1.

    Returns:
        The new states ``(..., D)`` and the acceptance probabilities ``(...)``.

    Example:
        >>> import torch
        >>> from pvae.evaluation.ais import hmc_step
        >>> z = torch.randn(100, 2)
        >>> z, prob = hmc_step(z, lambda z: (-0.5 * (z**2).sum(-1), -z), 0.5, 5)
        >>> z.shape, bool(((prob >= 0) & (prob <= 1)).all())
        (torch.Size([100, 2]), True)
    """
    num_leapfrog = positive_int("num_leapfrog", num_leapfrog)
    eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device)
    eps = eps.expand(z.shape[:-1])
    logf, grad = log_f_and_grad(z)
    momentum = torch.randn_like(z)
    uniform = torch.rand(z.shape[:-1], dtype=z.dtype, device=z.device)

    def fn(q: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        lf, g = log_f_and_grad(q)
        return lf, g, ()

    new, _, _, _, prob = _hmc(z, logf, grad, (), fn, eps, num_leapfrog, momentum, uniform)
    return new, prob


# -- counter-based random numbers -----------------------------------------------------------------
def _signed(v: int) -> int:
    """A Python integer as the int64 with the same low 64 bits."""
    v %= 1 << 64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _mix(x: Tensor) -> Tensor:
    """SplitMix64's finalizer on int64 tensors (logical shifts by masking; products wrap)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class _Noise:
    """Momentum and accept draws of a block: a hash of (seed, datapoint, step, chain, coordinate)
    when seeded, so the draws of a datapoint do not depend on its block; else torch's global
    generator."""

    def __init__(self, seed: int | None, index: Tensor, stream: int) -> None:
        self.seed = seed
        self.stream = stream
        if seed is not None:
            # (index on the block's device, so no draw copies anything between devices)
            self.key = _mix(_mix(index.to(torch.int64) + _signed(seed * _GOLDEN)))

    def _uniform(
        self, step: int, kind: int, shape: tuple[int, ...], device: torch.device
    ) -> Tensor:
        c, b, rest = shape[0], shape[1], shape[2:]
        key = _mix(self.key + _signed((8 * step + 4 * self.stream + kind + 1) * _GOLDEN))
        inner = math.prod(rest)
        j = torch.arange(c * inner, device=device, dtype=torch.int64).reshape(c, 1, inner)
        bits = _mix(key.reshape(1, b, 1) + (j + 1) * _GOLDEN)
        u = ((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53
        return u.reshape(c, b, *rest)

    def momentum(self, step: int, like: Tensor) -> Tensor:
        if self.seed is None:
            return torch.randn_like(like)
        c, b, d = like.shape
        u = self._uniform(step, 0, (c, b, d, 2), like.device)
        r = torch.sqrt(-2 * torch.log1p(-u[..., 0]))
        return (r * torch.cos(2 * math.pi * u[..., 1])).to(like.dtype)

    def uniform(self, step: int, like: Tensor, kind: int) -> Tensor:
        if self.seed is None:
            return torch.rand(like.shape[:2], dtype=like.dtype, device=like.device)
        c, b, _ = like.shape
        return self._uniform(step, kind, (c, b), like.device).to(like.dtype)


# -- latents as one unconstrained vector ----------------------------------------------------------
@dataclass
class _Site:
    name: str
    data_pos: int  # the data plate's position in a value with a leading particle dimension
    event_dim: int
    rest: tuple[int, ...]  # constrained shape per (chain, datapoint)
    urest: tuple[int, ...]  # unconstrained shape per (chain, datapoint)
    transform: Any  # biject_to(support), or None for real support

    @property
    def size(self) -> int:
        return math.prod(self.urest)


def _is_real(c: constraints.Constraint) -> bool:
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return type(c) is type(constraints.real)


class _Layout:
    """Every latent site of the guide, in guide order, as slices of one flat unconstrained
    vector per (chain, datapoint)."""

    def __init__(self, guide_trace: Any, nesting: int, data_plate: str = "data") -> None:
        self.nesting = nesting
        self.sites: list[_Site] = []
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"AIS needs continuous latents; site {name!r} is discrete (support "
                    f"{fn.support}): HMC cannot move it. Marginalize it out in the model, or use "
                    "pvae.log_px (importance sampling handles discrete guide sites)"
                )
            frame = _data_frame(site, data_plate)
            value = site["value"]
            pos = nesting + 1 + frame.dim
            event_dim = len(fn.event_shape)
            v = value.reshape((1,) * (nesting + 1 + event_dim - value.dim()) + value.shape)
            v = v.movedim(pos, 1)
            t = None if _is_real(fn.support) else biject_to(fn.support)
            urest = tuple((t.inv(v) if t is not None else v).shape[2:])
            self.sites.append(_Site(name, pos, event_dim, tuple(v.shape[2:]), urest, t))

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sites]

    @property
    def dim(self) -> int:
        return sum(s.size for s in self.sites)

    def flatten(self, values: Mapping[str, Tensor], c: int, b: int) -> Tensor:
        """Values with a leading particle dimension (as a particle trace holds them) to the
        ``(C, B, D)`` unconstrained vector."""
        parts = []
        for s in self.sites:
            v = values[s.name]
            v = v.reshape((1,) * (self.nesting + 1 + s.event_dim - v.dim()) + v.shape)
            v = v.movedim(s.data_pos, 1)
            v = v.expand(c, b, *v.shape[2:])
            if s.transform is not None:
                v = s.transform.inv(v)
            parts.append(v.reshape(c, b, s.size))
        return torch.cat(parts, -1)

    @property
    def constrained(self) -> bool:
        """Whether some site is not on the real line (its log-Jacobian is then not 0)."""
        return any(s.transform is not None for s in self.sites)

    def unflatten(self, u: Tensor, jacobian: bool = True) -> tuple[dict[str, Tensor], Tensor]:
        """``(C, B, D)`` to the sites' values (leading particle dimension, the data plate where
        the trace holds it) and the ``(C, B)`` log |det ∂z/∂u| (0 without ``jacobian``)."""
        c, b, _ = u.shape
        values, ldj = {}, u.new_zeros(c, b)
        for s, part in zip(self.sites, u.split([s.size for s in self.sites], -1), strict=True):
            v = part.reshape(c, b, *s.urest)
            if s.transform is not None:
                z = s.transform(v)
                if jacobian:
                    ldj = ldj + s.transform.log_abs_det_jacobian(v, z).reshape(c, b, -1).sum(-1)
                v = z
            values[s.name] = v.movedim(1, s.data_pos)
        return values, ldj

    def from_model_layout(
        self, latents: Mapping[str, Tensor], start: int, stop: int, c: int
    ) -> Tensor:
        """Latents as a trace of the model without particles holds them (data plate over all N
        datapoints) to the ``(C, B, D)`` vector of datapoints ``start:stop``, every chain at the
        same value."""
        values = {}
        for s in self.sites:
            v = latents[s.name]
            v = v.reshape((1,) * (self.nesting + s.event_dim - v.dim()) + v.shape)
            values[s.name] = v.narrow(s.data_pos - 1, start, stop - start).unsqueeze(0)
        return self.flatten(values, c, stop - start)


# -- energies: log q(z | x), log p(z), log p(x | z) per (chain, datapoint) ------------------------
class _TraceEnergy:
    """The definition: model and guide traced under the particle plate, conditioned on the
    latents' values, reduced per site by :func:`pvae.traces.site_terms`."""

    def __init__(self, program: Program, nesting: int, latents: Sequence[str]) -> None:
        self.program = program
        self.nesting = nesting
        self.latents = set(latents)

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> Any:
        return xb, kwargs

    def terms(
        self, state: Any, guide_values: dict[str, Tensor], model_values: dict[str, Tensor], c: int
    ) -> tuple[Tensor, ...]:
        xb, kw = state
        particles = pyro.plate(PARTICLES, c, dim=-self.nesting - 1)
        traces = [
            prune_subsample_sites(
                poutine.trace(particles(poutine.condition(fn, data=values))).get_trace(xb, **kw)
            )
            for fn, values in (
                (self.program.model, model_values),
                (self.program.guide, guide_values),
            )
        ]
        st = site_terms(*traces, c, self.nesting)
        log_q = sum(st.guide.values())
        log_prior = sum(v for n, v in st.model.items() if n in self.latents)
        log_lik = sum(v for n, v in st.model.items() if n not in self.latents)
        return log_q, log_prior, log_lik


class _FusedEnergy:
    """A standard :class:`~pvae.VAE`: q(z | x) and p(z) built once per block, log p(x | z) by
    ``vae.log_likelihood`` (the same numbers as :class:`_TraceEnergy`, tested)."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> Any:
        return xb, self.vae.encode(xb), self.vae.prior()

    def terms(
        self, state: Any, guide_values: dict[str, Tensor], model_values: dict[str, Tensor], c: int
    ) -> tuple[Tensor, ...]:
        xb, q, prior = state
        z = model_values["z"]
        return q.log_prob(guide_values["z"]), prior.log_prob(z), self.vae.log_likelihood(z, xb)


def _evaluate(
    energy: Any, layout: _Layout, state: Any, u: Tensor, start: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log f₀(u) and ℓ(u) (see the module docstring) with their gradients, all detached; only
    u is differentiated (no parameter receives a gradient).

    Start ``"guide"``: the guide's terms, the model's and the log-Jacobian read u through three
    separate leaves, so one backward pass gives each term's gradient (∇f₀ = ∇_q + ∇_J,
    ∇ℓ = ∇_model − ∇_q). Start ``"prior"``: f₀ and ℓ share the model's trace, two passes."""
    c = u.shape[0]
    u = u.detach()
    with torch.enable_grad():
        if start == "guide":
            leaves = [u.clone().requires_grad_(True) for _ in range(3)]
            guide_values, _ = layout.unflatten(leaves[0], jacobian=False)
            model_values, _ = layout.unflatten(leaves[1], jacobian=False)
            ldj = layout.unflatten(leaves[2])[1] if layout.constrained else u.new_zeros(())
            log_q, log_prior, log_lik = energy.terms(state, guide_values, model_values, c)
            a, ell = log_q + ldj, log_prior + log_lik - log_q
            total = (log_q + log_prior + log_lik + ldj).sum()
            g_q, g_m, g_j = (
                torch.zeros_like(u) if g is None else g
                for g in torch.autograd.grad(total, leaves, allow_unused=True)
            )
            return a.detach(), ell.detach(), g_q + g_j, g_m - g_q
        leaf = u.clone().requires_grad_(True)
        values, ldj = layout.unflatten(leaf)
        _, log_prior, log_lik = energy.terms(state, values, values, c)
        a, ell = log_prior + ldj, log_lik
        grads = []
        for i, out in enumerate((a, ell)):
            g = None
            if out.requires_grad:
                (g,) = torch.autograd.grad(out.sum(), leaf, retain_graph=i == 0, allow_unused=True)
            grads.append(torch.zeros_like(u) if g is None else g)
    return a.detach(), ell.detach(), grads[0], grads[1]


# -- the annealing loop ---------------------------------------------------------------------------
def _anneal(
    energy: Any,
    layout: _Layout,
    state: Any,
    u: Tensor,
    betas: list[float],
    settings: _Settings,
    noise: _Noise,
    tally: Tally | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One block of chains through the schedule ``betas`` (increasing: forward; decreasing:
    reverse). Returns the ``(C, B)`` log weights, the mean acceptance ``(B,)`` and the final
    step sizes ``(B,)``."""
    c, b, _ = u.shape
    start, target_accept = settings.start, settings.target_accept
    a, ell, ga, gl = _evaluate(energy, layout, state, u, start)
    log_w = torch.zeros(c, b, dtype=torch.float64, device=u.device)  # accumulated in float64
    eps = torch.full((b,), settings.step_size, dtype=u.dtype, device=u.device)
    acc_sum = torch.zeros(b, dtype=u.dtype, device=u.device)
    moves = 0
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * ell.to(torch.float64)
        if tally is not None:
            tally.add(b)
        if t == len(betas) - 1:
            break
        beta = betas[t]

        def fn(q: Tensor, beta: float = beta) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
            parts = _evaluate(energy, layout, state, q, start)
            return parts[0] + beta * parts[1], parts[2] + beta * parts[3], parts

        u, _, _, (a, ell, ga, gl), prob = _hmc(
            u,
            a + beta * ell,
            ga + beta * gl,
            (a, ell, ga, gl),
            fn,
            eps * (1 + _JITTER * (2 * noise.uniform(t, u, 2) - 1)),
            settings.leapfrog,
            noise.momentum(t, u),
            noise.uniform(t, u, 1),
        )
        mean = prob.mean(0)
        acc_sum += mean
        moves += 1
        eps = torch.where(mean > target_accept, eps * _ADAPT, eps / _ADAPT).clamp(*_STEP_RANGE)
    accept = acc_sum / moves if moves else torch.full_like(acc_sum, math.nan)
    return log_w, accept, eps


@dataclass(frozen=True)
class _Settings:
    """The knobs shared by :func:`ais`, :func:`reverse_ais` and :func:`bdmc`, checked."""

    steps: int
    chains: int
    leapfrog: int
    step_size: float
    target_accept: float
    schedule: str
    start: str
    memory_budget: int
    seed: int | None
    fast: bool | None
    progress: Callable[[int, int], None] | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "chains", "leapfrog"):
            object.__setattr__(self, name, positive_int(name, getattr(self, name)))
        object.__setattr__(self, "step_size", positive_float("step_size", self.step_size))
        p = self.target_accept
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"target_accept must be a number in (0, 1), got {p!r}")
        if not 0 < float(p) < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {p}")
        object.__setattr__(self, "target_accept", float(p))
        for name, valid in (("schedule", SCHEDULES), ("start", STARTS)):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"{name} must be a string, got {v!r} ({type(v).__name__})")
            one_of(name, v, valid)
        m = self.memory_budget
        if isinstance(m, bool) or not isinstance(m, numbers.Integral):
            raise TypeError(f"memory_budget must be an integer number of bytes, got {m!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(
                f"seed must be an integer or None, got {seed!r} ({type(seed).__name__})"
            )
        if self.progress is not None and not callable(self.progress):
            raise TypeError(
                f"progress must be a callable (done, total) or None, got {self.progress!r}"
            )
        if not isinstance(self.distributed, bool):
            raise TypeError(f"distributed must be True or False, got {self.distributed!r}")


def _setup(
    model: Any, x_or_guide: Any, x: Any, kwargs: Any, fast: bool | None
) -> tuple[Target, _Layout, Any]:
    target = resolve(model, x_or_guide, x, kwargs, fast=fast is not False)
    xs = target.x
    devices = [xs.device] if xs.device.type == "cuda" else []
    with (
        torch.no_grad(),
        pyro.validation_enabled(False),
        param_sites(False),
        torch.random.fork_rng(devices=devices),
    ):
        _, guide_trace = particle_traces(
            target.program, (xs[:1],), target.kwargs_for(0, 1), 1, target.nesting
        )
    layout = _Layout(guide_trace, target.nesting)
    energy: Any = (
        _FusedEnergy(target.program.owner)
        if isinstance(target.source, FusedWeights)
        else _TraceEnergy(target.program, target.nesting, layout.names)
    )
    return target, layout, energy


def _block_size(target: Target, layout: _Layout, chains: int, memory_budget: int) -> int:
    """Datapoints per block: all chains of a block, with the autograd graph of one energy
    evaluation, within the budget (and, on a CPU, within the cache-friendly working set)."""
    x = target.x
    wide = x.element_size()
    per = _GRAD_FACTOR * _bytes_per_draw(target, x.dtype) + 12 * layout.dim * wide
    need = chains * per + x[0].numel() * wide
    if memory_budget < need:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small for one datapoint with "
            f"chains={chains}: it needs at least {need} bytes"
        )
    fast = _FAST_WORKSET.get(x.device.type, _FAST_WORKSET_ACCEL)
    return max(1, min(x.shape[0], memory_budget // need, fast // need))


def _start_values(
    target: Target,
    layout: _Layout,
    start: int,
    stop: int,
    chains: int,
    how: str,
    seed: int | None,
) -> Tensor:
    """``(C, B, D)`` draws from f₀ (the guide, or the model's prior given x) for datapoints
    ``start:stop``; with a seed, each datapoint under its own generator."""
    program, x = target.program, target.x
    fn = program.guide if how == "guide" else program.model
    particles = pyro.plate(PARTICLES, chains, dim=-target.nesting - 1)

    def draw(i: int, j: int) -> Tensor:
        tr = poutine.trace(particles(fn)).get_trace(x[i:j], **target.kwargs_for(i, j))
        tr = prune_subsample_sites(tr)
        return layout.flatten({n: tr.nodes[n]["value"] for n in layout.names}, chains, j - i)

    if seed is None:
        return draw(start, stop)
    parts = []
    for i in range(start, stop):
        with seeded(seed, i, x.device):
            parts.append(draw(i, i + 1))
    return torch.cat(parts, 1)


def _run(
    model: Any,
    x_or_guide: Any,
    x: Any,
    kwargs: Any,
    latents: Mapping[str, Tensor] | None,
    settings: _Settings,
) -> AISEstimate:
    """Forward AIS (``latents`` is ``None``) or reverse AIS from ``latents``, block by block."""
    t0 = time.perf_counter()
    chains, seed, start = settings.chains, settings.seed, settings.start
    target, layout, energy = _setup(model, x_or_guide, x, kwargs, settings.fast)
    xs = target.x
    n = xs.shape[0]
    reverse = latents is not None
    if reverse:
        latents = _check_latents(latents, layout, n)
    betas = SCHEDULES[settings.schedule](settings.steps).tolist()
    if reverse:
        betas = betas[::-1]
    block = _block_size(target, layout, chains, settings.memory_budget)
    starts = range(0, n, block)
    # With ``distributed``, this rank anneals blocks b ≡ rank (mod world size); every draw is
    # keyed by (seed, datapoint), so the gathered numbers are one process's.
    d = dist_info() if settings.distributed else None
    mine = [(b, i) for b, i in enumerate(starts) if d is None or b % d.world_size == d.rank]
    tally = Tally(sum(min(block, n - i) for _, i in mine) * (len(betas) - 1), settings.progress)
    parts: dict[int, Tensor] = {}
    with pyro.validation_enabled(False), param_sites(False):
        for b, i in mine:
            j = min(n, i + block)
            xb = xs[i:j]
            if reverse:
                u = layout.from_model_layout(latents, i, j, chains).to(xs)
            else:
                u = _start_values(target, layout, i, j, chains, start, seed)
            state = energy.prepare(xb, target.kwargs_for(i, j))
            noise = _Noise(seed, torch.arange(i, j, device=xs.device), int(reverse))
            lw, acc, e = _anneal(energy, layout, state, u, betas, settings, noise, tally)
            # One (b, C + 2) float64 tensor per block: log weights, acceptance, step size.
            parts[b] = torch.cat(
                [lw.T.to(torch.float64), acc[:, None].to(lw), e[:, None].to(lw)], 1
            )
    packed = torch.cat(gather_blocks(parts, len(starts)) if d is not None else list(parts.values()))
    lw, accept, eps = (packed[:, k].contiguous() for k in (slice(chains), chains, chains + 1))
    est = _finish(lw.logsumexp(1), (2 * lw).logsumexp(1), torch.full((n,), math.nan), chains, 1)
    return AISEstimate(
        log_px=-est.log_px if reverse else est.log_px,
        se=est.se,
        log_w=lw.cpu(),
        accept=accept.cpu(),
        step_size=eps.cpu(),
        steps=settings.steps,
        chains=chains,
        leapfrog=settings.leapfrog,
        schedule=settings.schedule,
        start=start,
        direction="reverse" if reverse else "forward",
        seconds=time.perf_counter() - t0,
        num_dims=target.num_dims,
    )


def _check_latents(latents: Any, layout: _Layout, n: int) -> Mapping[str, Tensor]:
    if not isinstance(latents, Mapping):
        raise TypeError(
            f"latents must be a mapping from latent site name to tensor, got "
            f"{type(latents).__name__}"
        )
    for s in layout.sites:
        v = latents.get(s.name)
        if not isinstance(v, Tensor):
            raise ValueError(
                f"latents has no tensor for latent site {s.name!r}: reverse AIS starts from an "
                f"exact posterior sample of every latent site ({', '.join(layout.names)})"
            )
        pos = v.dim() - s.event_dim - (layout.nesting + 1 - s.data_pos)
        if pos < 0 or v.shape[pos] != n:
            raise ValueError(
                f"latents[{s.name!r}] has shape {tuple(v.shape)}: expected one value per "
                f"datapoint (N={n}) along the data plate, as a trace of the model holds it"
            )
    return latents


# -- public entry points --------------------------------------------------------------------------
@torch.no_grad()
def ais(
    model: Any,
    x_or_guide: Any = None,
    x: Tensor | None = None,
    *,
    steps: int = 500,
    chains: int = 16,
    leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    schedule: str = "sigmoid",
    start: str = "guide",
    kwargs: Mapping[str, Any] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    seed: int | None = 0,
    fast: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> AISEstimate:
    """Forward annealed importance sampling: a stochastic lower bound on log p(x) per datapoint
    that tightens to log p(x) as ``steps`` grows (see the module docstring).

    Called like :func:`pvae.log_px`: ``ais(pair, x)`` with anything that has ``.model`` and
    ``.guide``, or ``ais(model, guide, x)`` with two Pyro functions. Every latent site must be
    continuous and inside ``pyro.plate("data", ...)``.

    Args:
        model: A pair (object with ``.model``/``.guide``) or a model callable.
        x_or_guide: The data, or the guide when ``model`` is a callable.
        x: The data, when a guide was passed.
        steps: Annealing steps T (T increments of β; T − 1 HMC transitions).
        chains: Independent chains C per datapoint.
        leapfrog: Leapfrog steps per HMC transition.
        step_size: Initial HMC step size (then adapted per datapoint).
        target_accept: Acceptance probability the step size is adapted toward.
        schedule: ``"sigmoid"`` or ``"linear"`` (:data:`SCHEDULES`).
        start: ``"guide"`` (f₀ = q(z | x)) or ``"prior"`` (f₀ = p(z)).
        kwargs: Extra keyword arguments of model and guide (as :func:`pvae.log_px`).
        memory_budget: Bytes of working memory; datapoints run in blocks that fit.
        seed: Seed of the draws (the numbers do not depend on the blocks); ``None``: global RNG.
        fast: Use the fused energy for a standard :class:`~pvae.VAE` (``None``/``True``), or
            force the trace path (``False``).
        progress: Called after each annealing step of each block of datapoints as
            ``progress(done, total)``, in (datapoint, step) pairs (T per datapoint).
        distributed: In a ``torch.distributed`` job, anneal this rank's share of the blocks of
            datapoints and gather every datapoint's result on every rank; with a ``seed`` the
            numbers are one process's (each draw is keyed by seed and datapoint). ``progress``
            then counts this rank's share.

    Returns:
        An :class:`AISEstimate` with ``direction="forward"``.

    Raises:
        ValueError: a bad setting (named), a discrete latent site (named), a site the trace
            machinery cannot handle (named), or a budget too small for one datapoint.
        TypeError: a setting of the wrong type, or no model/guide pair.

    Example:
        >>> import pvae
        >>> from pvae.evaluation.ais import ais
        >>> ref = pvae.LinearGaussian()
        >>> x = ref.sample(3)
        >>> est = ais(ref.vae(), x, steps=5, chains=4)
        >>> bool((est.log_px - ref.log_px(x)).abs().max() < 1e-8)  # exact guide: exact answer
        True
    """
    settings = _Settings(
        steps,
        chains,
        leapfrog,
        step_size,
        target_accept,
        schedule,
        start,
        memory_budget,
        seed,
        fast,
        progress,
        distributed,
    )
    return _run(model, x_or_guide, x, kwargs, None, settings)


@torch.no_grad()
def reverse_ais(
    model: Any,
    x_or_guide: Any = None,
    x: Tensor | None = None,
    *,
    latents: Mapping[str, Tensor],
    steps: int = 500,
    chains: int = 16,
    leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    schedule: str = "sigmoid",
    start: str = "guide",
    kwargs: Mapping[str, Any] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    seed: int | None = 0,
    fast: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> AISEstimate:
    """Reverse annealed importance sampling from exact posterior samples: a stochastic upper
    bound on log p(x) per datapoint (see the module docstring for the derivation).

    Valid only when ``latents`` are exact draws from p(z | x), as for data simulated from the
    model with :func:`simulate`; from any other starting point the number bounds nothing.

    Args:
        latents: Every latent site's value, one per datapoint, as a trace of the model holds it
            (e.g. shape ``(N, latent_dim)``); all chains of a datapoint start there.

    Every other argument is as in :func:`ais`.

    Returns:
        An :class:`AISEstimate` with ``direction="reverse"``; ``log_px`` is the upper bound and
        ``log_w`` the log weights of 1/p(x).
    """
    if latents is None:
        raise TypeError("reverse_ais needs latents: exact posterior samples of every latent site")
    settings = _Settings(
        steps,
        chains,
        leapfrog,
        step_size,
        target_accept,
        schedule,
        start,
        memory_budget,
        seed,
        fast,
        progress,
        distributed,
    )
    return _run(model, x_or_guide, x, kwargs, latents, settings)


@torch.no_grad()
def simulate(
    model: Any,
    n: int,
    *,
    guide: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Draw n datapoints and their latents from the model: :math:`(z, x) \\sim p(z, x)`.

    The model runs with ``x=None``: a :class:`~pvae.VAE` or :class:`~pvae.HierarchicalVAE`
    gets ``batch_size=n``; a generic model must draw its observed site when ``x`` is ``None``,
    accept the keyword arguments passed in ``kwargs`` (put whatever sets the number of
    datapoints there) and return the drawn x, as pvae's models do.

    Args:
        model: A pair (object with ``.model``/``.guide``) or a model callable (then ``guide``).
        n: Datapoints.
        guide: The guide, when ``model`` is a callable (it names the latent sites).
        kwargs: Keyword arguments of the model.
        seed: Seed of the draws (the global RNG is left untouched).

    Returns:
        ``x`` of shape ``(n, *data_shape)`` and every latent site's value.
    """
    n = positive_int("n", n)
    program = as_program(model, guide) if guide is not None else as_program(model)
    kw = dict(kwargs or {})
    from pvae.hierarchical import HierarchicalVAE
    from pvae.model import VAE

    if isinstance(program.owner, VAE | HierarchicalVAE):
        kw.setdefault("batch_size", n)
    with seeded(seed, _SIMULATION, program.device), param_sites(False):
        tr = prune_subsample_sites(poutine.trace(program.model).get_trace(None, **kw))
    x = tr.nodes["_RETURN"]["value"]
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] != n:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"the model run with x=None must draw and return n={n} datapoints, got {got}; pass "
            "what sets the number of datapoints in kwargs"
        )
    with pyro.validation_enabled(False), param_sites(False):
        _, model_trace, guide_trace = inspect_pair(program, (x[:1],), dict(kwargs or {}))
    check_sites(model_trace, guide_trace, "data")
    names = [n_ for n_, s in guide_trace.nodes.items() if s["type"] == "sample"]
    return x, {name: tr.nodes[name]["value"] for name in names}


def bdmc(
    model: Any,
    x_or_guide: Any = None,
    *,
    n: int = 100,
    steps: int = 500,
    chains: int = 16,
    leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    schedule: str = "sigmoid",
    start: str = "guide",
    kwargs: Mapping[str, Any] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    seed: int = 0,
    fast: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse et al. 2015, 2016): simulate n datapoints with their
    latents from the model, then sandwich log p(x) between forward AIS (lower bound) and reverse
    AIS from the exact latents (upper bound). The gap bounds the error of AIS — and of any
    lower bound evaluated with the same settings — on data like these (Wu et al. 2017).

    Args:
        model: A pair, or a model callable followed by its guide in ``x_or_guide``.
        x_or_guide: The guide, when ``model`` is a callable.
        n: Datapoints to simulate.

    Every other argument is as in :func:`ais`; ``seed`` seeds the simulation too (every rank of
    a ``distributed`` job simulates the same data, then anneals its share), and ``progress``
    hears the forward run, then the reverse run, each counting from 0.

    Returns:
        A :class:`BDMCResult`.

    Example:
        >>> import pvae
        >>> from pvae.evaluation.ais import bdmc
        >>> ref = pvae.LinearGaussian()
        >>> res = bdmc(ref.vae(loc_shift=0.5), n=4, steps=10, chains=4, leapfrog=5)
        >>> res.gap.shape, res.forward.direction, res.reverse.direction
        (torch.Size([4]), 'forward', 'reverse')
    """
    program = as_program(model) if x_or_guide is None else as_program(model, x_or_guide)
    x, latents = simulate(program, n, kwargs=kwargs, seed=seed)
    knobs = {
        "steps": steps,
        "chains": chains,
        "leapfrog": leapfrog,
        "step_size": step_size,
        "target_accept": target_accept,
        "schedule": schedule,
        "start": start,
        "kwargs": kwargs,
        "memory_budget": memory_budget,
        "seed": seed,
        "fast": fast,
        "progress": progress,
        "distributed": distributed,
    }
    forward = ais(program, x, **knobs)
    reverse = reverse_ais(program, x, latents=latents, **knobs)
    return BDMCResult(x, latents, forward, reverse)
