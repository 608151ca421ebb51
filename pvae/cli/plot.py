"""``pvae plot``: one figure of a trained run (:mod:`pvae.plotting`), by name (``--what``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro

from pvae import diagnostics
from pvae._checks import positive_int
from pvae.cli.common import DEVICE_HELP, FIGURE_HELP, MAX_PIXELS, check_pixels, figure_file
from pvae.evaluation import log_px
from pvae.rundir import read_history
from pvae.runs import load_run

__all__ = ["NEEDS", "PLOTS", "add_parser", "available", "layered", "run"]

PLOTS = (
    "manifold",
    "samples",
    "recon",
    "curves",
    "kl",
    "khat",
    "scatter",
    "traversals",
    "interpolation",
)


_VAE = ("encode", "decode", "prior")  # a one-layer VAE's latent space
# What each figure needs of the run's model (callable methods) and whether it shows images.
NEEDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "manifold": (_VAE, True),
    "samples": (("sample",), True),
    "recon": (("reconstruct",), True),
    "curves": ((), False),
    "kl": (_VAE, False),
    "khat": ((), False),
    "scatter": (_VAE, False),
    "traversals": (_VAE, True),
    "interpolation": (_VAE, True),
}
# The largest figure drawn without --size (an image grid's cap, in inches): what --dpi alone is
# checked against.
LARGEST_FIGURE = (7.0, 9.0)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae plot``; it runs :func:`run`."""
    pl = subparsers.add_parser("plot", help="draw a figure of a trained run")
    pl.add_argument("run", help="the run folder (pvae train --out RUN)")
    pl.add_argument(
        "--what",
        required=True,
        choices=PLOTS,
        help="the figure (those the run's model cannot draw are refused, naming the others)",
    )
    pl.add_argument("--out", metavar="FILE", help=f"{FIGURE_HELP} (default RUN/<what>.png)")
    pl.add_argument("--k", type=int, default=1000, help="importance samples for --what khat")
    pl.add_argument(
        "--size",
        type=float,
        nargs=2,
        metavar=("W", "H"),
        help=f"figure size in inches (W × H × dpi² at most {MAX_PIXELS // 1_000_000} megapixels)",
    )
    pl.add_argument(
        "--dpi", type=int, default=None, help="resolution in dots per inch (default 150)"
    )
    pl.add_argument(
        "--index",
        type=int,
        nargs="+",
        metavar="I",
        help="test datapoint(s): one to traverse around, two to interpolate (default 0 [1])",
    )
    pl.add_argument(
        "--around",
        default="data",
        choices=("data", "prior"),
        help="traversals: around the datapoint's posterior mean or the prior's mean",
    )
    pl.add_argument(
        "--sd",
        default="prior",
        choices=("prior", "posterior", "aggregate"),
        help="traversals: offsets in units of the prior's, the datapoint's posterior or the "
        "aggregate posterior's standard deviation (prior: collapsed rows stay constant)",
    )
    pl.add_argument(
        "--dims", type=int, default=None, help="traversals: only the N largest-KL dimensions"
    )
    pl.add_argument("--steps", type=int, default=10, help="interpolation: points on the line")
    pl.add_argument("--device", default="auto", help=DEVICE_HELP)
    pl.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    pl.set_defaults(func=run)
    return pl


def layered(module: object) -> bool:
    """Whether ``module`` has several stochastic layers with a KL term each (``layer_kls``):
    ``--what kl`` then draws the KL per layer and per unit over the epochs."""
    return callable(getattr(module, "layer_kls", None))


def available(module: object, data_shape: Sequence[int] | None) -> tuple[str, ...]:
    """The figures of :data:`PLOTS` that ``module`` (on datapoints of ``data_shape``) can draw."""
    from pvae.plotting import is_image_shape

    images = is_image_shape(data_shape)
    return tuple(
        what
        for what, (methods, needs_images) in NEEDS.items()
        if (
            all(callable(getattr(module, m, None)) for m in methods)
            or (what == "kl" and layered(module))
        )
        and (images or not needs_images)
    )


