"""pvae command line: train, evaluate, bounds, ais, compare, plot and sample.

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
    pvae sample runs/a -n 64 --out samples.png
    pvae plot runs/a --what traversals   # also manifold, samples, recon, curves, kl, khat,
                                         # scatter, interpolation
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pyro
import torch

from pvae import diagnostics, distributed
from pvae._checks import figure_path, positive_int
from pvae.checkpoint import CheckpointError
from pvae.compare import add_parser as add_compare_parser
from pvae.compare import save_evaluation
from pvae.config import load_config
from pvae.datasets import DataUnavailableError
from pvae.evaluation import ais, bdmc, bounds, evaluate_elbo, log_px
from pvae.files import dumps
from pvae.model import VAE
from pvae.runs import Run, load_run, read_run_config, train_from_config
from pvae.training import TrainingDivergedError
from pvae.training.progress import summary_table, task_progress

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.config is not None:
            raise ValueError("--resume reads RUN/config.toml; do not pass --config with it")
        if args.seeds:
            raise ValueError("--resume continues one run; do not pass --seeds with it")
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
    if args.quiet:
        cfg.train.progress = False
        cfg.log.quiet = True
    if not args.seeds:
        result = train_from_config(cfg, out, resume=args.resume is not None)
        _report_run(args, out, result.final)
        return 0
    seeds = _seeds(args.seeds)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {str(out)!r} must be a new or empty folder for --seeds")
    finals = {}
    for seed in seeds:  # one ordinary run per seed: resumable and comparable one by one
        cfg.train.seed = seed
        run = out / f"seed-{seed}"
        if _is_main() and not args.json and not args.quiet:
            print(f"seed {seed}: training into {run}", flush=True)
        result = train_from_config(copy.deepcopy(cfg), run)
        finals[str(run)] = result.final
        _report_run(args, run, result.final)
    if _is_main() and not args.json and not args.quiet:
        print(f"{len(seeds)} runs in {out}; compare them with: pvae compare {out}/seed-*")
    return 0


def _seeds(values: Sequence[int]) -> list[int]:
    """``--seeds``: distinct non-negative integers."""
    for v in values:
        if v < 0:
            raise ValueError(f"--seeds must be non-negative integers, got {v}")
    if len(set(values)) != len(values):
        raise ValueError(f"--seeds must be distinct, got {list(values)}")
    return list(values)


def _report_run(args: argparse.Namespace, out: Path, final: dict) -> None:
    """The run's closing summary: one JSON line with ``--json``, else a small table."""
    if not _is_main():
        return
    if args.json:
        print(dumps({"run": str(out), **final}))
    elif not args.quiet:
        print(summary_table({"run": str(out), **final}))


def _device(module: torch.nn.Module) -> torch.device:
    """Where a trained module lives (any module: a user's need not have ``.device``)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def _is_main() -> bool:
    d = distributed.info()
    return d is None or d.is_main


def _external(path: str, run: Run) -> torch.Tensor:
    """``--data FILE``: a ``.npy`` (the array) or ``.npz`` (its ``x``, or ``test``) scored as the
    run's own data are: the same scaling (uint8 / 255) and, for a run on binarized data, one
    fixed binarization (seeded, as the run's validation and test splits are)."""
    from pvae.datasets import as_float, read_array_file

    arrays = read_array_file(path=path)
    a = arrays[0] if arrays[2] is None else arrays[2]  # a train/test .npz: score its test part
    x = as_float(f"--data {path}", a)
    shape = tuple(run.checkpoint.get("data_shape") or x.shape[1:])
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"--data {path}: datapoints of shape {tuple(x.shape[1:])} do not fit this run's "
            f"model, which expects {shape}"
        )
    if run.config.data.binarize != "none":
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise ValueError(
                f"--data {path}: this run models binarized data and needs intensities in "
                f"[0, 1], got [{float(x.min()):.4g}, {float(x.max()):.4g}]"
            )
        gen = torch.Generator().manual_seed(run.config.data.seed)
        x = torch.bernoulli(x, generator=gen)
    return x


