r"""BDMC's sandwich in words: the two bounds, and the signed gap between them with its s.e.

Forward AIS is a stochastic lower bound and reverse AIS (from exact posterior draws, on data
simulated from the model) a stochastic upper bound of log p(x) (Grosse et al. 2015): each holds
*in expectation*. On a finite run, once the gap is down to the Monte Carlo noise, the estimated
"upper" bound can come out below the "lower" one. So the report never writes the inequality
``lower ≤ log p(x) ≤ upper`` as if it held for the numbers; it gives the signed gap
upper − lower with its standard error and says what it means: within one or two s.e., the bounds
agree up to the noise; a positive gap beyond that bounds the error of either estimate on such
data; a negative one beyond it is a crossing the noise does not explain.

Reference:
    Grosse, R. B., Ghahramani, Z., & Adams, R. P. (2015). Sandwiching the marginal likelihood
    using bidirectional Monte Carlo. arXiv:1511.02543.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["gap_verdict", "sandwich_text"]


def gap_verdict(gap: float, gap_se: float | None) -> str:
    """What a BDMC gap upper − lower (nats) says, given its standard error: within one or two
    s.e. the bounds agree up to Monte Carlo noise (whatever the sign); beyond, a positive gap
    bounds the error of either estimate on such data and a negative one is a crossing that noise
    does not explain.

    Example:
        >>> gap_verdict(-0.0018, 0.0020)
        'within its s.e.: the bounds agree up to Monte Carlo noise'
        >>> gap_verdict(-0.0018, 0.0016)
        'within 2 s.e.: the bounds agree up to Monte Carlo noise'
    """
    if gap_se is None or not math.isfinite(gap_se) or not math.isfinite(gap):
        return "no s.e. to judge it by"
    if abs(gap) <= gap_se:
        return "within its s.e.: the bounds agree up to Monte Carlo noise"
    if abs(gap) <= 2 * gap_se:
        return "within 2 s.e.: the bounds agree up to Monte Carlo noise"
    if gap < 0:
        return (
            f"negative by {-gap / gap_se:.1f} s.e.: the bounds cross by more than Monte Carlo "
            "noise explains (more chains or steps; far beyond, check the model's simulation)"
        )
    return f"{gap / gap_se:.1f} s.e. above 0: it bounds the error of either estimate on such data"


def sandwich_text(s: Mapping[str, Any]) -> str:
    r"""One line for a :meth:`~pvae.BDMCResult.summary`: both bounds with their s.e., then the
    signed gap upper − lower with its s.e. and :func:`gap_verdict`.

    Example:
        >>> text = sandwich_text({"lower": -26.9451, "lower_se": 0.001, "upper": -26.9469,
        ...     "upper_se": 0.0012, "gap": -0.0018, "gap_se": 0.0016})
        >>> print(*text.split(", "), sep="\n")
        lower (forward AIS) -26.9451 ± 0.0010
        upper (reverse AIS) -26.9469 ± 0.0012 nats; gap upper − lower -0.0018 ± 0.0016
        within 2 s.e.: the bounds agree up to Monte Carlo noise
    """

    def se(v: float | None) -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"

    return (
        f"lower (forward AIS) {s['lower']:.4f} ± {se(s['lower_se'])}, upper (reverse AIS) "
        f"{s['upper']:.4f} ± {se(s['upper_se'])} nats; gap upper − lower {s['gap']:.4f} ± "
        f"{se(s['gap_se'])}, {gap_verdict(s['gap'], s['gap_se'])}"
    )