def _check_args(args: argparse.Namespace) -> Path | None:
    """Every argument, before the run is loaded: the figure file, the pixel count, the counts."""
    from pvae.plotting import DPI

    out = figure_file("--out", args.out) if args.out else None
    size, dpi = _size(args.size), _dpi(args.dpi)
    if size is not None:
        check_pixels(size, DPI if dpi is None else dpi, default_size=False)
    elif dpi is not None:
        check_pixels(LARGEST_FIGURE, dpi, default_size=True)
    positive_int("--k", args.k)
    positive_int("--steps", args.steps)
    if args.dims is not None:
        positive_int("--dims", args.dims)
    for i in args.index or ():
        if i < 0:
            raise ValueError(f"--index must be a test-set position (0 or more), got {i}")
    return out


def run(args: argparse.Namespace) -> int:
    """``pvae plot``: draw ``--what`` into ``--out`` (default ``RUN/<what>.png``)."""
    from pvae import plotting

    out = _check_args(args)
    run_ = load_run(args.run, device=args.device)
    vae = run_.vae
    can = available(vae, run_.data.data_shape)
    if args.what not in can:
        methods, images = NEEDS[args.what]
        need = ", ".join(f"{m}()" for m in methods)
        need = f"a one-layer pvae.VAE's {need}" if methods == _VAE else f"a model with {need}"
        raise ValueError(
            f"--what {args.what} needs {need}"
            + (" on image data" if images else "")
            + f"; this run trains a {type(vae).__name__} on datapoints of shape "
            f"{tuple(run_.data.data_shape)} (available: --what {'|'.join(can)})"
        )
    x = run_.data.test.to(run_.device).observed()
    pyro.set_rng_seed(args.seed)
    out = out if out is not None else run_.path / f"{args.what}.png"
    style = {"figsize": _size(args.size), "dpi": _dpi(args.dpi), "path": out}
    if args.what == "manifold":
        plotting.latent_manifold(vae, x=x, **style)
    elif args.what == "samples":
        plotting.samples(vae, **style)
    elif args.what == "recon":
        plotting.reconstructions(vae, x, **style)
    elif args.what == "curves":
        plotting.training_curves(run_.checkpoint["history"], **style)
    elif args.what == "kl" and layered(vae):
        from pvae.plotting.kl import layer_kl_curves

        layer_kl_curves(read_history(run_.path), **style)
    elif args.what == "kl":
        plotting.kl_bars(diagnostics.kl_per_dimension(vae, x), **style)
    elif args.what == "khat":
        plotting.khat_plot(log_px(vae, x, k=args.k), **style)
    elif args.what == "traversals":
        (i,) = _indices(args.index, x.shape[0], 1)
        around = None if args.around == "prior" else x[i]
        plotting.traversals(vae, around, kl_x=x, sd=args.sd, dims=args.dims, **style)
    elif args.what == "interpolation":
        i, j = _indices(args.index, x.shape[0], 2)
        plotting.interpolation(vae, x[i], x[j], steps=args.steps, **style)
    else:
        plotting.latent_scatter(vae, x, run_.data.test.y, **style)
    print(f"wrote {out}")
    return 0


def _indices(given: Sequence[int] | None, n: int, count: int) -> list[int]:
    """``--index``: ``count`` test-set positions (default 0, 1, ...), each in ``[0, n)``."""
    idx = list(range(count)) if not given else list(given)
    if len(idx) != count:
        raise ValueError(f"--index takes {count} test-set position(s) here, got {len(idx)}")
    for i in idx:
        if not 0 <= i < n:
            raise ValueError(f"--index must be in [0, {n}) (the test split's size), got {i}")
    return idx


def _size(size: Sequence[float] | None) -> tuple[float, float] | None:
    """``--size W H``: a figure size in inches, both positive."""
    if size is None:
        return None
    w, h = size
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ValueError(f"--size takes a positive width and height in inches, got {w} {h}")
    return (w, h)


def _dpi(dpi: int | None) -> int | None:
    return None if dpi is None else positive_int("--dpi", dpi)
