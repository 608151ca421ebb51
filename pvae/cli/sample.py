"""``pvae sample``: draws from a trained run's prior, decoded: a PNG grid, and all of them as an
array file on request (``--npy``)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from pvae._checks import figure_path, positive_int
from pvae.cli.common import DEVICE_HELP, FIGURE_HELP, figure_file
from pvae.files import atomic_write_bytes
from pvae.runs import load_run

__all__ = ["MAX_GRID", "add_parser", "default_out", "run"]

MAX_GRID = 256
"""The most samples a grid shows legibly (32 rows of 8 in a figure capped at 9 inches high);
more are written with ``--npy``."""
CHUNK = 4096  # samples decoded at once for --npy


def default_out(run_dir: str | Path, n: int, seed: int) -> Path:
    """Where ``pvae sample`` writes its grid without ``--out``: ``RUN/samples-<n>-seed<seed>.png``
    (training's own ``RUN/samples.png`` is left alone)."""
    return Path(run_dir) / f"samples-{n}-seed{seed}.png"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae sample``; it runs :func:`run`."""
    s = subparsers.add_parser(
        "sample", help="draw samples from a trained run's prior as a PNG grid (or a .npy array)"
    )
    s.add_argument("run", help="the run folder (pvae train --out RUN)")
    s.add_argument(
        "-n",
        type=int,
        default=64,
        help=f"number of samples (default 64; a grid shows at most {MAX_GRID}, --npy any number)",
    )
    s.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help=f"the grid: {FIGURE_HELP} (default RUN/samples-<n>-seed<seed>.png; with --npy, "
        "no grid unless given)",
    )
    s.add_argument(
        "--npy",
        metavar="FILE",
        default=None,
        help="also write the samples (decoder means) as a float32 array of shape (n, *data shape) "
        "to this .npy file",
    )
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    s.set_defaults(func=run)
    return s


def _check_args(args: argparse.Namespace) -> tuple[int, Path | None, Path | None]:
    """``-n``, the grid's file (``None``: no grid) and the array's file, before any work."""
    n = positive_int("-n", args.n)
    npy = _npy_path(args.npy) if args.npy is not None else None
    grid = args.out is not None or npy is None
    if grid and n > MAX_GRID:
        raise ValueError(
            f"-n {n} is more than a grid shows legibly; -n {MAX_GRID} at most for the PNG grid, "
            "or write the samples as an array with --npy FILE (and no --out)"
        )
    out = figure_file("--out", args.out) if args.out is not None else None
    return n, out, npy


def _npy_path(value: str) -> Path:
    if Path(value).suffix != ".npy":
        raise ValueError(f"--npy must name a .npy file, got {value!r}")
    return figure_path("--npy", value)  # a file in a folder that exists


def run(args: argparse.Namespace) -> int:
    """``pvae sample``: draw ``-n`` samples and write the grid (and the array)."""
    n, out, npy = _check_args(args)
    run_ = load_run(args.run, device=args.device, data=False)  # the prior needs no data
    if not callable(getattr(run_.vae, "sample", None)):
        raise ValueError(f"{type(run_.vae).__name__} has no sample(n) method: nothing to draw")
    from pvae import plotting

    shape = tuple(run_.checkpoint.get("data_shape") or getattr(run_.vae, "data_shape", ()))
    if npy is None or out is not None:
        if not plotting.is_image_shape(shape):
            raise ValueError(
                f"samples of shape {shape} are not images; nothing to draw (write them with "
                "--npy FILE)"
            )
        out = out if out is not None else default_out(run_.path, n, args.seed)
    if npy is not None:
        pyro.set_rng_seed(args.seed)
        _write_npy(npy, _draw(run_.vae, n, shape))
        print(f"wrote {n} samples of shape {shape} to {npy}")
    if out is not None:
        pyro.set_rng_seed(args.seed)
        plotting.samples(run_.vae, n=n, path=out)
        print(f"wrote {n} samples to {out}")
    return 0


@torch.no_grad()
def _draw(vae: Any, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """``n`` decoder means of prior draws, ``CHUNK`` at a time, as float32 ``(n, *shape)``."""
    parts = []
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        part = vae.sample(m, mean=True)
        if tuple(part.shape) != (m, *shape):
            raise ValueError(
                f"{type(vae).__name__}.sample({m}) returned shape {tuple(part.shape)}, expected "
                f"{(m, *shape)}"
            )
        parts.append(part.detach().to("cpu", torch.float32).numpy())
    return np.concatenate(parts)


def _write_npy(path: Path, a: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
