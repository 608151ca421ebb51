"""``pvae`` command line: ``train``, ``evaluate``, ``sample``.

Examples::

    pvae train                                   # default model on the embedded digits
    pvae train --config cfg.toml --set train.epochs=5 --set model.latent_dim=20 --out runs/a
    pvae train --resume runs/a --set train.epochs=10
    pvae evaluate runs/a --split test --json          # ELBO and log p(x) (k = eval.k)
    pvae bounds runs/a --k 1 5 50 500 5000 --json     # ELBO ≤ IWAE_k ≤ log p(x) ladder
    pvae bounds runs/a --ais-steps 500 --bdmc 100     # … with AIS and a BDMC sandwich
    pvae ais runs/a --steps 1000 --chains 16 --subset 500 --bdmc 100
    pvae sample runs/a -n 64 --out samples.png
    pvae plot runs/a --what manifold|samples|recon|curves|kl|khat|scatter
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

import pyro
import torch

from pvae import diagnostics, distributed
from pvae._checks import positive_int
from pvae.checkpoint import CheckpointError
from pvae.config import load_config
from pvae.datasets import DataUnavailableError
from pvae.evaluation import ais, bdmc, bounds, evaluate_elbo, log_px
from pvae.model import VAE
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
        if args.config is not None and Path(args.config).is_dir():
            raise ValueError(f"--config must be a TOML file, got the folder {args.config!r}")
        cfg = load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if args.no_progress:
        cfg.train.progress = False
    result = train_from_config(cfg, out, resume=args.resume is not None)
    if _is_main():
        summary = {"run": str(out), **result.final}
        print(_json(summary) if args.json else f"run written to {out}: {summary}")
    return 0


def _device(module: torch.nn.Module) -> torch.device:
    """Where a trained module lives (any module: a user's need not have ``.device``)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def _is_main() -> bool:
    d = distributed.info()
    return d is None or d.is_main


def _json(obj: dict) -> str:
    """Strict JSON: non-finite floats, at any depth, as null (JSON has no NaN or infinity)."""

    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj))


def _evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run, device=args.device)
    x = run.data.split(args.split).to(_device(run.vae)).observed()
    k = args.k if args.k is not None else run.config.eval.k
    if k < 0:
        raise ValueError(f"--k must be a positive integer (or 0 to skip log p(x)), got {k}")
    pyro.set_rng_seed(args.seed)
    est = evaluate_elbo(
        run.vae,
        x,
        num_samples=run.config.eval.num_samples
        if args.num_samples is None
        else positive_int("--num-samples", args.num_samples),
        batch_size=run.config.eval.batch_size,
    )
    out = {
        "run": str(run.path),
        "split": args.split,
        "epoch": run.checkpoint["epoch"],
        **est.summary(),
    }
    if k > 0:
        est = log_px(
            run.vae,
            x,
            k=k,
            seed=args.seed,
            distributed=distributed.info() is not None,
            max_k=args.max_k,
            target_se=args.target_se,
        )
        lp = est.summary()
        out.update(
            {k if k.startswith("log_px") else f"log_px_{k}": v for k, v in lp.items() if k != "n"}
        )
        out["weights"] = diagnostics.weight_diagnostics(est, worst=5)
    out["diagnostics"] = _diagnostics(run.vae, x)
    if not _is_main():
        return 0
    if args.json:
        print(_json(out))
        return 0
    print(f"{run.path}  split={args.split}  n={out['n']}  epoch={out['epoch']}")
    print(f"  ELBO          {out['elbo']:12.4f} nats (± {out['elbo_se']:.4f} s.e. over datapoints)")
    print(f"  reconstruction{out['recon']:12.4f}")
    print(f"  KL            {out['kl']:12.4f} ({'analytic' if out['analytic_kl'] else 'MC'})")
    print(f"  bits/dim      {out['bits_per_dim']:12.4f}")
    dg = out["diagnostics"]
    if "active_units_by_site" in dg:  # not a one-layer VAE: per latent site only
        units = ", ".join(
            f"{k} {a} of {dg['units_by_site'][k]}" for k, a in dg["active_units_by_site"].items()
        )
        print(f"  active units  {units}")
    else:
        print(
            f"  active units  {dg['active_units']:>5} of {dg['latent_dim']}"
            f"   I(x; z) {dg['mutual_information']:.3f} ± {dg['mutual_information_se']:.3f} nats"
        )
        print(
            f"  prior hole    KL(q(z) || p(z)) {dg['aggregate_kl']:.3f}; "
            f"{100 * dg['prior_hole_fraction']:.1f}% of prior draws fall in holes (≈1% = none)"
        )
    if "warning" in dg:
        print(f"  warning: {dg['warning']}")
    if k > 0:
        khat = "n/a" if out["log_px_khat_max"] is None else f"{out['log_px_khat_max']:.2f}"
        print(
            f"  log p(x)      {out['log_px']:12.4f} nats (± {out['log_px_se']:.4f} Monte Carlo "
            f"s.e.; k={k}, mean ESS {out['log_px_ess_mean']:.0f}, max k̂ {khat})"
        )
        if est.adaptive is not None:
            print(f"  {est.adaptive}")
        if out.get("log_px_warning"):
            print(f"  WARNING: {out['log_px_warning']}")
    return 0