def _evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run, device=args.device, data=args.data is None)
    if args.data is not None:
        x = _external(args.data, run).to(_device(run.vae))
        args.split = f"file:{args.data}"
    else:
        pyro.set_rng_seed(args.seed)  # a dynamically binarized split: the same draw every time
        x = run.data.split(args.split).to(_device(run.vae)).observed()
    k = args.k if args.k is not None else run.config.eval.k
    if k < 0:
        raise ValueError(f"--k must be a positive integer (or 0 to skip log p(x)), got {k}")
    num_samples = (
        run.config.eval.num_samples
        if args.num_samples is None
        else positive_int("--num-samples", args.num_samples)
    )
    pyro.set_rng_seed(args.seed)
    elbo_est = evaluate_elbo(
        run.vae, x, num_samples=num_samples, batch_size=run.config.eval.batch_size
    )
    out = {
        "run": str(run.path),
        "split": args.split,
        "epoch": run.checkpoint["epoch"],
        **elbo_est.summary(),
    }
    est = None
    if k > 0:
        sharded = distributed.info() is not None
        # On stderr: minutes of silence read as a hang (one process: a sharded run's total is
        # its own share).
        with _Phases([("log p(x)", "draws")], show=not sharded and not args.quiet) as tick:
            est = log_px(
                run.vae,
                x,
                k=k,
                seed=args.seed,
                distributed=sharded,
                max_k=args.max_k,
                target_se=args.target_se,
                progress=tick,
            )
        lp = est.summary()
        out.update(
            {k if k.startswith("log_px") else f"log_px_{k}": v for k, v in lp.items() if k != "n"}
        )
        out["weights"] = diagnostics.weight_diagnostics(est, worst=5)
    out["diagnostics"] = _diagnostics(run.vae, x)
    if not _is_main():
        return 0
    if args.data is None and not args.no_store:  # per-datapoint values, for pvae compare
        meta = {
            "seed": args.seed,
            "num_samples": num_samples,
            "max_k": args.max_k,
            "target_se": args.target_se,
        }
        try:
            out["stored"] = str(
                save_evaluation(
                    run.path,
                    args.split,
                    x,
                    elbo=elbo_est,
                    log_px=est,
                    epoch=int(run.checkpoint["epoch"]),
                    meta=meta,
                )
            )
        except OSError as err:  # a read-only run folder: the report is still worth having
            out["stored"] = None
            print(
                f"pvae evaluate: warning: per-datapoint values not stored: {err}", file=sys.stderr
            )
    if args.json:
        print(dumps(out))
        return 0
    print(f"{run.path}  split={args.split}  n={out['n']}  epoch={out['epoch']}")
    mc = out["elbo_mc_se"]
    draws = (
        f"Monte Carlo s.e. {mc:.4f}, {num_samples} draws"
        if math.isfinite(mc)
        else "1 draw per datapoint"
    )
    print(
        f"  ELBO          {out['elbo']:12.4f} nats ± {out['elbo_se']:.4f} s.e. over datapoints "
        f"({draws})"
    )
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
        khat = (
            f"{out['log_px_khat_max']:.2f}"
            if out["log_px_khat_max"] is not None
            else "n/a"
            if out.get("log_px_khat_frac_above_0.7") is None
            else "inf: too few draws for a Pareto fit"  # the tail PSIS fits needs k ≳ 100
        )
        sd = out["log_px_sd"]
        over = f"; ± {sd / math.sqrt(out['n']):.4f} s.e. over datapoints" if sd else ""
        print(
            f"  log p(x)      {out['log_px']:12.4f} nats ± {_num(out['log_px_se'])} Monte Carlo "
            f"s.e.{over}\n                (k={k}, mean ESS {out['log_px_ess_mean']:.0f}, "
            f"max k̂ {khat})"
        )
        if est.adaptive is not None:
            print(f"  {est.adaptive}")
        if out.get("log_px_warning"):
            print(f"  WARNING: {out['log_px_warning']}")
    if out.get("stored"):
        print(f"  per-datapoint values in {out['stored']} (read by pvae compare)")
    return 0


