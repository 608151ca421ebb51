"""``pvae evaluate``: the ELBO, log p(x) and diagnostics of a trained run
(:func:`pvae.runs.evaluate_run`), printed as a report or one JSON object."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from pvae import diagnostics
from pvae._checks import positive_float, positive_int
from pvae.cli.common import DEVICE_HELP, QUIET_HELP, Phases, is_main, num, sharded
from pvae.evaluation.log_px import format_khat
from pvae.files import dumps
from pvae.runs import RunEvaluation, evaluate_run

__all__ = ["add_parser", "print_report", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae evaluate``; it runs :func:`run`."""
    e = subparsers.add_parser("evaluate", help="ELBO and log p(x) of a trained run on a split")
    e.add_argument("run", help="the run folder (pvae train --out RUN)")
    e.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="the split of the run's data to score (default test)",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--data",
        metavar="FILE",
        default=None,
        help="score this .npy/.npz instead of a split of the run's data",
    )
    e.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="only the first N datapoints of the split (stored as the split's evaluation; "
        "pvae compare pairs runs evaluated on the same N)",
    )
    e.add_argument("--num-samples", type=int, default=None, help="z samples per datapoint")
    e.add_argument(
        "--k",
        type=int,
        default=None,
        help="importance samples for log p(x) (default eval.k; 0 skips it)",
    )
    e.add_argument(
        "--max-k",
        type=int,
        default=None,
        help="adaptive log p(x): double the draws of datapoints with k̂ ≥ 0.7 (or s.e. above "
        "--target-se) up to this many (not with --k 0)",
    )
    e.add_argument(
        "--target-se",
        type=float,
        default=None,
        help="adaptive log p(x): also draw until each datapoint's s.e. is at most this (nats; "
        "not with --k 0)",
    )
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws (default 0)")
    e.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    e.add_argument(
        "--no-store",
        action="store_true",
        help="do not write RUN/evaluation/SPLIT.npz (the per-datapoint values pvae compare reads)",
    )
    e.set_defaults(func=run)
    return e


def run(args: argparse.Namespace) -> int:
    """``pvae evaluate``: evaluate (and store) the run, then print the report."""
    _check_args(args)
    # On stderr: minutes of silence read as a hang (one process: a sharded run's total is its
    # own share).
    with Phases([("log p(x)", "draws")], show=not sharded() and not args.quiet) as tick:
        result = evaluate_run(
            args.run,
            args.split,
            k=args.k,
            num_samples=args.num_samples,
            seed=args.seed,
            device=args.device,
            data=args.data,
            subset=args.subset,
            max_k=args.max_k,
            target_se=args.target_se,
            store=not args.no_store,
            progress=tick,
            on_store_error=_warn_not_stored,
            quiet=args.quiet,
        )
    if not is_main():
        return 0
    if args.json:
        print(dumps(result.report))
    else:
        print_report(result)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Every argument, before the run is loaded: counts positive, no adaptive mode without
    log p(x) (``--max-k`` against the run's ``eval.k``: :func:`~pvae.runs.evaluate_run`, before
    any draw)."""
    if args.k is not None and args.k < 0:
        raise ValueError(f"--k must be a positive integer (or 0 to skip log p(x)), got {args.k}")
    if args.num_samples is not None:
        positive_int("--num-samples", args.num_samples)
    if args.subset is not None:
        positive_int("--subset", args.subset)
    if args.max_k is not None:
        positive_int("--max-k", args.max_k)
    if args.target_se is not None:
        positive_float("--target-se", args.target_se)
    adaptive = [
        f"{name} {value}"
        for name, value in (("--max-k", args.max_k), ("--target-se", args.target_se))
        if value is not None
    ]
    if args.k == 0 and adaptive:
        verb = "asks" if len(adaptive) == 1 else "ask"
        raise ValueError(
            f"{' and '.join(adaptive)} {verb} for an adaptive log p(x), which --k 0 skips: "
            "give --k N (N ≥ 1) or leave out the adaptive options"
        )


def _warn_not_stored(err: OSError) -> None:
    print(f"pvae evaluate: warning: per-datapoint values not stored: {err}", file=sys.stderr)


def print_report(result: RunEvaluation) -> None:
    """The report of :func:`~pvae.runs.evaluate_run` as text: the ELBO, the latent
    diagnostics, log p(x) and where the per-datapoint values went."""
    out = result.report
    print(f"{out['run']}  split={out['split']}  n={out['n']}  epoch={out['epoch']}")
    mc = out["elbo_mc_se"]
    draws = (
        f"Monte Carlo s.e. {mc:.4f}, {result.meta['num_samples']} draws"
        if math.isfinite(mc)
        else "1 draw per datapoint"
    )
    print(
        f"  ELBO          {out['elbo']:12.4f} nats ± {num(out['elbo_se'])} s.e. over datapoints "
        f"({draws})"
    )
    print(f"  reconstruction{out['recon']:12.4f}")
    print(f"  KL            {out['kl']:12.4f} ({'analytic' if out['analytic_kl'] else 'MC'})")
    print(f"  bits/dim      {out['bits_per_dim']:12.4f}")
    for line in diagnostics.report_lines(out["diagnostics"]):
        print(f"  {line}")
    if result.log_px_estimate is not None:
        _print_log_px(out, result)
    if "accuracy" in out:
        acc = out["accuracy"]
        print(f"  accuracy      {acc:12.4f} (argmax q(y | x) against the split's labels)")
    if out.get("stored"):
        print(f"  per-datapoint values in {out['stored']} (read by pvae compare)")


def _print_log_px(out: dict[str, Any], result: RunEvaluation) -> None:
    khat = format_khat(out["log_px_khat_max"])
    sd = out["log_px_sd"]
    over = f"; ± {num(None if sd is None else sd / math.sqrt(out['n']))} s.e. over datapoints"
    draws = result.log_px_estimate.draws  # "lo..hi" in the adaptive mode: the ESS's own k
    print(
        f"  log p(x)      {out['log_px']:12.4f} nats ± {num(out['log_px_se'])} Monte Carlo "
        f"s.e.{over}\n                (k={draws}, mean ESS {out['log_px_ess_mean']:.0f}, "
        f"max k̂ {khat})"
    )
    if result.log_px_estimate.adaptive is not None:
        print(f"  {result.log_px_estimate.adaptive}")
    if out.get("log_px_warning"):
        print(f"  WARNING: {out['log_px_warning']}")
