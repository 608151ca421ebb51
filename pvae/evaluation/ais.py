r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC): stochastic lower
*and* upper bounds on log p(x), per datapoint, for any model/guide pair; and their results.

**Intermediate targets.** Per datapoint, over the latents z (every latent site of the guide,
flattened into one unconstrained vector, :mod:`pvae.evaluation.latents`), with
:math:`0 = \beta_0 < \beta_1 < \dots < \beta_T = 1`:

.. math::

    \log f_\beta(z) = \log f_0(z) + \beta\,\ell(z), \qquad
    \begin{cases}
        f_0 = q(z \mid x),\ \ \ell = \log p(x, z) - \log q(z \mid x) & \text{start = "guide"}\\
        f_0 = p(z),\ \ \ \ \ \ \ \ \ell = \log p(x \mid z) & \text{start = "prior"}
    \end{cases}

so :math:`f_0` is a normalized density we can sample, and :math:`f_1 = p(x, z)`, whose
normalizer is p(x) (the energies, read from Pyro traces: :mod:`pvae.evaluation.energy`; the
schedules of β and the settings: :mod:`pvae.evaluation.annealing`).

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

**Transitions.** Hamiltonian Monte Carlo with a per-datapoint step size adapted toward
``target_accept`` and jittered per chain (:mod:`pvae.evaluation.hmc`, which warns when the
adaptation bends the guarantees above).

**Discrete latents.** HMC moves continuous latents only: enumerated sites (``config_enumerate``)
are refused, naming the site, as one annealing run per configuration would be needed;
:func:`pvae.log_px`, :func:`pvae.bounds` and :func:`pvae.evaluate_elbo` sum them out.

**Random numbers.** With an integer ``seed``, the start of datapoint n is drawn under a
generator seeded by (seed, n), and every momentum and accept draw is a counter-based hash of
(seed, n, step, chain, coordinate) (:class:`pvae.evaluation.hmc.Noise`): the numbers of a
datapoint do not depend on how the data are split into blocks (``memory_budget``), nor on the
device's generator. ``seed=None`` uses the global generator.

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

import inspect
import math
import numbers
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pvae._checks import positive_int
from pvae.distributed import gather_blocks
from pvae.distributed import info as dist_info
from pvae.enumeration import enumerated, refuse_enumerated
from pvae.evaluation._weights import (
    DEFAULT_BUDGET,
    Tally,
    Target,
    bytes_per_draw,
    fast_workset,
    resolve,
    seeded,
)
from pvae.evaluation.annealing import SCHEDULES, STARTS, AISSettings, anneal
from pvae.evaluation.energy import make_energy, start_values
from pvae.evaluation.hmc import Noise, hmc_step
from pvae.evaluation.latents import Layout
from pvae.evaluation.log_px import LogPxEstimate
from pvae.evaluation.sandwich import sandwich_text
from pvae.program import as_program, param_sites
from pvae.traces import check_sites, inspect_pair, particle_traces

__all__ = [
    "DEFAULT_BUDGET",
    "SCHEDULES",
    "STARTS",
    "AISEstimate",
    "AISSettings",
    "BDMCResult",
    "ais",
    "bdmc",
    "hmc_step",
    "reverse_ais",
    "simulate",
]

# Working memory of one (chain, datapoint) relative to one forward draw: the autograd graph of the
# energy and the backward pass through it, plus the chain's states.
_GRAD_FACTOR = 4
# simulate's stream under `seeded`: not a datapoint index, so the simulated data and the chains
# started on them (datapoint n under (seed, n)) never share draws.
_SIMULATION = 1_000_002
# What each estimator takes besides the fields of AISSettings.
_RUN_KEYWORDS = ("settings", "kwargs", "seed", "progress", "distributed")


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

    def __str__(self) -> str:  # the signed gap, never an inequality the numbers may break
        s = self.summary()
        return f"BDMC {sandwich_text(s)} (n={s['n']}, steps={s['steps']}, chains={s['chains']})"

    def __repr__(self) -> str:
        return f"<BDMCResult {self}>"


# -- one run: setup, blocks of datapoints, the estimate ------------------------------------------
@dataclass(frozen=True)
class _Run:
    """How one call runs besides its :class:`AISSettings`: the seed of its draws, its progress
    callback and whether it shares the blocks across a ``torch.distributed`` job; checked."""

    seed: int | None = 0
    progress: Callable[[int, int], None] | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
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


_ENUMERATED = "AIS anneals continuous latents with HMC; it does not sum discrete sites out"


def _setup(
    model: Any, x_or_guide: Any, x: Any, kwargs: Any, fast: bool | None
) -> tuple[Target, Layout, Any]:
    target = resolve(model, x_or_guide, x, kwargs, fast=fast is not False)
    refuse_enumerated(getattr(target.source, "sites", {}), "ais", _ENUMERATED)
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
    layout = Layout(guide_trace, target.nesting)
    return target, layout, make_energy(target, layout)


