r"""The annealing of AIS: the schedules of β, the settings of a run (:class:`AISSettings`, the one
object :func:`pvae.ais`, :func:`pvae.reverse_ais`, :func:`pvae.bdmc` and :func:`pvae.bounds`
read), and the loop that carries one block of chains through a schedule (:func:`anneal`).

Per datapoint, with :math:`0 = \beta_0 < \beta_1 < \dots < \beta_T = 1`, the chains move through
:math:`\log f_\beta = \log f_0 + \beta\,\ell` (:mod:`pvae.evaluation.energy`). The schedule is
``"linear"`` (:math:`\beta_t = t/T`) or ``"sigmoid"`` (Grosse et al. 2015:
:math:`\tilde\beta_t = \sigma(\delta(2t/T - 1))`, δ = 4, rescaled to [0, 1]), which spends more
steps near both ends. At each t the log weight gains :math:`(\beta_t - \beta_{t-1})\,\ell(z_{t-1})`,
then an HMC transition (:mod:`pvae.evaluation.hmc`) leaving :math:`f_{\beta_t}` invariant moves
the chains; the last transition cannot change the weight and is skipped (T increments, T − 1
transitions). A decreasing schedule gives reverse AIS.

References:
    Neal, R. M. (2001). Annealed importance sampling. *Statistics and Computing* 11, 125–139.

    Grosse, R. B., Ghahramani, Z., & Adams, R. P. (2015). Sandwiching the marginal likelihood
    using bidirectional Monte Carlo. arXiv:1511.02543.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pvae._checks import one_of, positive_float, positive_int
from pvae.evaluation._weights import DEFAULT_BUDGET, Tally
from pvae.evaluation.energy import evaluate
from pvae.evaluation.hmc import Noise, adapt_step_size, hmc_transition, jittered
from pvae.evaluation.latents import Layout

__all__ = ["SCHEDULES", "STARTS", "AISSettings", "anneal"]


def _linear(steps: int) -> Tensor:
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)


def _sigmoid(steps: int, delta: float = 4.0) -> Tensor:
    s = torch.sigmoid(delta * (2 * torch.arange(steps + 1, dtype=torch.float64) / steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


SCHEDULES: dict[str, Callable[[int], Tensor]] = {"linear": _linear, "sigmoid": _sigmoid}
STARTS = ("guide", "prior")


@dataclass(frozen=True)
class AISSettings:
    """How to anneal: the settings shared by :func:`pvae.ais`, :func:`pvae.reverse_ais` and
    :func:`pvae.bdmc`, checked once on construction (a bad value raises ``ValueError``, a value of
    the wrong type ``TypeError``, each naming the field, what it expects and what it got).

    Pass one to an estimator (``pvae.ais(vae, x, settings)``), or name its fields as keywords
    (``pvae.ais(vae, x, steps=1000)``); keywords override the fields of a given object.

    Attributes:
        steps: Annealing steps T (T increments of β; T − 1 HMC transitions).
        chains: Independent chains C per datapoint.
        leapfrog: Leapfrog steps per HMC transition.
        step_size: Initial HMC step size (then adapted per datapoint, see
            :mod:`pvae.evaluation.hmc`).
        target_accept: Acceptance probability in (0, 1) the step size is adapted toward.
        schedule: ``"sigmoid"`` or ``"linear"`` (:data:`SCHEDULES`).
        start: ``"guide"`` (f₀ = q(z | x)) or ``"prior"`` (f₀ = p(z)) (:data:`STARTS`).
        memory_budget: Bytes of working memory; datapoints run in blocks that fit (the numbers
            do not depend on the blocks).
        fast: Use the fused energy for a standard :class:`~pvae.VAE` (``None``/``True``), or
            force the trace path (``False``).

    Example:
        >>> from pvae.evaluation import AISSettings
        >>> s = AISSettings(steps=100, chains=4)
        >>> s.steps, s.schedule, s.replace(start="prior").start
        (100, 'sigmoid', 'prior')
    """

    steps: int = 500
    chains: int = 16
    leapfrog: int = 10
    step_size: float = 0.05
    target_accept: float = 0.65
    schedule: str = "sigmoid"
    start: str = "guide"
    memory_budget: int = DEFAULT_BUDGET
    fast: bool | None = None

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
        if self.fast is not None and not isinstance(self.fast, bool):
            raise TypeError(f"fast must be None, True or False, got {self.fast!r}")

    def replace(self, **changes: Any) -> AISSettings:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def merge(
        cls,
        settings: AISSettings | None,
        overrides: Mapping[str, Any],
        caller: str,
        keywords: Iterable[str] = (),
    ) -> AISSettings:
        """``settings`` (``None``: the defaults) with ``overrides`` of its fields, as an estimator
        called ``caller`` received them. An unknown name raises ``TypeError`` listing the valid
        ones: the fields, and the caller's own ``keywords``."""
        if settings is not None and not isinstance(settings, AISSettings):
            raise TypeError(
                f"settings must be a pvae.AISSettings or None, got {type(settings).__name__}"
            )
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in overrides if name not in fields]
        if unknown:
            raise TypeError(
                f"{caller}() got an unexpected keyword argument {unknown[0]!r}; valid: "
                f"{', '.join([*fields, *keywords])}"
            )
        return cls(**overrides) if settings is None else settings.replace(**overrides)

    def betas(self, reverse: bool = False) -> list[float]:
        """The schedule β₀ … β_T (reversed for reverse AIS)."""
        betas = SCHEDULES[self.schedule](self.steps).tolist()
        return betas[::-1] if reverse else betas


def anneal(
    energy: Any,
    layout: Layout,
    state: Any,
    u: Tensor,
    betas: list[float],
    settings: AISSettings,
    noise: Noise,
    tally: Tally | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One block of chains through the schedule ``betas`` (increasing: forward; decreasing:
    reverse). Returns the ``(C, B)`` log weights, the mean acceptance ``(B,)`` and the final
    step sizes ``(B,)``."""
    c, b, _ = u.shape
    start, target_accept = settings.start, settings.target_accept
    a, ell, ga, gl = evaluate(energy, layout, state, u, start)
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
            parts = evaluate(energy, layout, state, q, start)
            return parts[0] + beta * parts[1], parts[2] + beta * parts[3], parts

        # Draw order (jitter, momentum, accept) matters for seed=None, drawn from the global RNG.
        u, _, _, (a, ell, ga, gl), prob = hmc_transition(
            u,
            a + beta * ell,
            ga + beta * gl,
            (a, ell, ga, gl),
            fn,
            jittered(eps, noise, t, u),
            settings.leapfrog,
            noise.momentum(t, u),
            noise.uniform(t, u, 1),
        )
        mean = prob.mean(0)
        acc_sum += mean
        moves += 1
        eps = adapt_step_size(eps, mean, target_accept)
    accept = acc_sum / moves if moves else torch.full_like(acc_sum, math.nan)
    return log_w, accept, eps