class _Phases:
    """Progress lines on stderr for a computation that reports ``progress(done, total)`` phase
    after phase, each counting from 0 (bounds: importance draws, then AIS, then BDMC): a new
    :func:`~pvae.training.progress.task_progress` per phase, named from ``phases`` (its last
    entry for any further phase). A context manager yielding the callback."""

    def __init__(self, phases: Sequence[tuple[str, str]], show: bool) -> None:
        self.phases, self.show = list(phases), show
        self.stack = contextlib.ExitStack()
        self.index, self.seen, self.total = -1, 0, -1
        self.advance: Callable[[int], None] = lambda n: None

    def __enter__(self) -> Callable[[int, int], None]:
        return self.tick

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def tick(self, done: int, total: int) -> None:
        if total != self.total or done < self.seen or self.seen == self.total:  # a new phase
            self.stack.close()
            self.index += 1
            name, unit = self.phases[min(self.index, len(self.phases) - 1)]
            self.advance = self.stack.enter_context(
                task_progress(name, total, show=self.show, unit=unit)
            )
            self.seen, self.total = 0, total
        self.advance(done - self.seen)
        self.seen = done


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


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
    plot = figure_path("--plot", args.plot) if args.plot else None  # before minutes of work
    run = load_run(args.run, device=args.device)
    x = run.data.split(args.split).to(_device(run.vae)).observed()
    pyro.set_rng_seed(args.seed)
    sharded = distributed.info() is not None
    phases = [
        (f"IWAE draws (k={max(args.k)})", "draws"),
        ("AIS", "steps"),
        ("BDMC forward AIS", "steps"),
        ("BDMC reverse AIS", "steps"),
    ]
    with _Phases(phases, show=not sharded and not args.quiet) as tick:
        ladder = bounds(
            run.vae,
            x,
            ks=args.k,
            seed=args.seed,
            distributed=sharded,
            ais_steps=args.ais_steps,
            ais_chains=args.ais_chains,
            bdmc_n=args.bdmc,
            progress=tick,
        )
    if not _is_main():
        return 0
    if plot is not None:
        ladder.plot(plot)
    if args.json:
        print(dumps({"run": str(run.path), "split": args.split, **ladder.to_dict()}))
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
    sharded = distributed.info() is not None  # under torchrun: each rank anneals its share
    phases = [("AIS", "steps"), ("BDMC forward AIS", "steps"), ("BDMC reverse AIS", "steps")]
    n = positive_int("--bdmc", args.bdmc) if args.bdmc else 0  # checked before hours of AIS
    with _Phases(phases, show=not sharded and not args.quiet) as tick:
        est = ais(run.vae, x, **settings, progress=tick, distributed=sharded)
        sandwich = bdmc(run.vae, n=n, **settings, progress=tick, distributed=sharded) if n else None
    out = {"run": str(run.path), "split": args.split, "ais": est.summary(), "bdmc": None}
    if sandwich is not None:
        out["bdmc"] = sandwich.summary()
    if not _is_main():
        return 0
    if args.json:
        print(dumps(out))
        return 0
    print(f"{run.path}  split={args.split}")
    print(f"  {est}")
    if sandwich is not None:
        print(f"  {sandwich} (data simulated from the model)")
    return 0


PLOTS = (
    "manifold",
    "samples",
    "recon",
    "curves",
    "kl",
    "khat",
    "scatter",
    "traversals",
    "interpolation",
)


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
    out = figure_path("--out", args.out) if args.out else run.path / f"{args.what}.png"
    style = {"figsize": _size(args.size), "dpi": _dpi(args.dpi), "path": out}
    if args.what == "manifold":
        plotting.latent_manifold(run.vae, x=x, **style)
    elif args.what == "samples":
        plotting.samples(run.vae, **style)
    elif args.what == "recon":
        plotting.reconstructions(run.vae, x, **style)
    elif args.what == "curves":
        plotting.training_curves(run.checkpoint["history"], **style)
    elif args.what == "kl":
        plotting.kl_bars(diagnostics.kl_per_dimension(run.vae, x), **style)
    elif args.what == "khat":
        plotting.khat_plot(log_px(run.vae, x, k=args.k), **style)
    elif args.what == "traversals":
        (i,) = _indices(args.index, x.shape[0], 1)
        around = None if args.around == "prior" else x[i]
        plotting.traversals(run.vae, around, kl_x=x, sd=args.sd, dims=args.dims, **style)
    elif args.what == "interpolation":
        i, j = _indices(args.index, x.shape[0], 2)
        plotting.interpolation(run.vae, x[i], x[j], steps=args.steps, **style)
    else:
        plotting.latent_scatter(run.vae, x, run.data.test.y, **style)
    print(f"wrote {out}")
    return 0