def _diagnostics(vae: VAE, x: torch.Tensor, subset: int = 1000) -> dict:
    """Active units, KL per dimension, I(x; z) and the prior hole (the last two on a subset:
    they cost O(N²)). For another model/guide pair (a hierarchical VAE, a user's module):
    active units per latent site only, since the rest needs a VAE's single encoder and prior."""
    if not isinstance(vae, VAE):
        sites = diagnostics.active_units_by_site(vae, x)
        return {
            "active_units_by_site": {k: a.count for k, a in sites.items()},
            "units_by_site": {k: a.variance.numel() for k, a in sites.items()},
        }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        au = diagnostics.active_units(vae, x)
    out: dict = {"active_units": au.count, "latent_dim": vae.latent_dim}
    if caught:
        out["warning"] = str(caught[0].message)
    with contextlib.suppress(ValueError):  # not factorized: no per-dimension split
        out["kl_per_dim"] = [round(float(v), 4) for v in diagnostics.kl_per_dimension(vae, x)]
    xs = x[:subset]
    mi, mi_se = diagnostics.mutual_information(vae, xs)
    hole = diagnostics.prior_hole(vae, xs)
    out.update(
        mutual_information=mi,
        mutual_information_se=mi_se,
        aggregate_kl=hole.kl,
        aggregate_kl_se=hole.kl_se,
        prior_hole_fraction=hole.hole_fraction,
    )
    return out


def _bounds(args: argparse.Namespace) -> int:
    run = load_run(args.run, device=args.device)
    x = run.data.split(args.split).to(_device(run.vae)).observed()
    pyro.set_rng_seed(args.seed)
    ladder = bounds(
        run.vae,
        x,
        ks=args.k,
        seed=args.seed,
        distributed=distributed.info() is not None,
        ais_steps=args.ais_steps,
        ais_chains=args.ais_chains,
        bdmc_n=args.bdmc,
    )
    if not _is_main():
        return 0
    if args.plot:
        ladder.plot(args.plot)
    if args.json:
        print(_json({"run": str(run.path), "split": args.split, **ladder.to_dict()}))
    else:
        print(f"{run.path}  split={args.split}")
        print(ladder.table())
    return 0


def _ais(args: argparse.Namespace) -> int:
    run = load_run(args.run, device=args.device)
    x = run.data.split(args.split).to(_device(run.vae)).observed()
    if args.subset is not None:
        x = x[: positive_int("--subset", args.subset)]
    settings = {
        "steps": args.steps,
        "chains": args.chains,
        "leapfrog": args.leapfrog,
        "schedule": args.schedule,
        "start": args.start,
        "seed": args.seed,
    }
    est = ais(run.vae, x, **settings)
    out = {"run": str(run.path), "split": args.split, "ais": est.summary(), "bdmc": None}
    sandwich = bdmc(run.vae, n=positive_int("--bdmc", args.bdmc), **settings) if args.bdmc else None
    if sandwich is not None:
        out["bdmc"] = sandwich.summary()
    if not _is_main():
        return 0
    if args.json:
        print(_json(out))
        return 0
    print(f"{run.path}  split={args.split}")
    print(f"  {est}")
    if sandwich is not None:
        print(f"  {sandwich} (data simulated from the model)")
    return 0


PLOTS = ("manifold", "samples", "recon", "curves", "kl", "khat", "scatter")


def _needs_vae(module: object, what: str) -> None:
    """The picture grids read a one-layer VAE's encoder, decoder and prior."""
    if not isinstance(module, VAE):
        raise ValueError(
            f"{what} draws a one-layer pvae.VAE's latent space; this run trains a "
            f"{type(module).__name__} (available: pvae plot --what curves|khat|samples|recon)"
        )


def _plot(args: argparse.Namespace) -> int:
    from pvae import plotting

    run = load_run(args.run, device=args.device)
    if args.what not in ("curves", "khat", "samples", "recon"):
        _needs_vae(run.vae, f"--what {args.what}")
    x = run.data.test.to(_device(run.vae)).observed()
    pyro.set_rng_seed(args.seed)
    out = _figure_path(args.out) if args.out else run.path / f"{args.what}.png"
    if args.what == "manifold":
        plotting.latent_manifold(run.vae, x=x, path=out)
    elif args.what == "samples":
        plotting.samples(run.vae, path=out)
    elif args.what == "recon":
        plotting.reconstructions(run.vae, x, path=out)
    elif args.what == "curves":
        plotting.training_curves(run.checkpoint["history"], path=out)
    elif args.what == "kl":
        plotting.kl_bars(diagnostics.kl_per_dimension(run.vae, x), path=out)
    elif args.what == "khat":
        plotting.khat_plot(log_px(run.vae, x, k=args.k), path=out)
    else:
        plotting.latent_scatter(run.vae, x, run.data.test.y, path=out)
    print(f"wrote {out}")
    return 0


