"""pvae command line: train, evaluate, bounds, ais, compare, plot, sample and sweep.

Examples::

    pvae train                                   # default model on the embedded digits
    pvae train --config cfg.toml --set train.epochs=5 --set model.latent_dim=20 --out runs/a
    pvae train --config cfg.toml --seeds 0 1 2 --out runs/b   # runs/b/seed-0, seed-1, seed-2
    pvae train --resume runs/a --set train.epochs=10
    pvae evaluate runs/a --split test --json          # ELBO and log p(x) (k = eval.k)
    pvae evaluate runs/a --data other.npz             # score an external .npy/.npz
    pvae bounds runs/a --k 1 5 50 500 5000 --json     # ELBO <= IWAE_k <= log p(x) ladder
    pvae bounds runs/a --ais-steps 500 --bdmc 100     # ... with AIS and a BDMC sandwich
    pvae ais runs/a --steps 1000 --chains 16 --subset 500 --bdmc 100
    pvae compare runs/b/seed-* runs/c/seed-* --plot curves.png
    pvae sweep --config base.toml --space space.toml --trials 20 --study-dir sweeps/a
    pvae sample runs/a -n 64                          # runs/a/samples-64-seed0.png
    pvae sample runs/a -n 10000 --npy samples.npy     # the samples as an array file
    pvae plot runs/a --what traversals   # also manifold, samples, recon, curves, kl, khat,
                                         # scatter, interpolation
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pvae import distributed
from pvae.checkpoint import CheckpointError
from pvae.cli import ais, bounds, compare, evaluate, plot, sample, sweep, train
from pvae.cli.common import fail
from pvae.cli.plot import PLOTS
from pvae.datasets import DataUnavailableError
from pvae.training import TrainingDivergedError

__all__ = ["COMMANDS", "PLOTS", "build_parser", "main"]

# One module per command, each with add_parser(subparsers) and run(args) -> exit status; in the
# order ``pvae --help`` lists them. A new command is a module here and a line in this tuple.
COMMANDS = (train, evaluate, bounds, ais, plot, sample, compare, sweep)
# Commands that join the torchrun process group (DDP training, sharded evaluation).
DISTRIBUTED = ("train", "evaluate", "bounds", "ais")


def build_parser() -> argparse.ArgumentParser:
    """The ``pvae`` parser: a subcommand per module of :data:`COMMANDS`."""
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="pvae",
        description=doc.split("\n")[0],
        epilog=doc[doc.index("Examples") :].replace("::", ":") if "Examples" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pvae`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    clean = False
    try:
        # Under torchrun (WORLD_SIZE > 1) join the process group: DDP training, sharded
        # evaluation; a plain run is untouched.
        if args.command in DISTRIBUTED:
            distributed.init()
        # model.class names a user's module: import it from here, as `python -m pvae` would.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        status = args.func(args)
        clean = True
        return status
    except (
        ValueError,
        TypeError,
        CheckpointError,
        DataUnavailableError,
        ModuleNotFoundError,  # an optional extra (tensorboard) asked for but not installed
    ) as err:
        return fail(args.command, "error", err, 2)
    except OSError as err:  # a file that could not be read or written (named in the message)
        return fail(args.command, "error", err, 1)
    except TrainingDivergedError as err:
        return fail(args.command, "training diverged", err, 3)
    except KeyboardInterrupt:
        print(f"pvae {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(clean)
