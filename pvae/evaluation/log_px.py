r"""Importance-weighted estimate of log p(x), per datapoint, with its own error bars.

.. math::

    \log \hat p_k(x) = \log \frac1k \sum_{i=1}^k w_i, \qquad
    w_i = \frac{p(x, z_i)}{q(z_i \mid x)}, \quad z_i \sim q(z \mid x)

(Burda et al. 2015). :math:`\mathbb E[\log\hat p_k] \le \log p(x)` for every k, increasing in k
and converging to :math:`\log p(x)`. Naive Monte Carlo (:math:`z_i` from the prior) fails
because p(x | z) is negligible for almost every prior draw; proposing from the amortized
posterior puts the draws where p(x | z) is large.

Reported with each estimate:

* standard error (delta method): :math:`\widehat{\mathrm{se}} = \hat\sigma_w / (\sqrt k\,\bar w)
  = \sqrt{(k/\mathrm{ESS} - 1)/(k - 1)}`;
* effective sample size :math:`\mathrm{ESS} = (\sum w_i)^2 / \sum w_i^2` (Kong 1992);
* PSIS Pareto :math:`\hat k` of the weights (Vehtari et al. 2024), through arviz. The standard
  error is only trustworthy when :math:`\hat k < 0.7`: heavier tails make it optimistic.

Memory: datapoints are processed in blocks and the k draws in chunks, sized from a probe of the
decoder's activations so that the working set stays under ``memory_budget`` whatever k is.
Log-sum-exp accumulators make the result exact under chunking and stable for log weights of
-1e4 nats and below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pvae.distributed import gather_blocks
from pvae.evaluation._psis import (
    KHAT_LIMIT,
    format_khat,
    khat_max,
    pareto_khat,
    unreliable,
    unreliable_fraction,
)
from pvae.evaluation._weights import (
    DEFAULT_BUDGET,
    Target,
    accelerate,
    blocks,
    check_k,
    check_precision,
    delta_method,
    matmul_precision,
    plan,
    resolve,
)
from pvae.evaluation.adaptive import AdaptiveReport, adaptive_weights

__all__ = [
    "DEFAULT_BUDGET",
    "KHAT_LIMIT",
    "KHAT_WARN_FRACTION",
    "LogPxEstimate",
    "format_khat",
    "khat_max",
    "log_px",
    "unreliable",
    "unreliable_fraction",
]

# More than this fraction of datapoints at or above the limit: the reported s.e. is unreliable.
KHAT_WARN_FRACTION = 0.05


@dataclass(repr=False)
class LogPxEstimate:
    """Per-datapoint importance-weighted log p(x) (tensors of shape ``(N,)``, nats, float64).

    Attributes:
        log_px: :math:`\\log \\frac1k \\sum_i w_i`.
        se: Monte Carlo standard error of ``log_px`` (NaN for k = 1).
        ess: Effective sample size of the weights, in [1, k].
        khat: PSIS Pareto k̂ of the weights (NaN when not computed).
        k: Number of importance samples (the starting number in the adaptive mode).
        num_dims: Data dimensions, for bits per dimension.
        adaptive: What the adaptive mode did (draws per datapoint, which settled), or ``None``.
    """

    log_px: Tensor
    se: Tensor
    ess: Tensor
    khat: Tensor
    k: int
    num_dims: int
    adaptive: AdaptiveReport | None = None

    @classmethod
    def from_sums(
        cls,
        lse: Tensor,
        lse2: Tensor,
        khat: Tensor,
        k: int,
        num_dims: int,
        k_used: Tensor | None = None,
        adaptive: AdaptiveReport | None = None,
    ) -> LogPxEstimate:
        """The estimate from log Σw and log Σw² over ``k`` draws per datapoint (``k_used`` per
        datapoint when the adaptive mode drew different numbers), its standard error and ESS
        by the delta method."""
        kk = k_used.to(lse) if k_used is not None else torch.full_like(lse, float(k))
        ess, se = delta_method(lse, lse2, kk)
        return cls(
            (lse - kk.log()).cpu(), se.cpu(), ess.cpu(), khat.to(lse).cpu(), k, num_dims, adaptive
        )

    @property
    def unreliable_fraction(self) -> float | None:
        """Fraction of datapoints whose k̂ is at least :data:`KHAT_LIMIT` or ``+inf`` (the one
        definition, :func:`unreliable_fraction`); ``None`` without k̂."""
        return unreliable_fraction(self.khat)

    @property
    def draws(self) -> str:
        """The draws per datapoint behind the ESS and s.e., for text: ``"5000"``, or in the
        adaptive mode the range actually used, ``"100..6400"``."""
        if self.adaptive is None:
            return str(self.k)
        lo, hi = int(self.adaptive.k_used.min()), int(self.adaptive.k_used.max())
        return str(lo) if lo == hi else f"{lo}..{hi}"

    @property
    def warning(self) -> str | None:
        """What to tell a reader of the number when more than :data:`KHAT_WARN_FRACTION` of the
        datapoints have k̂ ≥ :data:`KHAT_LIMIT` (Vehtari et al. 2024): the Monte Carlo s.e. is
        then optimistic and the estimate may sit well below log p(x). ``None`` otherwise."""
        frac = self.unreliable_fraction
        if frac is None or frac <= KHAT_WARN_FRACTION:
            return None
        return (
            f"PSIS k̂ ≥ {KHAT_LIMIT} for {100 * frac:.0f}% of datapoints (more than "
            f"{100 * KHAT_WARN_FRACTION:.0f}%): the Monte Carlo s.e. of log p(x) is unreliable "
            "(optimistic) and the estimate may be biased low; draw more where needed (the "
            "adaptive mode, max_k=…), train a better guide (IWAE, a flow) or check against AIS"
        )

    def __str__(self) -> str:
        s = self.summary()
        se = "n/a" if s["log_px_se"] is None else f"{s['log_px_se']:.4f}"
        line = (
            f"log p(x) = {s['log_px']:.4f} ± {se} nats (Monte Carlo s.e. of the mean over "
            f"n={s['n']} datapoints, k={self.draws}; {s['bits_per_dim']:.4f} bits/dim; mean ESS "
            f"{s['ess_mean']:.0f}, max k̂ {format_khat(s['khat_max'])})"
        )
        if self.adaptive is not None:
            line += f"\n{self.adaptive}"
        return line + (f"\nWARNING: {s['warning']}" if s["warning"] else "")

    def __repr__(self) -> str:
        return f"<LogPxEstimate {self}>"

    @property
    def bits_per_dim(self) -> Tensor:
        """:math:`-\\log_2 \\hat p(x) / D` per datapoint."""
        return -self.log_px / (self.num_dims * math.log(2))

    def summary(self) -> dict[str, float | int | None]:
        """Means over datapoints. ``log_px_se`` is the Monte Carlo error of the mean
        (:math:`\\sqrt{\\sum_n \\mathrm{se}_n^2}/N`); ``log_px_sd`` the spread over datapoints
        (``None`` for one datapoint). ``khat_max`` is the largest k̂ (``inf`` when a tail fit
        failed, which JSON writes as null) and ``khat_frac_above_0.7`` the fraction of datapoints
        whose k̂ is unreliable, ``+inf`` included (:func:`unreliable_fraction`): a number
        whenever k̂ was computed. ``k`` is the starting k of the adaptive mode; the draws used
        are in ``adaptive`` (``k_min``, ``k_mean``, ``k_max``)."""
        n = self.log_px.numel()
        return {
            "n": n,
            "k": self.k,
            "log_px": float(self.log_px.mean()),
            "log_px_se": float(self.se.pow(2).sum().sqrt() / n) if self.k > 1 else None,
            "log_px_sd": float(self.log_px.std()) if n > 1 else None,
            "bits_per_dim": float(self.bits_per_dim.mean()),
            "ess_mean": float(self.ess.mean()),
            "ess_min": float(self.ess.min()),
            "khat_max": khat_max(self.khat),  # ±inf in JSON: null (the fraction says which)
            "khat_frac_above_0.7": self.unreliable_fraction,
            "warning": self.warning,
            "adaptive": self.adaptive.summary() if self.adaptive is not None else None,
        }


@torch.no_grad()
def log_px(
    model: Any,
    x_or_guide: Any,
    x: Tensor | None = None,
    *,
    k: int = 5000,
    kwargs: Mapping[str, Any] | None = None,
    memory_budget: int = DEFAULT_BUDGET,
    dtype: torch.dtype = torch.float64,
    khat: bool = True,
    seed: int | None = None,
    distributed: bool = False,
    fast: bool = True,
    max_k: int | None = None,
    target_se: float | None = None,
    compile: bool = False,
    precision: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LogPxEstimate:
    """Estimate log p(x) for every datapoint in ``x`` by importance sampling from the guide.

    Call it as ``log_px(vae, x, k=...)`` with anything that has ``.model`` and ``.guide`` (a
    :class:`~pvae.VAE`, a :class:`~pvae.HierarchicalVAE`, a user's ``PyroModule``), or as
    ``log_px(model, guide, x, k=...)`` with two Pyro functions. The log weights are read from
    Pyro traces (:mod:`pvae.traces`): every sample site counts, whatever the pair's structure,
    as long as every site lies inside ``pyro.plate("data", ...)``. For a standard VAE the fused
    fast path computes the same numbers (``fast=False`` forces the trace path). Discrete sites
    marked for enumeration (``config_enumerate``) are summed out exactly and the others
    importance-sampled: each weight is then Σ_y p(x, y, z) / q(z | x, y), with
    lower variance than sampling y (:mod:`pvae.enumeration`, which states the scope).

    Args:
        model: A pair (object with ``.model``/``.guide``) or a model callable.
        x_or_guide: The data, or the guide when ``model`` is a callable.
        x: The data, when a guide was passed.
        k: Importance samples per datapoint.
        kwargs: Extra keyword arguments of model and guide (e.g. labels ``y`` of a conditional
            VAE): tensors whose first dimension is N are split with x, the rest passed as is.
        memory_budget: Bytes of working memory to stay under (log weights kept for k̂ plus
            network activations). Chunk sizes follow from it; the estimate does not.
        dtype: Accumulation dtype of the log-sum-exp statistics (float64 by default).
        khat: Compute PSIS k̂ (keeps the k log weights of a block of datapoints in memory).
        seed: Seed each block of datapoints by its position, so results do not depend on how
            the data are split across processes (the global RNG is left untouched).
        distributed: In a ``torch.distributed`` job, compute this rank's share of the blocks and
            gather every datapoint's result on every rank (same numbers as one process with the
            same ``seed``).
        fast: Use the fused fast path where it applies (a standard :class:`~pvae.VAE`).
        max_k: Opt into the adaptive mode (:mod:`pvae.evaluation.adaptive`): datapoints whose
            k̂ is ≥ 0.7 (or whose s.e. is above ``target_se``) after k draws get more, doubling
            up to ``max_k`` per datapoint; ``est.adaptive`` reports what was done. Default
            64 × k when only ``target_se`` is given.
        target_se: With the adaptive mode, also draw until each datapoint's s.e. is at most
            this many nats.
        compile: Compile the inner loop (each chunk's draws, decoder pass and log densities;
            the encoder runs once per block) with :func:`torch.compile`, sizes symbolic so that
            one graph serves every chunk and block. Fused path only; where compilation fails the
            estimate runs eagerly after a one-line notice.
        precision: ``None`` (the model's dtype), ``"bf16"`` (the decoder under bfloat16
            autocast: on an accelerator about twice the throughput; the log densities and
            accumulators keep the model's dtype) or ``"tf32"`` (CUDA only: TF32 matrix
            products). The change in log p(x) is a systematic one, not Monte Carlo noise:
            compare it with ``se`` on your model before relying on it (on the tests' model,
            bf16 moves the mean log p(x) by less than its s.e.). Fused path only.
        progress: Called after each chunk of draws as ``progress(done, total)``, in
            (datapoint, draw) pairs of this process; in the adaptive mode once, at the end.

    Returns:
        A :class:`LogPxEstimate`.

    Raises:
        ValueError: k ≤ 0, empty x, a shape mismatch, a site the weights cannot handle (named:
            outside the data plate, not in the guide…), a guide whose support or event shape is
            not the prior's, or a budget too small for one datapoint.
        TypeError: k not an integer, or no model/guide pair.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
        >>> est = pvae.log_px(vae, torch.ones(3, 4), k=100)
        >>> est.log_px.shape, bool((est.ess >= 1).all() and (est.ess <= 100).all())
        (torch.Size([3]), True)
    """
    k = check_k(k)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable (done, total) or None, got {progress!r}")
    target = resolve(model, x_or_guide, x, kwargs, fast=fast)
    precision = check_precision(precision, target.x.device)
    target = accelerate(target, compile, precision)
    with matmul_precision(precision):
        return _estimate(
            target, k, memory_budget, dtype, khat, seed, distributed, max_k, target_se, progress
        )


def _estimate(
    target: Target,
    k: int,
    memory_budget: int,
    dtype: torch.dtype,
    khat: bool,
    seed: int | None,
    distributed: bool,
    max_k: int | None,
    target_se: float | None,
    progress: Callable[[int, int], None] | None,
) -> LogPxEstimate:
    """:func:`log_px` on a resolved target."""
    if max_k is not None or target_se is not None:
        if distributed or not khat:
            raise ValueError(
                "the adaptive mode (max_k / target_se) needs khat=True and runs in one process "
                f"(got khat={khat}, distributed={distributed})"
            )
        lse, lse2, kh, k_used, report = adaptive_weights(
            target, k, 64 * k if max_k is None else max_k, target_se, memory_budget, dtype, seed
        )
        if progress is not None:
            drawn = int(k_used.sum())
            progress(drawn, drawn)
        return LogPxEstimate.from_sums(lse, lse2, kh, k, target.num_dims, k_used, report)
    block, chunk = plan(target, k, memory_budget, dtype, keep=khat)
    parts: dict[int, Tensor] = {}
    for i, lse, lse2, kept in blocks(
        target, k, block, chunk, dtype, khat, seed, distributed, progress
    ):
        kh = (
            torch.from_numpy(pareto_khat(kept.cpu().numpy())).to(lse)
            if kept is not None
            else torch.full_like(lse, math.nan)
        )
        parts[i] = torch.stack([lse, lse2, kh])
    num_blocks = -(-target.x.shape[0] // block)
    lse, lse2, kh = torch.cat(
        gather_blocks(parts, num_blocks) if distributed else [parts[i] for i in range(num_blocks)],
        dim=1,
    )
    return LogPxEstimate.from_sums(lse, lse2, kh, k, target.num_dims)