def _block_size(target: Target, layout: Layout, chains: int, memory_budget: int) -> int:
    """Datapoints per block: all chains of a block, with the autograd graph of one energy
    evaluation, within the budget (and, on a CPU, within the cache-friendly working set)."""
    x = target.x
    wide = x.element_size()
    per = _GRAD_FACTOR * bytes_per_draw(target, x.dtype) + 12 * layout.dim * wide
    need = chains * per + x[0].numel() * wide
    if memory_budget < need:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small for one datapoint with "
            f"chains={chains}: it needs at least {need} bytes"
        )
    fast = fast_workset(x.device)
    return max(1, min(x.shape[0], memory_budget // need, fast // need))


def _anneal_blocks(
    target: Target,
    layout: Layout,
    energy: Any,
    latents: Mapping[str, Tensor] | None,
    settings: AISSettings,
    run: _Run,
) -> Tensor:
    """Forward AIS (``latents`` is ``None``) or reverse AIS from ``latents``, block by block:
    ``(N, C + 2)`` float64, each datapoint's log weights, mean acceptance and final step size."""
    chains, xs = settings.chains, target.x
    n, reverse = xs.shape[0], latents is not None
    betas = settings.betas(reverse)
    block = _block_size(target, layout, chains, settings.memory_budget)
    starts = range(0, n, block)
    # With ``distributed``, this rank anneals blocks b ≡ rank (mod world size); every draw is
    # keyed by (seed, datapoint), so the gathered numbers are one process's.
    d = dist_info() if run.distributed else None
    mine = [(b, i) for b, i in enumerate(starts) if d is None or b % d.world_size == d.rank]
    tally = Tally(sum(min(block, n - i) for _, i in mine) * (len(betas) - 1), run.progress)
    parts: dict[int, Tensor] = {}
    with pyro.validation_enabled(False), param_sites(False):
        for b, i in mine:
            j = min(n, i + block)
            if latents is not None:
                u = layout.from_model_layout(latents, i, j, chains).to(xs)
            else:
                u = start_values(target, layout, i, j, chains, settings.start, run.seed)
            state = energy.prepare(xs[i:j], target.kwargs_for(i, j))
            noise = Noise(run.seed, torch.arange(i, j, device=xs.device), int(reverse))
            lw, acc, e = anneal(energy, layout, state, u, betas, settings, noise, tally)
            # One (b, C + 2) float64 tensor per block: log weights, acceptance, step size.
            parts[b] = torch.cat(
                [lw.T.to(torch.float64), acc[:, None].to(lw), e[:, None].to(lw)], 1
            )
    return torch.cat(gather_blocks(parts, len(starts)) if d is not None else list(parts.values()))


def _run(
    model: Any,
    x_or_guide: Any,
    x: Any,
    kwargs: Any,
    latents: Any,
    settings: AISSettings,
    run: _Run,
) -> AISEstimate:
    """Forward AIS (``latents`` is ``None``) or reverse AIS from ``latents``, as an estimate."""
    t0 = time.perf_counter()
    target, layout, energy = _setup(model, x_or_guide, x, kwargs, settings.fast)
    n, chains, reverse = target.x.shape[0], settings.chains, latents is not None
    if reverse:
        latents = layout.check_latents(latents, n)
    packed = _anneal_blocks(target, layout, energy, latents, settings, run)
    lw, accept, eps = (packed[:, k].contiguous() for k in (slice(chains), chains, chains + 1))
    nan = torch.full((n,), math.nan)
    est = LogPxEstimate.from_sums(lw.logsumexp(1), (2 * lw).logsumexp(1), nan, chains, 1)
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
        start=settings.start,
        direction="reverse" if reverse else "forward",
        seconds=time.perf_counter() - t0,
        num_dims=target.num_dims,
    )


# -- public entry points --------------------------------------------------------------------------
@torch.no_grad()
def ais(
    model: Any,
    x_or_guide: Any = None,
    x: Tensor | None = None,
    settings: AISSettings | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
    **overrides: Any,
) -> AISEstimate:
    """Forward annealed importance sampling: a stochastic lower bound on log p(x) per datapoint
    that tightens to log p(x) as ``steps`` grows (see the module docstring).

    Called like :func:`pvae.log_px`: ``ais(pair, x)`` with anything that has ``.model`` and
    ``.guide``, or ``ais(model, guide, x)`` with two Pyro functions. Every latent site must be
    continuous and inside ``pyro.plate("data", ...)``.

    Args:
        model: A pair (object with ``.model``/``.guide``) or a model callable.
        x_or_guide: The data, or the guide when ``model`` is a callable.
        x: The data, when a guide was passed (or the settings, after the data of a pair).
        settings: How to anneal (:class:`~pvae.AISSettings`: steps, chains, leapfrog,
            step_size, target_accept, schedule, start, memory_budget, fast); ``None``: defaults.
        kwargs: Extra keyword arguments of model and guide (as :func:`pvae.log_px`).
        seed: Seed of the draws (the numbers do not depend on the blocks); ``None``: global RNG.
        progress: Called after each annealing step of each block of datapoints as
            ``progress(done, total)``, in (datapoint, step) pairs (T per datapoint).
        distributed: In a ``torch.distributed`` job, anneal this rank's share of the blocks of
            datapoints and gather every datapoint's result on every rank; with a ``seed`` the
            numbers are one process's (each draw is keyed by seed and datapoint). ``progress``
            then counts this rank's share.
        **overrides: Fields of :class:`~pvae.AISSettings` by name (``steps=1000``), over
            ``settings``; any other name raises ``TypeError`` listing the valid ones.

    Returns:
        An :class:`AISEstimate` with ``direction="forward"``.

    Raises:
        ValueError: a bad setting (named), a discrete latent site (named; an enumerated one
            too), a site the trace machinery cannot handle (named), or a budget too small for
            one datapoint.
        TypeError: a setting of the wrong type or an unknown one, or no model/guide pair.

    Example:
        >>> import pvae
        >>> from pvae.evaluation.ais import ais
        >>> ref = pvae.LinearGaussian()
        >>> x = ref.sample(3)
        >>> est = ais(ref.vae(), x, steps=5, chains=4)
        >>> bool((est.log_px - ref.log_px(x)).abs().max() < 1e-8)  # exact guide: exact answer
        True
    """
    x, settings = _settings_after_data(x, settings)
    settings = AISSettings.merge(settings, overrides, "ais", _RUN_KEYWORDS)
    return _run(model, x_or_guide, x, kwargs, None, settings, _Run(seed, progress, distributed))


@torch.no_grad()
def reverse_ais(
    model: Any,
    x_or_guide: Any = None,
    x: Tensor | None = None,
    settings: AISSettings | None = None,
    *,
    latents: Mapping[str, Tensor],
    kwargs: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
    **overrides: Any,
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
    x, settings = _settings_after_data(x, settings)
    settings = AISSettings.merge(settings, overrides, "reverse_ais", ("latents", *_RUN_KEYWORDS))
    run = _Run(seed, progress, distributed)
    return _run(model, x_or_guide, x, kwargs, latents, settings, run)


def _settings_after_data(x: Any, settings: Any) -> tuple[Any, Any]:
    """``ais(pair, x, settings)`` puts the settings where a guide's data would go: move them."""
    if isinstance(x, AISSettings) and settings is None:
        return None, x
    return x, settings


def _takes_keyword(fn: Any, name: str) -> bool:
    """Whether the model ``fn`` names a parameter ``name`` (a :class:`pvae.program.PyroProgram`'s
    bound model keeps its function in ``.fn``)."""
    try:
        params = inspect.signature(getattr(fn, "fn", fn)).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


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

    The model runs with ``x=None``; a model that takes a ``batch_size`` argument (as
    :class:`~pvae.VAE` and :class:`~pvae.HierarchicalVAE` do) gets ``batch_size=n``; any other
    model must draw its observed site when ``x`` is ``None``, accept the keyword arguments
    passed in ``kwargs`` (put whatever sets the number of datapoints there) and return the
    drawn x, as pvae's models do.

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
    if _takes_keyword(program.model, "batch_size"):
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
    refuse_enumerated(enumerated(model_trace, guide_trace), "simulate", _ENUMERATED)
    check_sites(model_trace, guide_trace, "data")
    names = [n_ for n_, s in guide_trace.nodes.items() if s["type"] == "sample"]
    return x, {name: tr.nodes[name]["value"] for name in names}


def bdmc(
    model: Any,
    x_or_guide: Any = None,
    settings: AISSettings | None = None,
    *,
    n: int = 100,
    kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
    **overrides: Any,
) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse et al. 2015, 2016): simulate n datapoints with their
    latents from the model, then sandwich log p(x) between forward AIS (lower bound) and reverse
    AIS from the exact latents (upper bound). The gap bounds the error of AIS — and of any
    lower bound evaluated with the same settings — on data like these (Wu et al. 2017).

    Args:
        model: A pair, or a model callable followed by its guide in ``x_or_guide``.
        x_or_guide: The guide, when ``model`` is a callable (or the settings, after a pair).
        settings: How to anneal, both ways (:class:`~pvae.AISSettings`).
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
    x_or_guide, settings = _settings_after_data(x_or_guide, settings)
    settings = AISSettings.merge(settings, overrides, "bdmc", ("n", *_RUN_KEYWORDS))
    program = as_program(model) if x_or_guide is None else as_program(model, x_or_guide)
    x, latents = simulate(program, n, kwargs=kwargs, seed=seed)
    run = {"kwargs": kwargs, "seed": seed, "progress": progress, "distributed": distributed}
    forward = ais(program, x, settings=settings, **run)
    reverse = reverse_ais(program, x, settings=settings, latents=latents, **run)
    return BDMCResult(x, latents, forward, reverse)
