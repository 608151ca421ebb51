"""Callbacks: what :func:`pvae.fit` tells the outside world while it trains.

A callback is an object with three methods, each a no-op in :class:`Callback`, which a
subclass overrides as it needs:

* ``on_train_begin(info)``: once, after the run folder exists and before the first epoch.
  ``info`` is a :class:`TrainInfo` dict: ``run_dir`` (a :class:`~pathlib.Path` or ``None``),
  ``epochs`` (the run's last epoch), ``start_epoch`` (epochs already done: 0 for a new run, the
  checkpoint's epoch when resuming), ``resumed``, ``history`` (the records of those epochs),
  ``config`` (the run's configuration, if any) and ``main`` (whether this process is the one
  that writes: rank 0 of a distributed job, or the only process).
* ``on_epoch_end(record)``: after each epoch's checkpoint is on disk, with the epoch's record
  (the dict appended to :attr:`pvae.training.FitResult.history`).
* ``on_train_end(history)``: once, however training ends (finished, interrupted, diverged, or a
  callback raised), with the records of every epoch done; a logger closes its files here.

Callbacks run on every rank of a distributed job, in the order given. An exception raised in a
callback is not caught: it ends training (the last checkpoint is kept), so a logger that cannot
write does not fail silently.

Two loggers are built in: :class:`CSVLogger` (one row per epoch) and :class:`TensorBoardLogger`
(scalars per epoch). Both write on the main process only.

Example:
    >>> import torch, pvae
    >>> class Best(pvae.training.Callback):
    ...     def on_epoch_end(self, record):
    ...         self.best = max(getattr(self, "best", -float("inf")), record["train_elbo"])
    >>> best = Best()
    >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), hidden=(8,))
    >>> _ = pvae.fit(vae, torch.rand(32, 4).bernoulli(), epochs=2, callbacks=[best],
    ...              quiet=True, device="cpu")
    >>> best.best < 0
    True
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from pvae.files import atomic_write_bytes
from pvae.options import LogOptions
from pvae.rundir import METRICS_CSV, TENSORBOARD

__all__ = ["CSVLogger", "Callback", "TensorBoardLogger", "TrainInfo", "run_loggers"]


class TrainInfo(TypedDict):
    """What ``on_train_begin`` receives (see the module docstring)."""

    run_dir: Path | None
    epochs: int
    start_epoch: int
    resumed: bool
    history: list[dict[str, float]]
    config: dict[str, Any] | None
    main: bool


class Callback:
    """Base class of :func:`pvae.fit`'s callbacks: every hook does nothing (see the module
    docstring for when each is called and what it receives)."""

    def on_train_begin(self, info: TrainInfo) -> None:
        """Training is about to start (or to resume) with ``info``."""

    def on_epoch_end(self, record: dict[str, float]) -> None:
        """An epoch ended; ``record`` is its entry of the history."""

    def on_train_end(self, history: list[dict[str, float]]) -> None:
        """Training ended (however it ended) after the epochs in ``history``."""


class OnEpoch(Callback):
    """A plain function of each epoch's record as a callback (:func:`pvae.fit`'s ``on_epoch``)."""

    def __init__(self, fn: Callable[[dict[str, float]], None]) -> None:
        if not callable(fn):
            raise TypeError(f"on_epoch must be callable, got {type(fn).__name__}")
        self.fn = fn

    def on_epoch_end(self, record: dict[str, float]) -> None:
        self.fn(record)


def check_callbacks(callbacks: Sequence[Callback] | None) -> list[Callback]:
    """``callbacks`` as a list, each checked to be a :class:`Callback`."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Sequence | tuple | list):
        raise TypeError(
            f"callbacks must be a list of pvae.training.Callback objects, got "
            f"{type(callbacks).__name__}"
        )
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(
                f"callbacks[{i}] must be a pvae.training.Callback (subclass it and override "
                f"on_train_begin, on_epoch_end or on_train_end), got {type(cb).__name__}"
            )
    return list(callbacks)


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's numeric entries (booleans and other values left out)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class CSVLogger(Callback):
    """Write the history to a CSV file, one row per epoch.

    The header is the union of the records' keys in the order they first appear (curve points
    such as ``val_iwae_500`` join the columns at the first epoch that records them; earlier rows
    leave them empty, as is a number that is not finite, e.g. ``val_elbo_se`` of a single
    validation point). The whole file is rewritten through an atomic rename after every epoch,
    so a crash, a full disk or a kill at any moment leaves the previous complete file, never a
    half-written row. A resumed run starts from the checkpoint's history and appends to it, so
    the file holds exactly one row per epoch the checkpoint knows, even if the previous process
    died between its checkpoint and its row; it writes nothing before its first epoch's
    checkpoint.

    Args:
        path: The CSV file (its folder must exist when training starts).

    Raises:
        ValueError: (from ``on_train_begin``) the file's folder does not exist, or the file is a
            folder.
        WriteError: (from ``on_epoch_end``) the file could not be written; training stops.
    """

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, str | Path):
            raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []
        self.main = True

    def on_train_begin(self, info: TrainInfo) -> None:
        self.main = info["main"]
        if self.main and not self.path.parent.is_dir():  # now, not after the first epoch
            raise ValueError(
                f"CSVLogger path {str(self.path)!r}: its folder {str(self.path.parent)!r} "
                "does not exist"
            )
        if self.main and self.path.is_dir():
            raise ValueError(
                f"CSVLogger path {str(self.path)!r} is a folder; it must be a file (or not exist)"
            )
        # A resumed run's rows: written with its first epoch (which repairs a file that missed
        # the last epoch before a crash), not before its first checkpoint.
        self.rows = [_scalars(r) for r in info["history"]]

    def on_epoch_end(self, record: dict[str, float]) -> None:
        self.rows.append(_scalars(record))
        if self.main:
            self._write()

    def _write(self) -> None:
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_number(v) for k, v in row.items()})
        atomic_write_bytes(self.path, buf.getvalue().encode())


