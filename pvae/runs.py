"""Runs on disk: train from a :class:`~pvae.config.Config` into a folder, and rebuild a trained
model from that folder (config + checkpoint) exactly as it was trained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import tomllib
import torch
from torch import nn

from pvae import distributed as D
from pvae.checkpoint import CheckpointError, check_state_matches, load_checkpoint
from pvae.config import Config, build_vae, load_data
from pvae.datasets import DataSplits
from pvae.rundir import CHECKPOINT, CONFIG, METRICS_CSV, TENSORBOARD
from pvae.training import FitResult, fit, load_run_state, resolve_device
from pvae.training.callbacks import Callback, run_loggers
from pvae.training.checkpointing import check_run_dir
from pvae.training.runlock import check_not_locked

__all__ = ["METRICS_CSV", "TENSORBOARD", "Run", "load_run", "train_from_config"]


def _is_main() -> bool:
    d = D.info()
    return d is None or d.is_main


@dataclass
class Run:
    """A trained run rebuilt from disk.

    Attributes:
        path: The run folder.
        config: Its configuration.
        vae: The trained model the configuration describes, with the checkpoint's parameters.
        data: The data the configuration names (``None`` if loaded with ``data=False``).
        checkpoint: The checkpoint as read.
    """

    path: Path
    config: Config
    vae: nn.Module
    data: DataSplits | None
    checkpoint: dict[str, Any]


def train_from_config(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data: DataSplits | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Build data and model from ``cfg`` and train into ``run_dir`` (writing ``config.toml``).

    ``[log]`` turns on the loggers, which write into the run folder on the main process:
    ``metrics.csv`` (``log.csv``) and ``tensorboard/`` (``log.tensorboard``); a resumed run
    appends to them. ``callbacks`` are passed to :func:`~pvae.fit` after those.

    Everything that can fail on bad input (config, data, model shapes, a missing
    ``tensorboard`` package) fails before :func:`~pvae.fit` creates the folder, so a rejected
    run leaves nothing behind.
    """
    run_path = Path(run_dir)
    main = _is_main()
    if not resume and (run_path / CHECKPOINT).exists():
        if main:
            check_not_locked(run_path)  # a live run's folder: say so, and whose
        raise ValueError(
            f"run folder {str(run_path)!r} already holds a checkpoint; use --resume {run_path} "
            "or another --out"
        )
    check_run_dir(run_path, resume, main=main)
    loggers = run_loggers(cfg.log, run_path) if main else []
    data = data if data is not None else load_data(cfg.data)
    pyro.set_rng_seed(cfg.train.seed)  # seeds the initial weights
    vae = build_vae(cfg.model, data.data_shape)
    return fit(
        vae,
        data,
        cfg.options,
        callbacks=[*loggers, *callbacks],
        run_dir=run_path,
        resume=resume,
        config=cfg.to_dict(),
    )


def read_run_config(run_dir: str | Path) -> Config:
    """The :class:`Config` stored in a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a pvae run folder: {CONFIG} is missing")
    return Config.from_dict(tomllib.loads(path.read_text()))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *, data: bool = True) -> Run:
    """Rebuild the model, data and checkpoint of a run folder written by ``pvae train``.

    Args:
        run_dir: The run folder.
        device: Where to put the model.
        data: Also load the data the config names; without it (drawing from the prior needs no
            data) ``Run.data`` is ``None`` and the model is built for the checkpoint's data shape.

    Raises:
        CheckpointError: the checkpoint is missing, corrupt, or does not fit the config's model.
    """
    run_path = Path(run_dir)
    cfg = read_run_config(run_path)
    dev = resolve_device(device)
    splits = load_data(cfg.data) if data else None
    if splits is not None:
        vae = build_vae(cfg.model, splits.data_shape)
        ckpt = load_run_state(run_path, vae, map_location=dev)
    else:
        ckpt = load_checkpoint(run_path / CHECKPOINT, map_location=dev)
        if not ckpt.get("data_shape"):
            raise CheckpointError(
                f"{run_path / CHECKPOINT} records no data shape; load the run with its data"
            )
        vae = build_vae(cfg.model, ckpt["data_shape"])
        check_state_matches(vae, ckpt["model"], str(run_path / CHECKPOINT))
        vae.load_state_dict(ckpt["model"])
    if ckpt.get("config") is not None and ckpt["config"].get("model") != cfg.to_dict()["model"]:
        raise CheckpointError(
            f"{run_path / CHECKPOINT} was written for another model than {run_path / CONFIG} "
            "describes"
        )
    vae.to(dev).eval()
    return Run(run_path, cfg, vae, splits, ckpt)
