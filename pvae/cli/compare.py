"""``pvae compare``: runs grouped by configuration (seeds pooled), paired per-datapoint
differences and overlaid validation curves (:func:`pvae.compare.compare`)."""

from __future__ import annotations

import argparse
from typing import Any

from pvae.cli.common import FIGURE_HELP, figure_file
from pvae.compare import compare
from pvae.files import dumps

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae compare`` on the ``pvae`` parser's subparsers; it runs :func:`run`."""
    c = subparsers.add_parser(
        "compare",
        help="compare runs across seeds: pooled metrics, paired differences, curves",
        description=(
            "Group runs by configuration (by meaning: defaults filled in, one spelling; seeds "
            "pooled) and report final metrics as mean ± s.e. over seeds, and paired "
            "per-datapoint differences of log p(x) on the same datapoints. Every run needs its "
            "stored evaluation: pvae evaluate RUN. Two runs of one configuration with the same "
            "seed are refused as repeats."
        ),
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or folders of runs")
    c.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="whose stored evaluation to compare (default: test; pvae evaluate --split)",
    )
    c.add_argument(
        "--reference",
        default=None,
        metavar="GROUP",
        help="group label or run folder the differences are from (default: the best group)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument(
        "--plot",
        metavar="FIGURE",
        help=f"also save the overlaid validation curves: {FIGURE_HELP}",
    )
    c.set_defaults(func=run)
    return c


def run(args: argparse.Namespace) -> int:
    """``pvae compare``: print the table (or JSON) and save the plot; returns the exit status."""
    plot = figure_file("--plot", args.plot) if args.plot else None  # before the work
    result = compare(args.runs, split=args.split, reference=args.reference)
    if plot is not None:
        result.plot(plot)
    if args.json:
        print(dumps(result.to_dict()))
    else:
        print(result.table())
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
