"""The bound ladder of :func:`pvae.bounds`: ELBO ≤ IWAE_k ≤ log p(x) against k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pvae.plotting.style import finish

__all__ = ["bound_ladder"]


def bound_ladder(ladder: Any, path: str | Path | None = None) -> Any:
    """Bound vs k on a log axis with ±2 se bars (what :meth:`pvae.BoundLadder.plot` draws):
    IWAE_k per k, the analytic-KL ELBO and AIS (with its ±2 se band) as lines where computed,
    and the BDMC gap as a note.

    Args:
        ladder: A :class:`~pvae.BoundLadder` (``iwae``, ``elbo_analytic``, ``ais``, ``bdmc``).
        path: Where to save the figure (format by suffix).

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ks = list(ladder.iwae)
    means = [ladder.iwae[k]["mean"] for k in ks]
    errs = [2 * ladder.iwae[k]["se"] for k in ks]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3, label="IWAE$_k$")
    if ladder.elbo_analytic is not None:
        ax.axhline(ladder.elbo_analytic["mean"], color="gray", ls="--", label="ELBO (analytic KL)")
    if ladder.ais is not None:
        a, se = ladder.ais, ladder.ais["log_px_se"] or 0.0
        ax.axhline(a["log_px"], color="C2", ls="-.", label=f"AIS (T={a['steps']})")
        ax.axhspan(a["log_px"] - 2 * se, a["log_px"] + 2 * se, color="C2", alpha=0.2)
    if ladder.bdmc is not None:
        b = ladder.bdmc
        ax.text(
            0.98,
            0.03,
            f"BDMC gap on simulated data (upper − lower): {b['gap']:.3f} ± {b['gap_se']:.3f} nats",
            transform=ax.transAxes,
            ha="right",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("k (importance samples)")
    ax.set_ylabel("bound (nats per datapoint)")
    ax.set_title("ELBO ≤ IWAE$_k$ ≤ log p(x)")
    ax.legend()
    return finish(fig, path)
