"""Curves and bars: the bounds of a training run per epoch, the KL per latent dimension, the
PSIS k̂ per datapoint, and the bound ladder of :func:`pvae.bounds`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from pvae.evaluation.log_px import KHAT_LIMIT, LogPxEstimate, unreliable
from pvae.plotting.style import WIDTH, figure, finish, styled

__all__ = ["khat_plot", "kl_bars", "training_curves"]


def _robust_limits(values: Sequence[float], pad: float = 0.08) -> tuple[float, float] | None:
    """y-limits spanning the finite ``values`` with a margin (``None`` if there are none)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-12:
        return lo - 1.0, hi + 1.0
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


@styled
def training_curves(
    history: Sequence[Mapping[str, float]],
    *,
    skip: int | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Per-epoch bounds of a training run (``FitResult.history``), in nats per datapoint.

    Top: the training objective and the validation ELBO each epoch, and validation
    :math:`\mathrm{IWAE}_k` where recorded (markers; :math:`\mathrm{IWAE}_k \uparrow \log p(x)`
    as k grows, Burda et al. 2015). Bottom, when IWAE points exist: the gaps
    :math:`\mathrm{IWAE}_k - \mathrm{ELBO}`, which separate the k that overlap on the top panel's
    scale. The reference ELBO is ``val_iwae_1`` when recorded (the same validation subset as the
    other k), else ``val_elbo`` (the whole validation split; the axis label says which).

    The y-limits ignore the first epochs, whose bounds are far below the rest: they span the
    values from the epoch after the first ``skip`` (default: 10% of the epochs, at least 1,
    when there are 3 or more) on; earlier points are clipped.

    Args:
        history: One mapping per epoch with ``epoch`` and any of ``train_elbo``, ``val_elbo``,
            ``val_iwae_<k>``.
        skip: Epochs left out of the y-limits (``None``: see above; 0 keeps all).
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 4.6) with the gap panel,
            (6.0, 3.4) without.
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    if not history:
        raise ValueError("history is empty: no epochs to plot")
    epochs = [h["epoch"] for h in history]
    ks = sorted({int(k.rsplit("_", 1)[1]) for h in history for k in h if k.startswith("val_iwae_")})
    n = len(epochs)
    if skip is None:
        skip = max(1, math.ceil(0.1 * n)) if n >= 3 else 0
    elif isinstance(skip, bool) or not isinstance(skip, numbers.Integral) or skip < 0:
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    late = epochs[min(skip, n - 1)]  # first epoch that sets the limits
    gap_ref = "val_iwae_1" if 1 in ks else "val_elbo"
    two = any(k != 1 for k in ks) and any(gap_ref in h for h in history)
    fig, axes = figure(
        figsize,
        dpi,
        (WIDTH, 4.6 if two else 3.4),
        nrows=2 if two else 1,
        sharex=True,
        gridspec_kw={"height_ratios": [3, 2]} if two else None,
    )
    ax = axes[0] if two else axes
    _bounds_panel(ax, history, ks, late)
    if two:
        _gaps_panel(axes[1], history, ks, gap_ref, late)
    (axes[-1] if two else ax).set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return finish(fig, path)


# Marker and line style of the k-th recorded IWAE_k, cycled.
_IWAE_STYLES = [("o", "--"), ("s", ":"), ("^", "-."), ("D", (0, (5, 1))), ("v", "--")]


def _bounds_panel(
    ax: Any, history: Sequence[Mapping[str, float]], ks: list[int], late: Any
) -> None:
    """The top panel of :func:`training_curves`: each recorded bound against the epoch, with
    y-limits set by the epochs from ``late`` on."""
    n = len(history)
    top: list[float] = []
    entries = [("train_elbo", "train objective (ELBO)", "C0", None, "-")]
    entries.append(("val_elbo", "val. ELBO", "C1", None, "-"))
    for j, k in enumerate(ks):
        m, ls = _IWAE_STYLES[j % len(_IWAE_STYLES)]
        entries.append((f"val_iwae_{k}", f"val. IWAE$_{{{k}}}$", f"C{2 + j}", m, ls))
    for key, label, colour, marker, ls in entries:
        pts = [(h["epoch"], h[key]) for h in history if key in h]
        if not pts:
            continue
        e, v = [p[0] for p in pts], [p[1] for p in pts]
        if marker is None and len(e) < n:
            marker = "o"
        ax.plot(e, v, color=colour, marker=marker, ls=ls, label=label)
        top += [val for ep, val in zip(e, v, strict=True) if ep >= late]
    lim = _robust_limits(top)
    if lim is not None:
        ax.set_ylim(*lim)
    ax.set_ylabel("bound (nats per datapoint)")
    ax.set_title("training curves: ELBO and IWAE$_k$ (→ log p(x) as k grows)")
    ax.legend(ncol=2, loc="best")


def _gaps_panel(
    gx: Any, history: Sequence[Mapping[str, float]], ks: list[int], gap_ref: str, late: Any
) -> None:
    """The bottom panel of :func:`training_curves`: IWAE_k minus the reference ELBO ``gap_ref``
    for each k > 1, with y-limits set by the epochs from ``late`` on (and 0)."""
    gaps: list[float] = []
    for j, k in enumerate(ks):
        if k == 1:
            continue
        m, ls = _IWAE_STYLES[j % len(_IWAE_STYLES)]
        pts = [
            (h["epoch"], h[f"val_iwae_{k}"] - h[gap_ref])
            for h in history
            if f"val_iwae_{k}" in h and gap_ref in h
        ]
        if pts:
            e, v = zip(*pts, strict=True)
            gx.plot(e, v, color=f"C{2 + j}", marker=m, ls=ls, label=f"k = {k}")
            gaps += [val for ep, val in pts if ep >= late]
    glim = _robust_limits([*gaps, 0.0])
    if glim is not None:
        gx.set_ylim(*glim)
    ref = "val. IWAE$_1$" if gap_ref == "val_iwae_1" else "val. ELBO"
    gx.set_ylabel(f"IWAE$_k$ − {ref} (nats)")
    gx.legend(ncol=len([k for k in ks if k != 1]), loc="best")


