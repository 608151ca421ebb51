"""``pvae sample``: a PNG grid of draws from a trained run's prior, decoded."""

from __future__ import annotations

import argparse
from typing import Any

import pyro

from pvae._checks import figure_path, positive_int
from pvae.runs import load_run

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae sample``; it runs :func:`run`."""
    s = subparsers.add_parser(
        "sample", help="draw samples from a trained run's prior as a PNG grid"
    )
    s.add_argument("run")
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """``pvae sample``: draw ``-n`` samples and write the grid."""
    n = positive_int("-n", args.n)
    out = figure_path("--out", args.out)
    run_ = load_run(args.run, device=args.device, data=False)  # the prior needs no data
    if not callable(getattr(run_.vae, "sample", None)):
        raise ValueError(f"{type(run_.vae).__name__} has no sample(n) method: nothing to draw")
    pyro.set_rng_seed(args.seed)
    from pvae import plotting

    if not plotting.is_image_shape(run_.vae.data_shape):
        raise ValueError(f"samples of shape {run_.vae.data_shape} are not images; nothing to draw")
    plotting.samples(run_.vae, n=n, path=out)
    print(f"wrote {n} samples to {out}")
    return 0
