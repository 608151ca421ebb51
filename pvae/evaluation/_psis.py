"""PSIS Pareto k̂ through arviz, for both the arviz 0.x API and the arviz 1.x / arviz-stats one,
and the one definition of an *unreliable* k̂ that every report uses (text, JSON, figures).

A datapoint's k̂ is unreliable when it is at least :data:`KHAT_LIMIT` (Vehtari et al. 2024) or
``+inf`` (the tail fit failed, as it does for k between 10 and about 25 draws: no evidence that
the weights are fine). ``-inf`` (all weights equal: the best case) is reliable; NaN (fewer than
:data:`MIN_DRAWS` draws, or k̂ not computed) is no evidence either way and is left out of the
fraction.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = [
    "KHAT_LIMIT",
    "MIN_DRAWS",
    "format_khat",
    "khat_max",
    "pareto_khat",
    "unreliable",
    "unreliable_fraction",
]

MIN_DRAWS = 10
KHAT_LIMIT = 0.7  # k̂ at or above it: the weights' tails are too heavy to trust the s.e.


def pareto_khat(log_weights: np.ndarray) -> np.ndarray:
    r"""Pareto shape :math:`\hat k` of the importance weights (Vehtari et al. 2024), per row.

    Args:
        log_weights: Array ``(n_obs, k)`` of log importance weights.

    Returns:
        Array ``(n_obs,)``. :math:`\hat k < 0.5`: the weights' variance is finite and the
        estimate reliable; :math:`0.5 \le \hat k < 0.7`: usable with care; :math:`\hat k \ge 0.7`:
        the estimate is unreliable. Rows whose weights are all equal (bounded weights, as with
        the exact posterior as proposal) get :math:`-\infty`; with fewer than ``MIN_DRAWS``
        draws no tail can be fitted and :math:`\hat k` is NaN.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.shape[-1] < MIN_DRAWS:  # too few draws to fit a tail
        return np.full(lw.shape[:-1], np.nan)
    spread = lw.max(axis=-1) - lw.min(axis=-1)
    with warnings.catch_warnings():
        # arviz 0.x announces its refactor with a FutureWarning on import, and warns on
        # degenerate tails; neither is actionable here.
        warnings.simplefilter("ignore")
        try:
            from arviz_stats.base import array_stats

            _, khat = array_stats.psislw(lw, r_eff=1.0, axis=-1)
        except ImportError:
            import arviz

            _, khat = arviz.psislw(lw, reff=1.0)
    khat = np.asarray(khat, dtype=np.float64).reshape(lw.shape[:-1])
    return np.where(spread < 1e-9, -np.inf, khat)


def _array(khat: Any) -> np.ndarray:
    """k̂ values (a tensor, an array, a list) as a float64 NumPy array."""
    if hasattr(khat, "detach"):
        khat = khat.detach().cpu().double().numpy()
    return np.asarray(khat, dtype=np.float64)


def unreliable(khat: Any) -> np.ndarray:
    r"""Boolean array: where k̂ is unreliable (:math:`\hat k \ge` :data:`KHAT_LIMIT`, ``+inf``
    included); False where k̂ is NaN (not computed) or ``-inf`` (equal weights)."""
    return _array(khat) >= KHAT_LIMIT  # +inf ≥ 0.7; NaN compares False


def unreliable_fraction(khat: Any) -> float | None:
    """Fraction of the datapoints with a k̂ (not NaN) whose k̂ is unreliable (:func:`unreliable`:
    ``+inf`` counts), or ``None`` when no datapoint has one. Always a finite number otherwise,
    so that JSON holds it.

    Example:
        >>> unreliable_fraction([0.2, float("inf"), float("nan"), 0.9])
        0.6666666666666666
    """
    kh = _array(khat).reshape(-1)
    kh = kh[~np.isnan(kh)]
    return float(unreliable(kh).mean()) if kh.size else None


def khat_max(khat: Any) -> float | None:
    """The largest k̂ over the datapoints that have one (``+inf`` and ``-inf`` kept: JSON writes
    them as null, text as :func:`format_khat` does), or ``None`` when none has one."""
    kh = _array(khat).reshape(-1)
    kh = kh[~np.isnan(kh)]
    return float(kh.max()) if kh.size else None


def format_khat(value: float | None) -> str:
    """A k̂ for text: ``"0.53"``, ``"inf"`` (the tail fit failed: unreliable), ``"-inf"`` (equal
    weights) or ``"n/a"`` (not computed: k < :data:`MIN_DRAWS` or ``khat=False``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}"
