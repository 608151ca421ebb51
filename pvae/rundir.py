"""A run folder on disk: the one place that knows its layout.

A run folder (``pvae train --out RUN``) holds::

    RUN/config.toml          the whole configuration, defaults filled in
    RUN/checkpoint.pt        model, optimizer, epoch, RNG states, history (pvae.checkpoint)
    RUN/metrics.json         train/validation metrics per epoch
    RUN/metrics.csv          the same, one row per epoch ([log] csv)
    RUN/tensorboard/         TensorBoard scalars ([log] tensorboard)
    RUN/curves.png           training curves; reconstructions.png and samples.png for a VAE
    RUN/evaluation/<split>.npz   stored per-datapoint evaluations (pvae evaluate)
    RUN/.lock                the live writer's lock (pvae.training.runlock)
"""

from __future__ import annotations

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "CURVES",
    "EVALUATION_DIR",
    "LOCK",
    "METRICS",
    "METRICS_CSV",
    "RECONSTRUCTIONS",
    "SAMPLES",
    "TENSORBOARD",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
METRICS = "metrics.json"
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tensorboard"
CURVES = "curves.png"
RECONSTRUCTIONS = "reconstructions.png"
SAMPLES = "samples.png"
EVALUATION_DIR = "evaluation"
LOCK = ".lock"
