r"""KL per layer and per unit of a hierarchical VAE over training: ``pvae plot --what kl`` for a
model with several stochastic layers.

A layer whose KL term falls to ~0 has collapsed (its posterior equals its prior, the decoder
ignores it); units whose KL stays near 0 while others grow are the inactive units of Burda et al.
(2015). The curves come from the run's history (:func:`pvae.diagnostics.layer_columns`, recorded
at each epoch's validation), so drawing them costs no pass over the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pvae.diagnostics import layer_history
from pvae.plotting.style import WIDTH, figure, finish, styled

__all__ = ["layer_kl_curves"]


@styled
def layer_kl_curves(
    history: Sequence[Mapping[str, Any]],
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    r"""KL term of each layer over the epochs and, per layer, the KL of each unit over the
    epochs with the units sorted by their last-epoch KL (largest first).

    Left: :math:`\mathrm{KL}_l` in nats per datapoint (the minibatch mean of
    :math:`\log q(z_l\mid\cdot) - \log p(z_l\mid\cdot)` on the first validation chunk, one draw),
    one line per layer, with the number of active units at the last epoch in the legend where
    recorded. Right, one panel per layer: the per-unit KL as an image, epochs across and units
    down, on a log colour scale (units at or below 10⁻³ nats share the darkest colour).

    Args:
        history: A run's per-epoch records (``FitResult.history``, ``metrics.json``) with the
            ``val_kl_<site>`` (and ``val_unit_kl_<site>_<u>``) columns.
        figsize: ``(width, height)`` in inches; ``None``: (6.0, 2.8).
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).

    Raises:
        ValueError: the history has no KL per layer (a one-layer model, or a run recorded
            before these columns existed).
    """
    epochs, layers, units = layer_history(history)
    if not layers:
        raise ValueError(
            "the history has no KL per layer (val_kl_<site> columns): they are recorded for a "
            "model with several stochastic layers (layer_kls), at each epoch's validation"
        )
    panels = 1 + len(units)
    fig, axes = figure(figsize, dpi, (WIDTH, 2.8), ncols=panels, squeeze=False)
    ax = axes[0, 0]
    last = history[-1]
    for i, (site, kl) in enumerate(layers.items()):
        active = last.get(f"val_active_{site}")
        label = site if active is None else f"{site} ({int(active)} active)"
        ax.plot(
            epochs, kl, marker="o" if len(epochs) < 30 else None, ms=3, color=f"C{i}", label=label
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("KL term (nats)")
    ax.set_title("KL per layer")
    ax.legend(loc="best")
    for j, (site, per_epoch) in enumerate(units.items(), start=1):
        _unit_panel(axes[0, j], fig, site, epochs, per_epoch)
    return finish(fig, path)


def _unit_panel(
    ax: Any, fig: Any, site: str, epochs: list[float], per_epoch: list[list[float]]
) -> None:
    """One layer's per-unit KL over epochs, units sorted by their last finite value."""
    from matplotlib.colors import LogNorm

    grid = np.asarray(per_epoch, dtype=float).T  # (units, epochs)
    final = next((col for col in grid.T[::-1] if np.isfinite(col).all()), grid[:, -1])
    order = np.argsort(-np.nan_to_num(final, nan=-math.inf), kind="stable")
    shown = np.clip(grid[order], 1e-3, None)
    hi = float(np.nanmax(shown)) if np.isfinite(shown).any() else 1.0
    extent = (epochs[0] - 0.5, epochs[-1] + 0.5, len(order) - 0.5, -0.5)
    im = ax.imshow(
        shown,
        aspect="auto",
        interpolation="nearest",
        norm=LogNorm(vmin=1e-3, vmax=max(hi, 1e-2)),
        extent=extent,
        cmap="viridis",
    )
    from matplotlib.ticker import MaxNLocator

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    ax.set_xlabel("epoch")
    ax.set_ylabel("unit, by last KL")
    ax.set_title(f"KL per unit of {site}")
    fig.colorbar(im, ax=ax, label="nats")