@styled
def kl_bars(
    kl: Tensor,
    threshold: float | None = 0.1,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""Mean KL per latent dimension, :math:`\mathbb E_x\,\mathrm{KL}(q(z_d\mid x)\,\|\,p(z_d))`
    in nats (from :func:`pvae.diagnostics.kl_per_dimension`), with an activity threshold.

    The bars sum to the KL term of the ELBO; a dimension below ``threshold`` transmits almost no
    information about x and is drawn as collapsed (red). 0.1 nats is a rough line between
    dimensions the decoder uses and leftovers of training. It is stricter than the active-unit
    count of :func:`pvae.diagnostics.active_units` (:math:`\mathrm{Var}_x\,\mathbb E_q[z_d] >
    0.01`, which a dimension passes with a KL near 0.005 nats when :math:`\sigma_d \approx 1`).

    Args:
        kl: ``(D,)`` mean KL per dimension, nats.
        threshold: Nats per dimension below which a dimension is drawn as collapsed, with a
            dashed line; ``None``: no line, one colour.
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 3.0).
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    kl = kl.detach().double().cpu().reshape(-1)
    d = len(kl)
    fig, ax = figure(figsize, dpi, (WIDTH, 3.0))
    if threshold is None:
        colours = ["C0"] * d
        title = f"KL per latent dimension (total {float(kl.sum()):.2f} nats)"
    else:
        threshold = float(threshold)
        colours = ["C0" if v > threshold else "C3" for v in kl.tolist()]
        above = int((kl > threshold).sum())
        title = (
            f"KL per latent dimension: {above} of {d} above {threshold:g} nats "
            f"(total {float(kl.sum()):.2f} nats)"
        )
    ax.bar(range(d), kl.numpy(), color=colours, width=0.8)
    if threshold is not None:
        ax.axhline(threshold, color="0.3", ls="--", lw=1, label=f"{threshold:g} nats")
        ax.legend(loc="best")
    ax.set_xlim(-0.7, d - 0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(d, 16)))
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel(r"$\mathbb{E}_x$ KL(q($z_d$|x) ‖ p($z_d$)) (nats)")
    ax.set_title(title)
    return finish(fig, path)


@styled
def khat_plot(
    est: LogPxEstimate,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""PSIS Pareto :math:`\hat k` of the importance weights per datapoint (Vehtari et al.
    2024), with lines at 0.5 and 0.7.

    Below 0.5 the weights' variance is finite and the estimate of :math:`\log p(x)` converges
    quickly; between 0.5 and 0.7 slowly; above 0.7 the Monte Carlo standard error cannot be
    trusted. Points are coloured by band. Drawn with matplotlib alone (no arviz plotting).

    Args:
        est: A :class:`~pvae.LogPxEstimate` with ``khat`` (k ≥ 10).
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 3.0).
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    kh = est.khat.detach().double().cpu().numpy()
    # -inf: equal weights, the best case (drawn at the bottom); NaN: not computed; +inf: too
    # few draws in the tail to fit (drawn at the top, counted unreliable).
    idx = np.flatnonzero(~np.isnan(kh))
    fig, ax = figure(figsize, dpi, (WIDTH, 3.0))
    finite = kh[idx][np.isfinite(kh[idx])]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0
    v = np.clip(kh[idx], lo, hi)
    raw = kh[idx]
    bad = unreliable(raw)  # the one definition (log_px's warning and summary): +inf counts
    n_inf = int(np.isposinf(raw).sum())
    bands = [
        (raw <= 0.5, "C0", "k̂ ≤ 0.5"),
        ((raw > 0.5) & ~bad, "C1", f"0.5 < k̂ < {KHAT_LIMIT}"),
        (bad, "C3", f"k̂ ≥ {KHAT_LIMIT}"),
    ]
    for mask, colour, label in bands:
        if mask.any():
            n = int(mask.sum())
            ax.scatter(idx[mask], v[mask], s=8, marker="+", color=colour, label=f"{label} ({n})")
    ax.axhline(0.5, ls="--", lw=1, color="C1", label="0.5: weight variance infinite above")
    ax.axhline(
        KHAT_LIMIT, ls="-.", lw=1, color="C3", label=f"{KHAT_LIMIT}: s.e. unreliable from here up"
    )
    if not idx.size:
        ax.text(0.5, 0.5, "k̂ not computed (needs k ≥ 10)", transform=ax.transAxes, ha="center")
    if n_inf:
        ax.text(
            0.99,
            0.99,
            f"{n_inf} k̂ = inf (tail fit failed: unreliable), drawn at the top",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
        )
    ax.set_ylim(lo - 0.05, hi + 0.05)
    ax.set_xlim(-0.5, max(len(kh), 1) - 0.5)
    ax.set_xlabel("datapoint index")
    ax.set_ylabel("Pareto k̂")
    ax.set_title(f"importance-weight quality per datapoint (k = {est.draws} samples)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return finish(fig, path)
