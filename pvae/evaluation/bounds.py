r"""The bound ladder: ELBO ≤ IWAE_k ≤ log p(x), with standard errors, for one model and data.

.. math::

    \mathcal L_{\mathrm{ELBO}} = \mathcal L_1 \le \mathcal L_5 \le \dots \le \mathcal L_k
    \xrightarrow[k\to\infty]{} \log p(x), \qquad
    \log p(x) - \mathcal L_{\mathrm{ELBO}} = \mathrm{KL}\big(q(z\mid x)\,\|\,p(z\mid x)\big)

Optionally the ladder gains annealed importance sampling on the same data (a tighter stochastic
lower bound, :func:`pvae.ais`) and bidirectional Monte Carlo on data simulated from the model
(:func:`pvae.bdmc`), whose gap between forward and reverse AIS bounds how far AIS with those
settings is from log p(x) on such data.

One set of ``k_max`` draws per datapoint serves every rung: IWAE_k is averaged over the
``k_max // k`` disjoint groups of k draws, so small-k rungs are precise and their standard error
comes from the spread across groups; the top rung's from the delta method. The ELBO is reported in
its Monte Carlo form (the k = 1 rung) and, where the prior/guide pair has one, its analytic-KL form,
with the reconstruction and KL terms. The gap estimates KL(q(z | x) ‖ p(z | x)) per datapoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pvae._checks import positive_int
from pvae.distributed import gather_blocks
from pvae.evaluation._psis import pareto_khat
from pvae.evaluation._weights import (
    DEFAULT_BUDGET,
    Target,
    blocks,
    check_k,
    plan,
    resolve,
    seeded,
)
from pvae.evaluation.ais import ais, bdmc
from pvae.evaluation.annealing import AISSettings
from pvae.evaluation.elbo import evaluate_elbo
from pvae.evaluation.log_px import LogPxEstimate
from pvae.evaluation.sandwich import sandwich_text

__all__ = ["BoundLadder", "bounds"]


def _mean_se(values: Tensor, var: Tensor) -> dict[str, float]:
    """Mean over datapoints and the Monte Carlo standard error of that mean."""
    n = values.numel()
    return {"mean": float(values.mean()), "se": float(var.sum().sqrt() / n)}


@dataclass
class BoundLadder:
    """Dataset means (nats per datapoint) with Monte Carlo standard errors.

    Attributes:
        n: Number of datapoints.
        iwae: ``{k: {"mean", "se"}}`` for each requested k (k = 1 is the Monte Carlo ELBO).
        elbo_analytic: ELBO with analytic KL (``None`` if the pair has no closed form).
        recon: E_q[log p(x | z)].
        kl: KL(q(z | x) ‖ p(z)).
        gap: IWAE at the largest k minus the best ELBO: an estimate of KL(q(z|x) ‖ p(z|x)).
        log_px: Summary of the largest-k estimate (ESS, k̂, bits/dim).
        ais: :meth:`AISEstimate.summary` of forward AIS on the same data, or ``None``.
        bdmc: :meth:`BDMCResult.summary` on data simulated from the model, or ``None``.
    """

    n: int
    iwae: dict[int, dict[str, float]]
    elbo_analytic: dict[str, float] | None
    recon: dict[str, float]
    kl: dict[str, float]
    gap: dict[str, float]
    log_px: dict[str, Any] = field(default_factory=dict)
    ais: dict[str, Any] | None = None
    bdmc: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "iwae": {str(k): v for k, v in self.iwae.items()},
            "elbo_mc": self.iwae.get(1),
            "elbo_analytic": self.elbo_analytic,
            "recon": self.recon,
            "kl": self.kl,
            "gap": self.gap,
            "log_px": self.log_px,
            "ais": self.ais,
            "bdmc": self.bdmc,
        }

    def table(self) -> str:
        """The ladder as aligned text."""
        rows = []
        if self.elbo_analytic is not None:
            rows.append(("ELBO (analytic KL)", self.elbo_analytic))
        for k, v in self.iwae.items():
            rows.append(("ELBO (Monte Carlo)" if k == 1 else f"IWAE k={k}", v))
        rows += [
            ("  reconstruction", self.recon),
            ("  KL(q(z|x) || p(z))", self.kl),
            ("gap log p(x) - ELBO", self.gap),
        ]
        lines = [f"{'bound':<22}{'nats':>12}{'± MC s.e.':>11}   (mean over n = {self.n})"]
        if self.ais is not None:
            a = self.ais
            rows.append(
                (f"AIS T={a['steps']} C={a['chains']}", {"mean": a["log_px"], "se": a["log_px_se"]})
            )
        lines += [
            f"{name:<22}{v['mean']:>12.4f}{math.nan if v['se'] is None else v['se']:>11.4f}"
            for name, v in rows
        ]
        lines.append(
            "± is the Monte Carlo s.e. of the mean on these datapoints (other draws of z); "
            "`pvae evaluate` also gives the s.e. over datapoints (another sample of test points)"
        )
        if self.bdmc is not None:
            b = self.bdmc
            lines.append(
                f"BDMC on {b['n']} datapoints simulated from the model (T={b['steps']}, "
                f"C={b['chains']}): {sandwich_text(b)}"
            )
        if self.log_px.get("warning"):
            lines.append(f"WARNING (IWAE k={max(self.iwae)}): {self.log_px['warning']}")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None) -> Any:
        """Bound vs k on a log axis with ±2 se bars; returns the matplotlib Figure."""
        from pvae import plotting

        return plotting.bound_ladder(self, path)


@torch.no_grad()
def bounds(
    model: Any,
    x_or_guide: Any,
    x: Tensor | None = None,
    *,
    ks: Sequence[int] = (1, 5, 50, 500, 5000),
    kwargs: Mapping[str, Any] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    dtype: torch.dtype = torch.float64,
    elbo_samples: int = 100,
    seed: int | None = None,
    distributed: bool = False,
    fast: bool = True,
    ais_steps: int | None = None,
    ais_chains: int = 16,
    bdmc_n: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BoundLadder:
    """Compute the ELBO-to-IWAE bound ladder on data ``x``.

    Called like :func:`pvae.log_px`: ``bounds(pair, x, ks=...)`` or
    ``bounds(model, guide, x, ks=...)``, for any pair whose sites lie in the ``"data"`` plate.

    Args:
        model: A pair (object with ``.model``/``.guide``) or a model callable.
        x_or_guide: The data ``(N, *data_shape)``, or the guide when ``model`` is a callable.
        x: The data, when a guide was passed.
        ks: Numbers of importance samples (each a positive integer).
        kwargs: Extra keyword arguments of model and guide (see :func:`pvae.log_px`).
        memory_budget: Bytes of working memory (see :func:`pvae.log_px`).
        dtype: Accumulation dtype.
        elbo_samples: Draws per datapoint for the analytic-KL ELBO's reconstruction term.
        seed: Per-block seeding, as in :func:`pvae.log_px` (sharding-invariant numbers).
        distributed: Share the blocks across the ranks of a ``torch.distributed`` job and
            gather the results (the analytic-KL ELBO is computed on every rank with ``seed``;
            AIS and BDMC share their blocks too).
        fast: Use the fused fast path where it applies (a standard :class:`~pvae.VAE`).
        ais_steps: Add forward AIS with this many annealing steps (:func:`pvae.ais`, its other
            settings at their defaults, seeded with ``seed`` or 0) on the same data.
        ais_chains: Independent AIS chains per datapoint.
        bdmc_n: With ``ais_steps``, also run BDMC (:func:`pvae.bdmc`) on this many datapoints
            simulated from the model: the gap bounds the error of AIS with these settings.
        progress: ``progress(done, total)`` through each phase in turn, each counting from 0:
            the importance draws ((datapoint, draw) pairs, k_max per datapoint), then AIS and
            BDMC's forward and reverse runs ((datapoint, step) pairs).

    Returns:
        A :class:`BoundLadder`.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
        >>> ladder = pvae.bounds(vae, torch.ones(8, 4), ks=(1, 10, 100))
        >>> sorted(ladder.iwae)
        [1, 10, 100]
    """
    if isinstance(ks, int) or not len(ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    ks = sorted({check_k(k, "ks entries") for k in ks})
    elbo_samples = positive_int("elbo_samples", elbo_samples)
    target = resolve(model, x_or_guide, x, kwargs, fast=fast)
    x = target.x
    top, rung_vals, rung_vars = _rungs(
        target, ks, memory_budget, dtype, seed, distributed, progress
    )
    iwae = {k: _mean_se(rung_vals[k].cpu(), rung_vars[k].cpu()) for k in ks}
    with seeded(seed, -1, x.device):
        est = evaluate_elbo(
            target.program, x, num_samples=elbo_samples, analytic_kl=True, kwargs=target.kwargs
        )
    elbo_se2 = est.se.double().cpu() ** 2
    elbo_vals = est.elbo.double().cpu()
    if not est.analytic_kl:  # the Monte Carlo rung with k_max draws is the better ELBO
        elbo_vals = rung_vals[1].cpu() if 1 in rung_vals else elbo_vals
        elbo_se2 = rung_vars[1].cpu() if 1 in rung_vars else elbo_se2
    gap = top.log_px - elbo_vals
    ais_summary, bdmc_summary = _annealed(
        target, ais_steps, ais_chains, bdmc_n, memory_budget, seed, progress, distributed
    )
    return BoundLadder(
        n=x.shape[0],
        iwae=iwae,
        elbo_analytic=_mean_se(est.elbo.double().cpu(), elbo_se2) if est.analytic_kl else None,
        recon=_mean_se(est.recon.double().cpu(), est.se.double().cpu() ** 2),
        kl=_mean_se(est.kl.double().cpu(), torch.zeros(x.shape[0], dtype=torch.float64)),
        gap=_mean_se(gap, top.se**2 + elbo_se2),
        log_px=top.summary(),
        ais=ais_summary,
        bdmc=bdmc_summary,
    )


def _rungs(
    target: Target,
    ks: list[int],
    memory_budget: int,
    dtype: torch.dtype,
    seed: int | None,
    distributed: bool,
    progress: Callable[[int, int], None] | None,
) -> tuple[LogPxEstimate, dict[int, Tensor], dict[int, Tensor]]:
    """The IWAE_k rungs from one set of ``max(ks)`` draws per datapoint: the top rung's estimate,
    and every rung's per-datapoint values and Monte Carlo variances (of the mean over the
    ``k_max // k`` disjoint groups of k draws below the top; delta method at the top)."""
    x, kmax = target.x, ks[-1]
    block, chunk = plan(target, kmax, memory_budget, dtype, keep=True)
    parts: dict[int, Tensor] = {}
    for i, lse, lse2, kept in blocks(
        target, kmax, block, chunk, dtype, True, seed, distributed, progress
    ):
        cols = [lse, lse2, torch.from_numpy(pareto_khat(kept.cpu().numpy())).to(lse)]
        for k in ks[:-1]:
            g = kmax // k
            groups = kept[:, : g * k].reshape(-1, g, k).logsumexp(-1) - math.log(k)
            cols += [groups.mean(1), groups.var(1) / g if g > 1 else torch.full_like(lse, math.nan)]
        parts[i] = torch.stack(cols)
    num_blocks = -(-x.shape[0] // block)
    table = torch.cat(
        gather_blocks(parts, num_blocks) if distributed else [parts[i] for i in range(num_blocks)],
        dim=1,
    )
    top = LogPxEstimate.from_sums(table[0], table[1], table[2], kmax, math.prod(x.shape[1:]))
    rung_vals = {k: table[3 + 2 * j] for j, k in enumerate(ks[:-1])}
    rung_vars = {k: table[4 + 2 * j] for j, k in enumerate(ks[:-1])}
    rung_vals[kmax], rung_vars[kmax] = top.log_px, top.se**2
    return top, rung_vals, rung_vars


def _annealed(
    target: Target,
    ais_steps: int | None,
    ais_chains: int,
    bdmc_n: int,
    memory_budget: int,
    seed: int | None,
    progress: Callable[[int, int], None] | None,
    distributed: bool,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The summaries of forward AIS on the data and of BDMC on ``bdmc_n`` simulated datapoints,
    with one :class:`~pvae.AISSettings` (``None`` for what was not asked)."""
    if ais_steps is None and not bdmc_n:
        return None, None
    if ais_steps is None:
        raise ValueError(f"bdmc_n={bdmc_n} needs ais_steps (the AIS schedule to check)")
    settings = AISSettings(steps=ais_steps, chains=ais_chains, memory_budget=memory_budget)
    run = {"seed": 0 if seed is None else seed, "progress": progress, "distributed": distributed}
    x = target.x
    ais_summary = ais(
        target.program, x, settings=settings, kwargs=target.kwargs or None, **run
    ).summary()
    if not bdmc_n:
        return ais_summary, None
    if target.kwargs:
        raise ValueError(
            "bdmc_n: a model with keyword arguments (labels…) needs data simulated "
            "with them; call pvae.simulate and pvae.bdmc yourself"
        )
    n = positive_int("bdmc_n", bdmc_n)
    return ais_summary, bdmc(target.program, settings=settings, n=n, **run).summary()
