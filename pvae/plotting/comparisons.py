"""Validation curves of groups of runs overlaid (what :meth:`pvae.compare.Comparison.plot` and
``pvae compare --plot`` draw)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvae.plotting.style import WIDTH, figure, finish, styled

__all__ = ["comparison"]


@styled
def comparison(
    comparison: Any,
    path: str | Path | None = None,
    *,
    skip: int | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
) -> Any:
    """Validation curves overlaid: per group, the validation ELBO each epoch (solid) and the
    validation log p(x) curve points (dashed, markers) where recorded, each the mean over
    the group's seeds with a band of ± one s.e. over seeds.

    Args:
        comparison: What :func:`pvae.compare.compare` returns.
        path: Where to save the figure (format by suffix).
        skip: Epochs left out of the y-limits, whose bounds are far below the rest
            (``None``: 10% of the epochs, at least 1, when there are 3 or more; 0 keeps all).
        figsize: ``(width, height)`` in inches (``None``: a text width).
        dpi: Resolution (``None``: :data:`~pvae.plotting.style.DPI`).

    Returns:
        The matplotlib figure.
    """
    if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int) or skip < 0):
        raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
    groups = comparison.groups
    fig, ax = figure(figsize, dpi, (WIDTH, 3.4 + 0.17 * (len(groups) + 2)))
    drawn: set[str] = set()
    late: list[float] = []
    for i, g in enumerate(groups):
        histories = g.histories
        for key, style in (("val_elbo", "-"), ("val_log_px", "--")):
            curve = _curve(histories, key)
            if curve is not None:
                drawn.add(key)
                late += _draw_curve(ax, curve, key, style, f"C{i % 10}", skip)
    if late:
        pad = 0.05 * (max(late) - min(late)) or 0.5
        ax.set_ylim(min(late) - pad, max(late) + pad)
    _legend(ax, groups, drawn)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("validation curves: mean over seeds, band ± s.e. over seeds")
    return finish(fig, path)


def _curve(
    histories: Sequence[Sequence[Mapping[str, float]]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Epochs every run's history recorded ``key`` at, the mean over runs (seeds) and its s.e.
    (``None`` for one run); ``None`` if no common epoch."""
    per_run = [{h["epoch"]: h[key] for h in hist if h.get(key) is not None} for hist in histories]
    epochs = sorted(set.intersection(*(set(p) for p in per_run)))
    if not epochs:
        return None
    values = np.array([[p[e] for e in epochs] for p in per_run], dtype=np.float64)
    n = len(histories)
    se = values.std(0, ddof=1) / math.sqrt(n) if n > 1 else None
    return np.array(epochs), values.mean(0), se


def _draw_curve(
    ax: Any,
    curve: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    key: str,
    style: str,
    color: str,
    skip: int | None,
) -> list[float]:
    """Draw one group's mean curve (and its ± s.e. band); returns the lowest and highest value
    after the first ``skip`` epochs, which set the y-limits."""
    epochs, mean, se = curve
    marker = "o" if key == "val_log_px" else None
    ax.plot(epochs, mean, ls=style, color=color, marker=marker)
    if se is not None:
        ax.fill_between(epochs, mean - se, mean + se, color=color, alpha=0.2, lw=0)
    n = len(epochs)
    first = (max(1, math.ceil(0.1 * n)) if n >= 3 else 0) if skip is None else skip
    tail = slice(min(first, n - 1), None)
    lo = mean[tail] - (0 if se is None else se[tail])
    hi = mean[tail] + (0 if se is None else se[tail])
    return [float(lo.min()), float(hi.max())]


def _legend(ax: Any, groups: Sequence[Any], drawn: set[str]) -> None:
    """One legend entry per group (colour) and per quantity drawn (line style), not per pair,
    below the axes: group labels are long and the curves fill the plot."""
    from matplotlib.lines import Line2D

    seeds = [f"{len(g.seeds)} seed{'s' if len(g.seeds) > 1 else ''}" for g in groups]
    handles = [
        Line2D([], [], color=f"C{i % 10}", lw=4, label=f"{g.label} ({n})")
        for i, (g, n) in enumerate(zip(groups, seeds, strict=True))
    ]
    if "val_elbo" in drawn:
        handles.append(Line2D([], [], color="0.3", ls="-", label="val. ELBO"))
    if "val_log_px" in drawn:
        handles.append(
            Line2D([], [], color="0.3", ls="--", marker="o", label="val. log p(x) (IWAE)")
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=1)
