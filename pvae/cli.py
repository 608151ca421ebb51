"""``pvae`` command line: ``train``, ``evaluate``, ``sample``.

Examples::

    pvae train                                   # default model on the embedded digits
    pvae train --config cfg.toml --set train.epochs=5 --set model.latent_dim=20 --out runs/a
    pvae train --resume runs/a --set train.epochs=10
    pvae evaluate runs/a --split test --json
    pvae sample runs/a -n 64 --out samples.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyro

from pvae.checkpoint import CheckpointError
from pvae.config import load_config
from pvae.datasets import DataUnavailableError
from pvae.evaluation.elbo import evaluate_elbo
from pvae.images import sample_grid
from pvae.runs import load_run, read_run_config, train_from_config
from pvae.train import TrainingDivergedError

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.config is not None:
            raise ValueError("--resume reads RUN/config.toml; do not pass --config with it")
        base = read_run_config(args.resume).to_dict()
        from pvae.config import Config, apply_overrides

        cfg = Config.from_dict(apply_overrides(base, args.set))
        out = Path(args.resume)
    else:
        cfg = load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if args.no_progress:
        cfg.train.progress = False
    result = train_from_config(cfg, out, resume=args.resume is not None)
    final = result.final
    summary = {"run": str(out), **final}
    print(json.dumps(summary) if args.json else f"run written to {out}: {summary}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run, device=args.device)
    split = run.data.split(args.split).to(run.vae.prior.loc.device)
    pyro.set_rng_seed(args.seed)
    est = evaluate_elbo(
        run.vae,
        split.observed(),
        num_samples=args.num_samples or run.config.eval.num_samples,
        batch_size=run.config.eval.batch_size,
    )
    out = {
        "run": str(run.path),
        "split": args.split,
        "epoch": run.checkpoint["epoch"],
        **est.summary(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{run.path}  split={args.split}  n={out['n']}  epoch={out['epoch']}")
        print(f"  ELBO          {out['elbo']:12.4f} ± {out['elbo_se']:.4f} nats")
        print(f"  reconstruction{out['recon']:12.4f}")
        print(f"  KL            {out['kl']:12.4f} ({'analytic' if out['analytic_kl'] else 'MC'})")
        print(f"  bits/dim      {out['bits_per_dim']:12.4f}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    run = load_run(args.run, device=args.device)
    pyro.set_rng_seed(args.seed)
    path = sample_grid(run.vae, args.out, n=args.n)
    if path is None:
        raise ValueError(f"samples of shape {run.vae.data_shape} are not images; nothing to draw")
    print(f"wrote {args.n} samples to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pvae", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE (defaults: digits, standard normal prior)")
    t.add_argument("--config", help="TOML config file")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=5 (repeatable)",
    )
    t.add_argument("--out", help="run folder (default runs/<timestamp>)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in RUN")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="ELBO of a trained run on a split")
    e.add_argument("run")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--num-samples", type=int, default=None, help="z samples per datapoint")
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_evaluate)

    s = sub.add_parser("sample", help="draw samples from a trained run's prior as a PNG grid")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pvae`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, CheckpointError, DataUnavailableError) as err:
        print(f"pvae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDivergedError as err:
        print(f"pvae {args.command}: training diverged: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"pvae {args.command}: interrupted", file=sys.stderr)
        return 130
