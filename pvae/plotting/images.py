"""Image grids: data against reconstructions, samples from the prior, and the grid every
image figure of :mod:`pvae.plotting` is drawn on."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pvae.plotting.style import WIDTH, figure, finish, styled

__all__ = [
    "image_arrays",
    "image_grid",
    "is_image_shape",
    "reconstructions",
    "require",
    "samples",
    "tile_centres",
]

# Grid cells are this many inches; a grid figure is capped at this size.
_CELL = 0.6
_MAX_GRID = (WIDTH + 1.0, 9.0)


def require(module: Any, what: str, *methods: str) -> Any:
    """``module`` if it has each of ``methods`` (callable), else a TypeError naming the figure
    ``what`` and the first method it lacks."""
    for name in methods:
        if not callable(getattr(module, name, None)):
            raise TypeError(
                f"{what} needs a model with a callable {name}() (as pvae.VAE has), got "
                f"{type(module).__name__} without one"
            )
    return module


def is_image_shape(shape: Sequence[int] | None) -> bool:
    """Whether datapoints of this shape are images (1 or 3 channels) that grids can show."""
    return shape is not None and len(shape) == 3 and shape[0] in (1, 3)


def image_arrays(x: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` in [0, 1] to ``(N, H, W[, 3])`` arrays for imshow."""
    x = x.detach().float().clamp(0, 1).cpu()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def tile_centres(n: int, size: int) -> list[float]:
    """Pixel coordinates of the centres of ``n`` tiles of ``size`` pixels in a padded grid."""
    return [1 + i * (size + 1) + (size - 1) / 2 for i in range(n)]


def image_grid(
    images: Tensor,
    nrow: int,
    title: str,
    figsize: tuple[float, float] | None,
    dpi: int | None,
    *,
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    label_space: tuple[float, float] = (0.0, 0.0),
) -> tuple[Any, Any]:
    """Images in rows of ``nrow`` (1-pixel white padding), with optional tick labels at the
    centres of the columns and rows; returns ``(fig, ax)`` for the caller to finish."""
    import torchvision.utils as vutils

    image_arrays(images)  # shape check
    grid = vutils.make_grid(
        images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0
    )
    rows = math.ceil(len(images) / nrow)
    cols = min(nrow, len(images))
    default = (
        min(_MAX_GRID[0], _CELL * cols + 0.4 + label_space[0]),
        min(_MAX_GRID[1], _CELL * rows + 0.6 + label_space[1]),
    )
    fig, ax = figure(figsize, dpi, default)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    h, w = images.shape[-2:]
    ax.set_xticks(tile_centres(cols, w) if col_labels else [])
    ax.set_yticks(tile_centres(rows, h) if row_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels)
    if row_labels:
        ax.set_yticklabels(row_labels)
    ax.tick_params(length=0)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig, ax


@styled
@torch.no_grad()
def reconstructions(
    vae: Any,
    x: Tensor,
    n: int = 8,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    """Data (top row) against reconstructions (bottom): ``vae.reconstruct(x)``, E[x | z] at the
    point estimate of the guide (a :class:`~pvae.VAE` or :class:`~pvae.HierarchicalVAE`).

    Args:
        vae: The trained model (any object with a ``reconstruct`` method).
        x: Images ``(N, C, H, W)``; the first ``n`` are shown.
        n: Number of datapoints (columns).
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    require(vae, "reconstructions", "reconstruct")
    x = x[:n]
    recon = vae.reconstruct(x)
    fig, _ = image_grid(
        torch.cat([x, recon]),
        len(x),
        "data and reconstructions E[x | z = mean of q(z | x)]",
        figsize,
        dpi,
        row_labels=["data", "recon."],
        label_space=(0.5, 0.0),
    )
    return finish(fig, path)


@styled
@torch.no_grad()
def samples(
    vae: Any,
    n: int = 64,
    *,
    figsize: tuple[float, float] | None = None,
    dpi: int | None = None,
    path: str | Path | None = None,
) -> Any:
    """Decoder means E[x | z] for latents drawn from the prior (``vae.sample(n, mean=True)``),
    8 per row.

    Args:
        vae: The trained model (any object with a ``sample`` method).
        n: Number of samples.
        figsize: ``(width, height)`` in inches; ``None`` sizes the grid.
        dpi: Resolution; ``None`` is :data:`~pvae.plotting.style.DPI`.
        path: Where to save the figure (format by suffix).
    """
    require(vae, "samples", "sample")
    title = f"E[x | z] for {n} draws z ~ p(z)"
    fig, _ = image_grid(vae.sample(n, mean=True), 8, title, figsize, dpi)
    return finish(fig, path)
