"""``pvae train``: train from a config into a run folder, one per seed with ``--seeds``, or
continue a run with ``--resume``."""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvae.cli.common import is_main
from pvae.config import Config, load_config
from pvae.files import dumps
from pvae.rundir import CONFIG, seed_dir
from pvae.runs import read_run_config, train_from_config
from pvae.training.progress import summary_table

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae train``; it runs :func:`run`."""
    t = subparsers.add_parser("train", help="train a VAE (defaults: digits, standard normal prior)")
    t.add_argument("--config", help="TOML config file")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=5 (repeatable)",
    )
    t.add_argument("--out", help="run folder (default runs/<timestamp>)")
    t.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in RUN (with --set: more epochs, another lr, [eval], [log]...; "
        "a change of the model, the data or the objective is refused unless --allow-change)",
    )
    t.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="KEY",
        help="with --resume: allow changing KEY (e.g. train.objective, or a table such as "
        "model.likelihood) although it changes what the run trains; recorded in the run "
        "(repeatable)",
    )
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    t.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="one run per seed into OUT/seed-<SEED> (train.seed set to each)",
    )
    t.add_argument(
        "--no-progress", action="store_true", help="no progress bar (per-epoch lines stay)"
    )
    t.add_argument("--quiet", action="store_true", help="no progress, per-epoch lines or summary")
    t.set_defaults(func=run)
    return t


def run(args: argparse.Namespace) -> int:
    """``pvae train``: train (each seed in turn) and print each run's summary."""
    if args.allow_change and args.resume is None:
        raise ValueError("--allow-change applies to --resume RUN")
    cfg, out = _config_and_folder(args)
    if args.no_progress:
        cfg.train.progress = False
    if args.quiet:
        cfg.train.progress = False
        cfg.log.quiet = True
    if not args.seeds:
        result = train_from_config(
            cfg, out, resume=args.resume is not None, allow_changes=args.allow_change
        )
        _report_run(args, out, result.final)
        return 0
    seeds = check_seeds(args.seeds)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {str(out)!r} must be a new or empty folder for --seeds")
    talk = is_main() and not args.json and not args.quiet
    for seed in seeds:  # one ordinary run per seed: resumable and comparable one by one
        cfg.train.seed = seed
        folder = seed_dir(out, seed)
        if talk:
            print(f"seed {seed}: training into {folder}", flush=True)
        result = train_from_config(copy.deepcopy(cfg), folder)
        _report_run(args, folder, result.final)
    if talk:
        print(f"{len(seeds)} runs in {out}; compare them with: pvae compare {out}/seed-*")
    return 0


def _config_and_folder(args: argparse.Namespace) -> tuple[Config, Path]:
    """The configuration to train and the run folder: ``RUN``'s own with ``--resume``."""
    if args.resume is not None:
        if args.config is not None:
            raise ValueError("--resume reads RUN/config.toml; do not pass --config with it")
        if args.seeds:
            raise ValueError("--resume continues one run; do not pass --seeds with it")
        run = Path(args.resume)
        if not args.set:
            return read_run_config(run), run
        read_run_config(run)  # RUN is a run folder whose config loads, or an error naming it
        name = f"{CONFIG} of run {str(run)!r}"  # the merged whole's errors name the run
        return load_config(run / CONFIG, args.set, name=name), run
    if args.config is not None and Path(args.config).is_dir():
        raise ValueError(f"--config must be a TOML file, got the folder {args.config!r}")
    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return cfg, out


def check_seeds(values: Sequence[int]) -> list[int]:
    """``--seeds``: distinct non-negative integers."""
    for v in values:
        if v < 0:
            raise ValueError(f"--seeds must be non-negative integers, got {v}")
    if len(set(values)) != len(values):
        raise ValueError(f"--seeds must be distinct, got {list(values)}")
    return list(values)


def _report_run(args: argparse.Namespace, out: Path, final: dict) -> None:
    """The run's closing summary: one JSON line with ``--json``, else a small table."""
    if not is_main():
        return
    if args.json:
        print(dumps({"run": str(out), **final}))
    elif not args.quiet:
        print(summary_table({"run": str(out), **final}))