def _csv_number(v: float) -> str:
    """Integers as integers (``epoch``, ``step``), floats with full precision, and a number that
    is not finite as an empty cell (as ``metrics.json`` has ``null``)."""
    if not math.isfinite(v):
        return ""
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


class TensorBoardLogger(Callback):
    """Write each epoch's numbers as TensorBoard scalars (``tensorboard --logdir LOG_DIR``).

    Every numeric entry of the record becomes a scalar of the same name at global step
    ``epoch``; the writer is flushed after every epoch (a crash loses nothing written) and
    closed when training ends. A resumed run purges the events of epochs after the checkpoint's
    (written by the process that died), so each epoch appears once. The event files are opened
    with the first epoch's record, after its checkpoint: a run that fails before then writes
    nothing.

    Args:
        log_dir: The event files' folder (created if missing).

    Raises:
        ModuleNotFoundError: ``tensorboard`` is not installed (``pip install tensorboard``), or
            it is installed but fails to import (the error is named): found here, by importing
            it, before a run folder is written.
    """

    def __init__(self, log_dir: str | Path) -> None:
        if not isinstance(log_dir, str | Path):
            raise TypeError(f"log_dir must be a str or Path, got {type(log_dir).__name__}")
        self.writer_class = _summary_writer()
        self.log_dir = Path(log_dir)
        self.writer: Any = None
        self.purge: int | None = None
        self.main = False

    def on_train_begin(self, info: TrainInfo) -> None:
        self.main = info["main"]
        self.purge = info["start_epoch"] + 1 if info["resumed"] else None

    def on_epoch_end(self, record: dict[str, float]) -> None:
        if not self.main:
            return
        if self.writer is None:
            self.writer = self.writer_class(str(self.log_dir), purge_step=self.purge)
        epoch = int(record["epoch"])
        for key, value in _scalars(record).items():
            if key != "epoch" and not math.isnan(value):
                self.writer.add_scalar(key, value, global_step=epoch)
        self.writer.flush()

    def on_train_end(self, history: list[dict[str, float]]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported now: a package that is missing, or
    installed but broken (a version clash, a damaged install), is reported before any run."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ModuleNotFoundError(
            "TensorBoardLogger needs the tensorboard package, which is not installed: "
            "pip install tensorboard",
            name="tensorboard",
        )
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as err:
        raise ModuleNotFoundError(
            f"TensorBoardLogger needs the tensorboard package, which is installed but fails to "
            f"import ({type(err).__name__}: {err}); repair it (pip install --force-reinstall "
            "tensorboard) or turn TensorBoard off (log.tensorboard = false)",
            name="tensorboard",
        ) from err
    return SummaryWriter


def run_loggers(
    log: LogOptions,
    run_dir: str | Path,
    *,
    mlflow_parent: str | None = None,
    mlflow_tags: Mapping[str, str] | None = None,
) -> list[Callback]:
    """The loggers ``[log]`` turns on for a run folder: :class:`CSVLogger` into
    ``metrics.csv`` (``log.csv``), :class:`TensorBoardLogger` into ``tensorboard/``
    (``log.tensorboard``) and :class:`~pvae.training.mlflow.MLflowLogger` (``log.mlflow``,
    a nested run of ``mlflow_parent`` if given, with ``mlflow_tags``). A logger whose package
    is missing or fails to import raises ``ModuleNotFoundError`` at once, before anything is
    written."""
    run_path = Path(run_dir)
    out: list[Callback] = []
    if log.csv:
        out.append(CSVLogger(run_path / METRICS_CSV))
    if log.tensorboard:
        out.append(TensorBoardLogger(run_path / TENSORBOARD))
    if log.mlflow:
        from pvae.training.mlflow import MLflowLogger  # it subclasses Callback, defined here

        out.append(
            MLflowLogger(
                log.mlflow_tracking_uri,
                log.mlflow_experiment,
                run_dir=run_path,
                parent_run_id=mlflow_parent,
                tags=mlflow_tags,
            )
        )
    return out
