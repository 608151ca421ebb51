"""The one style every pvae figure shares: sizes, fonts, figure creation and saving.

Matplotlib is imported lazily (:func:`pyplot`), so importing :mod:`pvae.plotting` costs
nothing until a figure is drawn. Every figure function is wrapped in :func:`styled`, creates
its axes with :func:`figure` and ends with :func:`finish`.
"""

from __future__ import annotations

import functools
import io
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pvae.files import atomic_write_bytes

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["DPI", "STYLE", "WIDTH", "figure", "finish", "interactive", "pyplot", "styled"]

DPI = 150
"""Default resolution (dots per inch) of figures and of saved raster files."""

WIDTH = 6.0
"""Default width of a figure in inches (a text width; image grids may be narrower)."""

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
}
"""Matplotlib rc settings every figure of :mod:`pvae.plotting` is drawn under."""


def pyplot() -> Any:
    """``matplotlib.pyplot``, switched to the Agg backend unless a file or notebook backend is
    in use (figures are saved, not shown, outside IPython)."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg") and not interactive():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if interactive():
        # styled() calls this inside an rc_context, and leaving it resets matplotlib's
        # interactive flag: re-selecting the notebook's own backend keeps figures showing.
        plt.switch_backend(matplotlib.get_backend())
    return plt


def interactive() -> bool:
    """Whether we run inside IPython/Jupyter (keep its inline backend and its figures)."""
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def styled(fn: Callable[P, R]) -> Callable[P, R]:
    """Draw everything ``fn`` creates under :data:`STYLE` (fonts are fixed at creation)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with pyplot().rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def figure(
    figsize: tuple[float, float] | None,
    dpi: int | None,
    default: tuple[float, float],
    **kwargs: Any,
) -> tuple[Any, Any]:
    """``plt.subplots`` with the checked ``figsize`` (or ``default``) and ``dpi`` (or
    :data:`DPI`); ``kwargs`` go to ``plt.subplots``."""
    if figsize is None:
        figsize = default
    elif (
        not isinstance(figsize, Sequence)
        or len(figsize) != 2
        or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v > 0 for v in figsize)
    ):
        raise ValueError(f"figsize must be (width, height) in inches, both > 0, got {figsize!r}")
    if dpi is None:
        dpi = DPI
    elif isinstance(dpi, bool) or not isinstance(dpi, numbers.Integral) or dpi <= 0:
        raise ValueError(f"dpi must be a positive integer, got {dpi!r}")
    size = (float(figsize[0]), float(figsize[1]))
    return pyplot().subplots(figsize=size, dpi=int(dpi), **kwargs)


def finish(fig: Any, path: str | Path | None) -> Any:
    """Lay out ``fig`` and, given ``path``, save it (format from the suffix, PNG without one)
    through :func:`pvae.files.atomic_write_bytes`; returns ``fig``."""
    with warnings.catch_warnings():  # a layout that cannot be tightened is still a figure
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    if path is not None:  # rendered in memory, written through pvae's one write path
        path = Path(path)
        fmt = path.suffix[1:].lower() or "png"
        valid = fig.canvas.get_supported_filetypes()
        if fmt not in valid:
            raise ValueError(
                f"path {str(path)!r}: unknown figure format {fmt!r}; valid suffixes: "
                + ", ".join(f".{k}" for k in sorted(valid))
            )
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=fig.dpi)
        atomic_write_bytes(path, buf.getvalue())
        if not interactive():  # saved to disk: release pyplot's reference (no figure pile-up)
            pyplot().close(fig)
    return fig
