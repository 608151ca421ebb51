"""``pvae plot``: one figure of a trained run (:mod:`pvae.plotting`), by name (``--what``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import pyro

from pvae import diagnostics
from pvae._checks import figure_path, positive_int
from pvae.evaluation import log_px
from pvae.runs import load_run

__all__ = ["PLOTS", "add_parser", "run"]

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


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae plot``; it runs :func:`run`."""
    pl = subparsers.add_parser("plot", help="draw a figure of a trained run")
    pl.add_argument("run")
    pl.add_argument("--what", required=True, choices=PLOTS)
    pl.add_argument("--out", help="PNG or PDF path (default RUN/<what>.png)")
    pl.add_argument("--k", type=int, default=1000, help="importance samples for --what khat")
    pl.add_argument("--size", type=float, nargs=2, metavar=("W", "H"), help="figure size in inches")
    pl.add_argument("--dpi", type=int, default=None, help="resolution (default 150)")
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
    pl.add_argument("--device", default="auto")
    pl.add_argument("--seed", type=int, default=0)
    pl.set_defaults(func=run)
    return pl


def _needs_vae(module: object, what: str) -> None:
    """The picture grids read a one-layer VAE's encoder, decoder and prior."""
    if not all(callable(getattr(module, name, None)) for name in ("encode", "decode", "prior")):
        raise ValueError(
            f"{what} draws a one-layer pvae.VAE's latent space; this run trains a "
            f"{type(module).__name__} (available: pvae plot --what curves|khat|samples|recon)"
        )


def run(args: argparse.Namespace) -> int:
    """``pvae plot``: draw ``--what`` into ``--out`` (default ``RUN/<what>.png``)."""
    from pvae import plotting

    run_ = load_run(args.run, device=args.device)
    vae = run_.vae
    if args.what not in ("curves", "khat", "samples", "recon"):
        _needs_vae(vae, f"--what {args.what}")
    x = run_.data.test.to(run_.device).observed()
    pyro.set_rng_seed(args.seed)
    out = figure_path("--out", args.out) if args.out else run_.path / f"{args.what}.png"
    style = {"figsize": _size(args.size), "dpi": _dpi(args.dpi), "path": out}
    if args.what == "manifold":
        plotting.latent_manifold(vae, x=x, **style)
    elif args.what == "samples":
        plotting.samples(vae, **style)
    elif args.what == "recon":
        plotting.reconstructions(vae, x, **style)
    elif args.what == "curves":
        plotting.training_curves(run_.checkpoint["history"], **style)
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
