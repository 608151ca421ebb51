"""Runs on disk: train from a :class:`~pvae.config.Config` into a folder, and rebuild a trained
model from that folder (config + checkpoint) exactly as it was trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import tomllib
import torch
from torch import nn

from pvae.checkpoint import CheckpointError
from pvae.config import Config, build_vae, load_data
from pvae.datasets import DataSplits
from pvae.train import CHECKPOINT, CONFIG, FitResult, fit, load_run_state, resolve_device

__all__ = ["Run", "load_run", "train_from_config"]


@dataclass
class Run:
    """A trained run rebuilt from disk.

    Attributes:
        path: The run folder.
        config: Its configuration.
        vae: The trained model the configuration describes, with the checkpoint's parameters.
        data: The data the configuration names.
        checkpoint: The checkpoint as read.
    """

    path: Path
    config: Config
    vae: nn.Module
    data: DataSplits
    checkpoint: dict[str, Any]


def train_from_config(
    cfg: Config, run_dir: str | Path, *, resume: bool = False, data: DataSplits | None = None
) -> FitResult:
    """Build data and model from ``cfg`` and train into ``run_dir`` (writing ``config.toml``).

    Everything that can fail on bad input (config, data, model shapes) fails before
    :func:`~pvae.fit` creates the folder, so a rejected run leaves nothing behind.
    """
    run_path = Path(run_dir)
    if not resume and (run_path / CHECKPOINT).exists():
        raise ValueError(
            f"run folder {str(run_path)!r} already holds a checkpoint; use --resume {run_path} "
            "or another --out"
        )
    data = data if data is not None else load_data(cfg.data)
    t = cfg.train
    pyro.set_rng_seed(t.seed)  # seeds the initial weights
    vae = build_vae(cfg.model, data.data_shape)
    kwargs = dict(
        objective=t.objective,
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        optimizer=t.optimizer,
        clip_norm=t.clip_norm,
        beta=t.beta,
        warmup_steps=t.warmup_steps,
        free_bits=t.free_bits,
        num_particles=t.num_particles,
        vectorize_particles=t.vectorize_particles,
        estimator=t.estimator,
        fast=t.fast,
        seed=t.seed,
        device=t.device,
        progress=t.progress,
        labels=bool(t.labels),
        eval_batch_size=cfg.eval.batch_size,
        curve_ks=cfg.eval.curve_ks,
        curve_every=cfg.eval.curve_every,
        curve_subset=cfg.eval.curve_subset,
        config=cfg.to_dict(),
    )
    return fit(vae, data, run_dir=run_path, resume=resume, **kwargs)


def read_run_config(run_dir: str | Path) -> Config:
    """The :class:`Config` stored in a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a pvae run folder: {CONFIG} is missing")
    return Config.from_dict(tomllib.loads(path.read_text()))


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model, data and checkpoint of a run folder written by ``pvae train``.

    Raises:
        CheckpointError: the checkpoint is missing, corrupt, or does not fit the config's model.
    """
    run_path = Path(run_dir)
    cfg = read_run_config(run_path)
    data = load_data(cfg.data)
    vae = build_vae(cfg.model, data.data_shape)
    dev = resolve_device(device)
    ckpt = load_run_state(run_path, vae, map_location=dev)
    if ckpt.get("config") is not None and ckpt["config"].get("model") != cfg.to_dict()["model"]:
        raise CheckpointError(
            f"{run_path / CHECKPOINT} was written for another model than {run_path / CONFIG} "
            "describes"
        )
    vae.to(dev).eval()
    return Run(run_path, cfg, vae, data, ckpt)
