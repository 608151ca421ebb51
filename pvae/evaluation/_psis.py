"""PSIS Pareto k̂ through arviz, for both the arviz 0.x API and the arviz 1.x / arviz-stats one."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["KHAT_LIMIT", "MIN_DRAWS", "pareto_khat"]

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
