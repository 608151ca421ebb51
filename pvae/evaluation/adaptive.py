r"""Adaptive importance sampling for log p(x): more draws where the weights ask for them.

A fixed k is too many for most datapoints and too few for the hard ones, whose weights are
heavy-tailed (PSIS :math:`\hat k \ge 0.7`, Vehtari et al. 2024) and whose reported standard
error is then optimistic. The adaptive mode of :func:`pvae.log_px` starts every datapoint at k
draws and, round by round, doubles the draws of the datapoints that are not yet trustworthy:

* a datapoint is *settled* when :math:`\hat k < 0.7` over all its draws so far and, with a
  ``target_se``, its delta-method standard error is at most ``target_se``;
* every unsettled datapoint gets as many fresh draws as it already has (so totals go k, 2k, 4k,
  … up to ``max_k``), and its estimate, standard error and :math:`\hat k` are recomputed from
  *all* its draws (importance sampling with the same proposal: draws pool exactly);
* a datapoint at ``max_k`` stops unsettled, and the report says how many did.

What it reports (:class:`AdaptiveReport`): the draws each datapoint used, which settled, the
number of rounds. Stopping on the observed :math:`\hat k` and standard error makes the
estimate's draw count data-dependent; the estimator stays consistent, and the rule only ever
*adds* draws, so E[log p̂] can only move up toward log p(x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pvae.evaluation._psis import MIN_DRAWS, pareto_khat, unreliable
from pvae.evaluation._weights import Target, blocks, check_k, delta_method, plan

__all__ = ["AdaptiveReport", "adaptive_weights"]


@dataclass
class AdaptiveReport:
    """What the adaptive mode did.

    Attributes:
        k_used: ``(N,)`` draws each datapoint used.
        settled: ``(N,)`` whether the datapoint met the rule (k̂ < 0.7 and, with a target,
            s.e. ≤ ``target_se``) before the cap.
        rounds: Rounds of drawing (1 = the initial k was enough everywhere).
        target_se: The standard-error target, or ``None`` (k̂ alone).
        max_k: The cap on draws per datapoint.
    """

    k_used: Tensor
    settled: Tensor
    rounds: int
    target_se: float | None
    max_k: int

    def summary(self) -> dict[str, float | int | None]:
        n = self.k_used.numel()
        return {
            "target_se": self.target_se,
            "max_k": self.max_k,
            "rounds": self.rounds,
            "k_min": int(self.k_used.min()),
            "k_mean": float(self.k_used.double().mean()),
            "k_max": int(self.k_used.max()),
            "n_settled": int(self.settled.sum()),
            "n_capped": n - int(self.settled.sum()),
        }

    def __str__(self) -> str:
        s = self.summary()
        rule = "k̂ < 0.7" + ("" if self.target_se is None else f" and s.e. ≤ {self.target_se:g}")
        n = self.k_used.numel()
        line = (
            f"adaptive: {s['n_settled']}/{n} datapoints reached {rule} "
            f"(k {s['k_min']}..{s['k_max']} per datapoint, mean {s['k_mean']:.0f}; "
            f"{s['rounds']} round{'s' * (s['rounds'] != 1)})"
        )
        if s["n_capped"]:
            line += f"; {s['n_capped']} stopped unsettled at the cap k = {self.max_k}"
        return line


def _stats(w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log Σw, log Σw², the delta-method s.e. and k̂ of rows of log weights ``(b, k)``."""
    lse, lse2 = w.logsumexp(1), (2 * w).logsumexp(1)
    _, se = delta_method(lse, lse2, w.shape[1])
    kh = torch.from_numpy(pareto_khat(w.cpu().numpy())).to(w)
    return lse, lse2, se, kh


def adaptive_weights(
    target: Target,
    k: int,
    max_k: int,
    target_se: float | None,
    memory_budget: int,
    dtype: torch.dtype,
    seed: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, AdaptiveReport]:
    """Run the adaptive rounds (see the module docstring) over every datapoint of ``target``.

    Datapoints are taken in groups whose draws at the cap fit in half of ``memory_budget``
    (every draw of an unsettled datapoint is kept to recompute k̂); the draws themselves are
    chunked under the other half. Round r of group g is seeded from (seed, g, r): fresh draws
    every round, the same numbers on every call.

    Returns:
        Per datapoint: log Σw, log Σw², k̂ and the draw counts (``(N,)`` each), and the report.
    """
    max_k = check_k(max_k, "max_k")
    if k < MIN_DRAWS:
        raise ValueError(f"the adaptive mode needs k ≥ {MIN_DRAWS} draws to estimate k̂, got k={k}")
    if max_k < k:
        raise ValueError(f"max_k must be at least k={k}, got max_k={max_k}")
    if target_se is not None and not (isinstance(target_se, int | float) and target_se > 0):
        raise ValueError(f"target_se must be a positive number of nats, got {target_se!r}")
    x = target.x
    n = x.shape[0]
    width = torch.finfo(dtype).bits // 8
    group = max(1, min(n, (memory_budget // 2) // (max_k * width)))
    out = torch.full((4, n), math.nan, dtype=dtype, device=x.device)  # lse, lse2, k̂, k
    settled = torch.zeros(n, dtype=torch.bool)
    rounds = 0
    for g, g0 in enumerate(range(0, n, group)):
        active = torch.arange(g0, min(n, g0 + group), device=x.device)
        kept = torch.empty((active.numel(), 0), dtype=dtype, device=x.device)
        new, r = k, 0
        while active.numel():
            sub = target.subset(active)
            block, chunk = plan(sub, new, memory_budget // 2, dtype, keep=True)
            s = None if seed is None else (seed * 1_000_003 + g) * 1_009 + r
            drawn = [w for *_, w in blocks(sub, new, block, chunk, dtype, True, s)]
            kept = torch.cat([kept, torch.cat(drawn)], dim=1)
            lse, lse2, se, kh = _stats(kept)
            total = kept.shape[1]
            ok = torch.from_numpy(~unreliable(kh)).to(kh.device)  # +inf: not settled
            if target_se is not None:
                ok &= se <= target_se
            stop = ok | (total >= max_k)
            out[:, active[stop]] = torch.stack([lse, lse2, kh, torch.full_like(lse, total)])[
                :, stop
            ]
            settled[active[stop].cpu()] = ok[stop].cpu()
            active, kept = active[~stop], kept[~stop]
            new, r = min(total, max_k - total), r + 1
        rounds = max(rounds, r)
    lse, lse2, kh, k_used = out
    report = AdaptiveReport(k_used.long().cpu(), settled, rounds, target_se, max_k)
    return lse, lse2, kh, k_used, report