def _indices(given: Sequence[int] | None, n: int, count: int) -> list[int]:
    """``--index``: ``count`` test-set positions (default 0, 1, ...), each in ``[0, n)``."""
    idx = list(range(count)) if not given else list(given)
    if len(idx) != count:
        raise ValueError(f"--index takes {count} test-set position(s) here, got {len(idx)}")
    for i in idx:
        if not 0 <= i < n:
            raise ValueError(f"--index must be in [0, {n}) (the test split's size), got {i}")
    return idx


def _size(size: Sequence[float] | None) -> tuple[float, float] | None:
    """``--size W H``: a figure size in inches, both positive."""
    if size is None:
        return None
    w, h = size
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ValueError(f"--size takes a positive width and height in inches, got {w} {h}")
    return (w, h)


def _dpi(dpi: int | None) -> int | None:
    return None if dpi is None else positive_int("--dpi", dpi)


def _sample(args: argparse.Namespace) -> int:
    n = positive_int("-n", args.n)
    out = figure_path("--out", args.out)
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
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="pvae",
        description=doc.split("\n")[0],
        epilog=doc[doc.index("Examples") :].replace("::", ":") if "Examples" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="ELBO and log p(x) of a trained run on a split")
    e.add_argument("run")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--data",
        metavar="FILE",
        default=None,
        help="score this .npy/.npz instead of a split of the run's data",
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
    e.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    e.add_argument(
        "--no-store",
        action="store_true",
        help="do not write RUN/evaluation/SPLIT.npz (the per-datapoint values pvae compare reads)",
    )
    e.set_defaults(func=_evaluate)

    b = sub.add_parser("bounds", help="the ELBO ≤ IWAE_k ≤ log p(x) ladder of a trained run")
    b.add_argument("run")
    b.add_argument("--k", type=int, nargs="+", default=[1, 5, 50, 500, 5000])
    b.add_argument("--split", default="test", choices=("train", "val", "test"))
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--plot", metavar="PNG", help="also save the ladder plot")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
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
    a.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a.add_argument("--device", default="auto")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=_ais)

    pl = sub.add_parser("plot", help="draw a figure of a trained run")
    pl.add_argument("run")
    pl.add_argument("--what", required=True, choices=PLOTS)
    pl.add_argument("--out", help="PNG or PDF path (default RUN/<what>.png)")
    pl.add_argument("--k", type=int, default=1000, help="importance samples for --what khat")
    pl.add_argument("--size", type=float, nargs=2, metavar=("W", "H"), help="figure size in inches")
    pl.add_argument("--dpi", type=int, default=None, help="resolution (default 150)")
    pl.add_argument(
        "--index",
        type=int,
        nargs="+",
        metavar="I",
        help="test datapoint(s): one to traverse around, two to interpolate (default 0 [1])",
    )
    pl.add_argument(
        "--around",
        default="data",
        choices=("data", "prior"),
        help="traversals: around the datapoint's posterior mean or the prior's mean",
    )
    pl.add_argument(
        "--sd",
        default="prior",
        choices=("prior", "posterior", "aggregate"),
        help="traversals: offsets in units of the prior's, the datapoint's posterior or the "
        "aggregate posterior's standard deviation (prior: collapsed rows stay constant)",
    )
    pl.add_argument(
        "--dims", type=int, default=None, help="traversals: only the N largest-KL dimensions"
    )
    pl.add_argument("--steps", type=int, default=10, help="interpolation: points on the line")
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

    add_compare_parser(sub)  # pvae compare RUN... [--split] [--reference] [--json] [--plot PNG]
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
    except (
        ValueError,
        TypeError,
        CheckpointError,
        DataUnavailableError,
        ModuleNotFoundError,  # an optional extra (tensorboard) asked for but not installed
    ) as err:
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
