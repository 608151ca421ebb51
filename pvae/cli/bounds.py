"""``pvae bounds``: the ELBO ≤ IWAE_k ≤ log p(x) ladder of a trained run, with AIS and a BDMC
sandwich on request (:func:`pvae.bounds`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pyro

from pvae._checks import positive_int
from pvae.cli.common import (
    DEVICE_HELP,
    FIGURE_HELP,
    QUIET_HELP,
    Phases,
    figure_file,
    is_main,
    sharded,
)
from pvae.evaluation import bounds
from pvae.files import dumps
from pvae.runs import load_run

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae bounds``; it runs :func:`run`."""
    b = subparsers.add_parser("bounds", help="the ELBO ≤ IWAE_k ≤ log p(x) ladder of a trained run")
    b.add_argument("run", help="the run folder (pvae train --out RUN)")
    b.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=[1, 5, 50, 500, 5000],
        help="the rungs: importance samples of each IWAE_k bound (default 1 5 50 500 5000)",
    )
    b.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the split of the run's data to bound (default test)",
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--plot", metavar="FILE", help=f"also save the ladder plot: {FIGURE_HELP}")
    b.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    b.add_argument("--device", default="auto", help=DEVICE_HELP)
    b.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    b.add_argument(
        "--ais-steps", type=int, default=None, help="add AIS with this many annealing steps"
    )
    b.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint")
    b.add_argument(
        "--bdmc",
        type=int,
        default=0,
        metavar="N",
        help="with --ais-steps: BDMC sandwich on N datapoints simulated from the model",
    )
    b.set_defaults(func=run)
    return b


def _check_args(args: argparse.Namespace) -> Path | None:
    """Every argument, before the data are loaded and the ladder computed; the plot's path."""
    plot = figure_file("--plot", args.plot) if args.plot else None
    for k in args.k:
        positive_int("--k: ks entries", k)  # as pvae.bounds(ks=...) says it
    if args.ais_steps is not None:
        positive_int("--ais-steps", args.ais_steps)
    positive_int("--ais-chains", args.ais_chains)
    if args.bdmc < 0:
        raise ValueError(f"--bdmc must be a number of datapoints (0 or more), got {args.bdmc}")
    if args.bdmc and args.ais_steps is None:
        raise ValueError(
            f"--bdmc {args.bdmc} runs BDMC with the AIS settings: give --ais-steps N as well"
        )
    return plot


def run(args: argparse.Namespace) -> int:
    """``pvae bounds``: compute the ladder, print it (or JSON), save the plot."""
    plot = _check_args(args)  # before minutes of work
    run_ = load_run(args.run, device=args.device, quiet=args.quiet)
    x = run_.data.split(args.split).to(run_.device).observed()
    pyro.set_rng_seed(args.seed)
    phases = [
        (f"IWAE draws (k={max(args.k)})", "draws"),
        ("AIS", "steps"),
        ("BDMC forward AIS", "steps"),
        ("BDMC reverse AIS", "steps"),
    ]
    with Phases(phases, show=not sharded() and not args.quiet) as tick:
        ladder = bounds(
            run_.vae,
            x,
            ks=args.k,
            seed=args.seed,
            distributed=sharded(),
            ais_steps=args.ais_steps,
            ais_chains=args.ais_chains,
            bdmc_n=args.bdmc,
            progress=tick,
        )
    if not is_main():
        return 0
    if plot is not None:
        ladder.plot(plot)
    if args.json:
        print(dumps({"run": str(run_.path), "split": args.split, **ladder.to_dict()}))
    else:
        print(f"{run_.path}  split={args.split}")
        print(ladder.table())
    return 0
