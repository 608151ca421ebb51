"""``pvae ais``: annealed importance sampling of a trained run's log p(x), and a BDMC sandwich
on data simulated from the model (:func:`pvae.ais`, :func:`pvae.bdmc`)."""

from __future__ import annotations

import argparse
from typing import Any

from pvae._checks import positive_int
from pvae.cli.common import DEVICE_HELP, QUIET_HELP, Phases, is_main, sharded
from pvae.evaluation import ais, bdmc
from pvae.files import dumps
from pvae.runs import load_run

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae ais``; it runs :func:`run`."""
    a = subparsers.add_parser(
        "ais",
        help="annealed importance sampling of log p(x), and a BDMC sandwich on simulated data",
    )
    a.add_argument("run", help="the run folder (pvae train --out RUN)")
    a.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the split of the run's data to estimate on (default test)",
    )
    a.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="only the first N datapoints (at most the split's size)",
    )
    a.add_argument("--steps", type=int, default=500, help="annealing steps (intermediate targets)")
    a.add_argument("--chains", type=int, default=16, help="independent chains per datapoint")
    a.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC transition")
    a.add_argument(
        "--schedule",
        default="sigmoid",
        choices=("sigmoid", "linear"),
        help="spacing of the annealing temperatures (default sigmoid)",
    )
    a.add_argument(
        "--start",
        default="guide",
        choices=("guide", "prior"),
        help="the initial distribution f₀ of the chains: the guide q(z | x) or the prior p(z)",
    )
    a.add_argument(
        "--bdmc", type=int, default=0, metavar="N", help="also BDMC on N simulated datapoints"
    )
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    a.add_argument("--device", default="auto", help=DEVICE_HELP)
    a.add_argument("--seed", type=int, default=0, help="seed of the chains (default 0)")
    a.set_defaults(func=run)
    return a


def _check_args(args: argparse.Namespace) -> int:
    """Every argument, before the data are loaded and hours of AIS; the BDMC's datapoints."""
    for name in ("steps", "chains", "leapfrog"):
        positive_int(f"--{name}", getattr(args, name))
    if args.subset is not None:
        positive_int("--subset", args.subset)
    if args.bdmc < 0:
        raise ValueError(f"--bdmc must be a number of datapoints (0 or more), got {args.bdmc}")
    return args.bdmc


def run(args: argparse.Namespace) -> int:
    """``pvae ais``: anneal (under ``torchrun`` each rank its share) and print the estimates."""
    n = _check_args(args)
    run_ = load_run(args.run, device=args.device, quiet=args.quiet)
    x = run_.data.split(args.split).to(run_.device).observed()
    if args.subset is not None:
        if args.subset > x.shape[0]:
            raise ValueError(
                f"--subset {args.subset} is more than the {args.split} split's "
                f"{x.shape[0]} datapoints; give --subset {x.shape[0]} or fewer (or leave it out)"
            )
        x = x[: args.subset]
    settings = {
        "steps": args.steps,
        "chains": args.chains,
        "leapfrog": args.leapfrog,
        "schedule": args.schedule,
        "start": args.start,
        "seed": args.seed,
    }
    shard = sharded()
    phases = [("AIS", "steps"), ("BDMC forward AIS", "steps"), ("BDMC reverse AIS", "steps")]
    with Phases(phases, show=not shard and not args.quiet) as tick:
        est = ais(run_.vae, x, **settings, progress=tick, distributed=shard)
        sandwich = bdmc(run_.vae, n=n, **settings, progress=tick, distributed=shard) if n else None
    out = {"run": str(run_.path), "split": args.split, "ais": est.summary(), "bdmc": None}
    if sandwich is not None:
        out["bdmc"] = sandwich.summary()
    if not is_main():
        return 0
    if args.json:
        print(dumps(out))
        return 0
    print(f"{run_.path}  split={args.split}")
    print(f"  {est}")
    if sandwich is not None:
        print(f"  {sandwich} (data simulated from the model)")
    return 0
