"""``pvae sweep``: a hyperparameter search on Optuna over any config key, each trial a run
folder, bad trials pruned, the study shared by worker processes (:mod:`pvae.sweep`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pvae.sweep import (
    OBJECTIVE_HELP,
    SweepSettings,
    log_summary,
    open_study,
    prepare,
    run_worker,
    summarize,
    trial_line,
)

__all__ = ["add_parser", "run"]

WORKER_ENV = "PVAE_SWEEP_WORKER"  # set by --workers in the processes it starts


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae sweep``; it runs :func:`run`."""
    p = subparsers.add_parser(
        "sweep",
        help="hyperparameter search on Optuna: trials as run folders, pruning, shared studies",
        description=(
            "Search the config keys of a space file (TOML: each key, dotted as --set takes it, "
            "a table with type = float | int | categorical and low/high/log/step or choices) "
            "with Optuna. Each trial trains the base config with its values into "
            "DIR/trial-NNNN, reporting the validation objective every epoch; the median pruner "
            "stops trials below the median of earlier ones. The study lives in Optuna's storage "
            "(SQLite in DIR by default): start more workers, here (--workers) or anywhere else "
            "with the same --study-dir/--storage, and they share it until --trials trials have "
            "finished. A killed worker's trial is marked FAIL after the heartbeat's grace "
            "period. At the end: DIR/summary.csv, DIR/summary.md and DIR/best.toml (a full "
            "config for pvae train --config). Needs pip install pyro-vae-toolkit[sweep]."
        ),
    )
    p.add_argument("--config", metavar="FILE", help="the base config (default: the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base config (repeatable)")  # fmt: skip
    p.add_argument("--space", metavar="FILE", required=True, help="the search space (TOML)")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="trials the study should hold when done (complete or pruned)")  # fmt: skip
    p.add_argument("--study-dir", metavar="DIR", default=None,
                   help="the sweep folder: trial folders, summaries, the SQLite study "
                   "(default: sweeps/<space file name>)")  # fmt: skip
    p.add_argument("--storage", metavar="URL", default=None,
                   help="Optuna storage (default sqlite:///DIR/study.db; an RDB URL such as "
                   "postgresql://... shares the study between machines)")  # fmt: skip
    p.add_argument("--study-name", default=None, help="the study's name (default: DIR's name)")
    p.add_argument("--objective", default="val_elbo", help=f"{OBJECTIVE_HELP}; maximized")
    p.add_argument("--pruner", default="median", choices=("median", "none"),
                   help="stop trials below the median of the earlier ones")  # fmt: skip
    p.add_argument("--startup-trials", type=int, default=5, metavar="N",
                   help="trials that finish before any is pruned (default 5)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None,
                   help="the sampler's seed (worker i of --workers uses seed + i)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes to start here (default 1)")  # fmt: skip
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                   help="seconds between a running trial's heartbeats; a trial silent for "
                   "--grace seconds (default 2 heartbeats + 5) is marked FAIL")  # fmt: skip
    p.add_argument("--grace", type=int, default=None, metavar="SECONDS",
                   help="seconds without a heartbeat before a trial is marked FAIL")  # fmt: skip
    p.set_defaults(func=run)
    return p


def settings(args: argparse.Namespace) -> SweepSettings:
    """The :class:`~pvae.sweep.SweepSettings` the arguments ask for."""
    out = Path(args.study_dir) if args.study_dir else Path("sweeps") / Path(args.space).stem
    return SweepSettings(
        config=args.config,
        space=args.space,
        trials=args.trials,
        out=out,
        storage=args.storage,
        study=args.study_name,
        objective=args.objective,
        pruner=args.pruner,
        seed=args.seed,
        heartbeat=args.heartbeat,
        grace=args.grace,
        startup_trials=args.startup_trials,
        overrides=list(args.set),
    )


def run(args: argparse.Namespace) -> int:
    """``pvae sweep``: run the workers, then print and write the summary."""
    if args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {args.workers}")
    s = settings(args)
    space, _ = prepare(s)  # every check before any work (and Optuna's absence, named)
    # A worker started by --workers: its index from the parent (its threads: OMP_NUM_THREADS).
    index = os.environ.get(WORKER_ENV)
    worker = None if index is None else int(index)
    prefix = "" if worker is None else f"worker {worker}: "

    def say(trial: Any) -> None:
        print(prefix + trial_line(trial, s.objective), flush=True)

    status = 0
    if args.workers == 1:
        run_worker(s, worker=worker or 0, say=say)
    else:
        open_study(s, space)  # the storage's tables, before the workers race for them
        status = _spawn(args)
    if worker is None:  # a worker started by --workers leaves this to its parent
        print(summarize(s), end="")
        log_summary(s)
    return status


def _spawn(args: argparse.Namespace) -> int:
    """Start ``--workers`` processes of this command, one worker each, and wait for them."""
    threads = max(1, (os.cpu_count() or 1) // args.workers)  # torch reads OMP_NUM_THREADS
    base = [sys.executable, "-m", "pvae", "sweep", "--space", str(args.space)]
    base += ["--trials", str(args.trials), "--objective", args.objective]
    base += ["--pruner", args.pruner, "--heartbeat", str(args.heartbeat)]
    base += ["--startup-trials", str(args.startup_trials)]
    base += ["--study-dir", str(settings(args).out)]
    for flag, value in (
        ("--config", args.config),
        ("--storage", args.storage),
        ("--study-name", args.study_name),
        ("--grace", args.grace),
    ):
        if value is not None:
            base += [flag, str(value)]
    for item in args.set:
        base += ["--set", item]
    procs = []
    for i in range(args.workers):
        seed = [] if args.seed is None else ["--seed", str(args.seed)]
        env = {**os.environ, WORKER_ENV: str(i), "OMP_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen([*base, *seed], env=env))
    codes = [p.wait() for p in procs]
    bad = [f"worker {i} (exit status {c})" for i, c in enumerate(codes) if c != 0]
    if bad:
        print(f"pvae sweep: {', '.join(bad)} stopped with an error", file=sys.stderr)
        return 1
    return 0
