"""``pvae compare``: runs grouped by configuration (seeds pooled), paired per-datapoint
differences and overlaid validation curves (:func:`pvae.compare.compare`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pvae.cli.common import DEVICE_HELP, FIGURE_HELP, figure_file
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
            "per-datapoint differences of log p(x) on the same datapoints. A run without a "
            "stored evaluation of the split (or with one of an earlier epoch) is first evaluated "
            "and stored as pvae evaluate RUN --split SPLIT would: its own [eval] settings, seed "
            "0; stderr names each such run. Two runs of one configuration with the same seed are "
            "refused as repeats."
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
    c.add_argument(
        "--no-evaluate",
        action="store_true",
        help="refuse runs without a current stored evaluation instead of evaluating them (an "
        "evaluation with eval.k = 5000 can take minutes per run; this keeps compare read-only)",
    )
    c.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (for those evaluations)")
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
    result = compare(
        args.runs,
        split=args.split,
        reference=args.reference,
        evaluate=not args.no_evaluate,
        device=args.device,
        on_evaluate=_announce,
    )
    if plot is not None:
        result.plot(plot)
    if args.json:
        print(dumps(result.to_dict()))
    else:
        print(result.table())
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def _announce(run: Path, reason: str) -> None:
    """The notice on stderr before a run is evaluated (the table on stdout stays clean)."""
    print(
        f"pvae compare: evaluating {run} ({reason}) with its [eval] settings, as pvae evaluate "
        "does; the values are stored in the run folder (--no-evaluate refuses instead)",
        file=sys.stderr,
        flush=True,
    )
