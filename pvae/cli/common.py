"""What the ``pvae`` commands share: progress lines by phase on stderr, the one-line error
report, the checks of a figure file (its folder, its format, its size in pixels) made before any
work, and whether this process prints (and shards its work) under ``torchrun``."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from pvae import distributed
from pvae._checks import figure_path
from pvae.training.progress import task_progress

__all__ = [
    "DEVICE_HELP",
    "FIGURE_HELP",
    "MAX_PIXELS",
    "QUIET_HELP",
    "Phases",
    "check_pixels",
    "fail",
    "figure_file",
    "is_main",
    "num",
    "sharded",
]

DEVICE_HELP = "where to compute: auto (CUDA when available), cpu, cuda or cuda:N (default auto)"
QUIET_HELP = "no progress lines and no notes on stderr"
FIGURE_HELP = (
    "a figure file, its format from the suffix: .png, .pdf, .svg or any other format matplotlib "
    "writes (.eps, .ps, .pgf, .jpg, .tif, .webp...); no suffix writes PNG"
)
"""What every figure option's help says the path accepts (checked by :func:`figure_file`)."""

MAX_PIXELS = 50_000_000
"""The most pixels a figure may have (width × height × dpi², in inches and dots per inch): a
larger one exhausts memory while matplotlib draws it."""
MAX_SIDE = 2**16 - 1  # matplotlib's Agg refuses a side of 2**16 pixels or more


def figure_file(name: str, value: str) -> Path:
    """The figure file an option names (``name``: ``"--out"``, ``"--plot"``), checked before the
    work that draws it: a file in a folder that exists (:func:`pvae._checks.figure_path`) with a
    suffix matplotlib can write (none: PNG)."""
    path = figure_path(name, value)
    fmt = path.suffix[1:].lower()
    if fmt:
        from matplotlib.backend_bases import FigureCanvasBase

        valid = FigureCanvasBase.get_supported_filetypes()
        if fmt not in valid:
            raise ValueError(
                f"{name} {value!r}: unknown figure format {fmt!r}; valid suffixes: "
                + ", ".join(f".{k}" for k in sorted(valid))
            )
    return path


def check_pixels(size: tuple[float, float], dpi: int, *, default_size: bool) -> None:
    """Refuse a figure of ``size`` inches at ``dpi`` with more than :data:`MAX_PIXELS` pixels
    (or a side of 2¹⁶ pixels or more), saying the largest ``--dpi`` (and ``--size``) allowed;
    ``default_size``: ``size`` is the largest a figure takes when ``--size`` is not given."""
    w, h = size
    pixels = w * h * dpi * dpi
    if pixels <= MAX_PIXELS and max(w, h) * dpi <= MAX_SIDE:
        return
    best = int(min(math.sqrt(MAX_PIXELS / (w * h)), MAX_SIDE / max(w, h)))
    what = (
        f"--dpi {dpi} with a figure of up to {w:g} × {h:g} inches (the default sizes)"
        if default_size
        else f"--size {w:g} {h:g} at --dpi {dpi}"
    )
    area = MAX_PIXELS / (dpi * dpi)
    fix = f"at most --dpi {best} for this size" if best >= 1 else "a smaller --size"
    if not default_size:
        fix += f", or width × height ≤ {area:.4g} square inches at {dpi} dpi"
    raise ValueError(
        f"{what} is {pixels / 1e6:,.0f} megapixels ({w * dpi:.0f} × {h * dpi:.0f}); a figure may "
        f"have at most {MAX_PIXELS // 1_000_000} megapixels and {MAX_SIDE} pixels a side: {fix}"
    )


def is_main() -> bool:
    """Whether this process prints and writes: always, but under ``torchrun`` only rank 0."""
    d = distributed.info()
    return d is None or d.is_main


def sharded() -> bool:
    """Whether this process is one of several (``torchrun``): each computes its share."""
    return distributed.info() is not None


def num(v: float | None) -> str:
    """A number to 4 decimals, or ``n/a`` (``None``, NaN or infinite: nothing to print)."""
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4f}"


class Phases:
    """Progress lines on stderr for a computation that reports ``progress(done, total)`` phase
    after phase, each counting from 0 (bounds: importance draws, then AIS, then BDMC): a new
    :func:`~pvae.training.progress.task_progress` per phase, named from ``phases`` (its last
    entry for any further phase). A context manager yielding the callback."""

    def __init__(self, phases: Sequence[tuple[str, str]], show: bool) -> None:
        self.phases, self.show = list(phases), show
        self.stack = contextlib.ExitStack()
        self.index, self.seen, self.total = -1, 0, -1
        self.advance: Callable[[int], None] = lambda n: None

    def __enter__(self) -> Callable[[int, int], None]:
        return self.tick

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def tick(self, done: int, total: int) -> None:
        if total != self.total or done < self.seen or self.seen == self.total:  # a new phase
            self.stack.close()
            self.index += 1
            name, unit = self.phases[min(self.index, len(self.phases) - 1)]
            self.advance = self.stack.enter_context(
                task_progress(name, total, show=self.show, unit=unit)
            )
            self.seen, self.total = 0, total
        self.advance(done - self.seen)
        self.seen = done


def fail(command: str, what: str, err: BaseException, status: int) -> int:
    """One line on stderr (with ``PVAE_DEBUG=1``, the traceback first); the exit status."""
    if os.environ.get("PVAE_DEBUG", "") not in ("", "0"):
        traceback.print_exception(err)
    print(f"pvae {command}: {what}: {err}", file=sys.stderr)
    return status