def _figure_path(out: str) -> Path:
    """A figure's ``--out``: a file (PNG or PDF by its suffix) in a folder that exists."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out must be a file path such as {out}/x.png, got the folder {out!r}")
    if not path.parent.is_dir():
        raise ValueError(f"--out {out!r}: folder {str(path.parent)!r} does not exist")
    return path


def _sample(args: argparse.Namespace) -> int:
    n = positive_int("-n", args.n)
    out = _figure_path(args.out)
    run = load_run(args.run, device=args.device, data=False)  # the prior needs no data
    if not callable(getattr(run.vae, "sample", None)):
        raise ValueError(f"{type(run.vae).__name__} has no sample(n) method: nothing to draw")
    pyro.set_rng_seed(args.seed)
    from pvae import plotting

    if not plotting.is_image_shape(run.vae.data_shape):
        raise ValueError(f"samples of shape {run.vae.data_shape} are not images; nothing to draw")
    plotting.samples(run.vae, n=n, path=out)
    print(f"wrote {n} samples to {out}")
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

    e = sub.add_parser("evaluate", help="ELBO and log p(x) of a trained run on a split")
    e.add_argument("run")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--json", action="store_true", help="print one JSON object")
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
        "--target-se) up to this many",
    )
    e.add_argument(
        "--target-se",
        type=float,
        default=None,
        help="adaptive log p(x): also draw until each datapoint's s.e. is at most this (nats)",
    )
    e.add_argument("--device", default="auto")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_evaluate)

    b = sub.add_parser("bounds", help="the ELBO ≤ IWAE_k ≤ log p(x) ladder of a trained run")
    b.add_argument("run")
    b.add_argument("--k", type=int, nargs="+", default=[1, 5, 50, 500, 5000])
    b.add_argument("--split", default="test", choices=("train", "val", "test"))
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--plot", metavar="PNG", help="also save the ladder plot")
    b.add_argument("--device", default="auto")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--ais-steps", type=int, default=None, help="add AIS with this many steps")
    b.add_argument("--ais-chains", type=int, default=16, help="AIS chains per datapoint")
    b.add_argument(
        "--bdmc",
        type=int,
        default=0,
        metavar="N",
        help="with --ais-steps: BDMC sandwich on N datapoints simulated from the model",
    )
    b.set_defaults(func=_bounds)

    a = sub.add_parser(
        "ais",
        help="annealed importance sampling of log p(x), and a BDMC sandwich on simulated data",
    )
    a.add_argument("run")
    a.add_argument("--split", default="test", choices=("train", "val", "test"))
    a.add_argument("--subset", type=int, default=None, help="only the first N datapoints")
    a.add_argument("--steps", type=int, default=500, help="annealing steps (intermediate targets)")
    a.add_argument("--chains", type=int, default=16, help="independent chains per datapoint")
    a.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC transition")
    a.add_argument("--schedule", default="sigmoid", choices=("sigmoid", "linear"))
    a.add_argument("--start", default="guide", choices=("guide", "prior"))
    a.add_argument(
        "--bdmc", type=int, default=0, metavar="N", help="also BDMC on N simulated datapoints"
    )
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--device", default="auto")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_ais)

    pl = sub.add_parser("plot", help="draw a figure of a trained run")
    pl.add_argument("run")
    pl.add_argument("--what", required=True, choices=PLOTS)
    pl.add_argument("--out", help="PNG or PDF path (default RUN/<what>.png)")
    pl.add_argument("--k", type=int, default=1000, help="importance samples for --what khat")
    pl.add_argument("--device", default="auto")
    pl.add_argument("--seed", type=int, default=0)
    pl.set_defaults(func=_plot)

    s = sub.add_parser("sample", help="draw samples from a trained run's prior as a PNG grid")
    s.add_argument("run")
    s.add_argument("-n", type=int, default=64, help="number of samples")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_sample)
    return p


def _fail(command: str, what: str, err: BaseException, status: int) -> int:
    """One line on stderr (with ``PVAE_DEBUG=1``, the traceback first); the exit status."""
    if os.environ.get("PVAE_DEBUG", "") not in ("", "0"):
        traceback.print_exception(err)
    print(f"pvae {command}: {what}: {err}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pvae`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    clean = False
    try:
        # Under torchrun (WORLD_SIZE > 1) join the process group: DDP training, sharded
        # evaluation; a plain run is untouched.
        if args.command in ("train", "evaluate", "bounds", "ais"):
            distributed.init()
        # model.class names a user's module: import it from here, as `python -m pvae` would.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        status = args.func(args)
        clean = True
        return status
    except (ValueError, TypeError, CheckpointError, DataUnavailableError) as err:
        return _fail(args.command, "error", err, 2)
    except OSError as err:  # a file that could not be read or written (named in the message)
        return _fail(args.command, "error", err, 1)
    except TrainingDivergedError as err:
        return _fail(args.command, "training diverged", err, 3)
    except KeyboardInterrupt:
        print(f"pvae {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown(clean)
