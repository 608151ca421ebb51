"""The run folder: a checkpoint after every epoch, ``metrics.json`` and ``config.toml``.

A checkpoint holds what an exact resume needs: the module's and the optimizer's state, the step
and epoch counters, the history, and every rank's RNG state. With the shuffle of each epoch a
function of (seed, epoch) alone (:func:`~pvae.training.step.epoch_generator`) and curve points
on a schedule of the epoch number, a run resumed after epoch e continues with exactly the
numbers an uninterrupted run would have drawn. Files are written by rank 0, atomically
(:mod:`pvae.checkpoint`).

A resumed run changes nothing in its folder before its first checkpoint: ``config.toml`` (which
may now say more epochs, or carry a change allowed with ``--allow-change``) is written with that
checkpoint, after it, and should that write fail the checkpoint is put back as it was, so the
folder's config and checkpoint never disagree after an error. (The one write before is a
repair: a ``metrics.json`` that lacks the checkpoint's last epoch is rewritten from it.)
``metrics.json`` is strict JSON (a non-finite number, e.g. ``val_elbo_se`` of a single
validation point, is ``null``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pvae import distributed as D
from pvae.checkpoint import (
    CheckpointError,
    check_state_matches,
    load_checkpoint,
    save_checkpoint,
)
from pvae.config import dumps_toml
from pvae.files import atomic_write_bytes, finite
from pvae.rundir import CHECKPOINT, CONFIG, LOCK, METRICS
from pvae.training.changes import record_lines
from pvae.training.runlock import RunFolderBusyError, RunLock, check_not_locked

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "Checkpointer",
    "TrainState",
    "check_run_dir",
    "load_run_state",
]


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint restores.

    Attributes:
        epoch: Epochs completed.
        step: Optimizer steps taken.
        history: One record per completed epoch.
        config: The run's configuration, if it has one.
        changes: What each resume changed in the configuration:
            ``{"epoch": e, "changes": {key: [old, new]}}``, one entry per resume after epoch
            ``e`` that changed something (:func:`pvae.training.changes.config_changes`).
    """

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)


def check_run_dir(run_dir: str | Path | None, resume: bool, *, main: bool = True) -> Path | None:
    """The run folder as a path, refusing a resume without one, a folder another live run holds,
    and a fresh run into a folder that exists and is not empty (a run to resume, or files of
    the user's: nothing there is touched). ``main``: this process writes (rank 0) and so may probe
    the lock; every rank runs the other checks, so that all of them fail together."""
    path = Path(run_dir) if run_dir is not None else None
    if resume and path is None:
        raise ValueError("resume=True needs run_dir, the folder holding checkpoint.pt")
    if path is None:
        return path
    if main:  # a probe of the lock: rank 0 alone, which takes it
        check_not_locked(path)
    if resume:
        return path
    if (path / CHECKPOINT).exists():
        raise ValueError(
            f"run_dir {str(path)!r} already holds a checkpoint; resume it (resume=True, "
            "`pvae train --resume RUN`) or choose another folder"
        )
    if path.exists() and (not path.is_dir() or any(p.name != LOCK for p in path.iterdir())):
        what = "is not empty" if path.is_dir() else "is a file"
        raise ValueError(
            f"run_dir {str(path)!r} exists and {what}, and holds no run to resume; a new run "
            "is written only into a new or empty folder (choose another --out / run_dir)"
        )
    return path


class Checkpointer:
    """Saves and restores a run's state in its folder (a no-op without one).

    Args:
        path: The run folder, or ``None``.
        module: The module trained.
        optimizer: Its optimizer.
        data_shape: Shape of one datapoint (lets :func:`load_run_state` build a
            :class:`~pvae.VAE` before loading).
        d: The distributed job, or ``None``; every rank takes part in a save, rank 0 writes.
    """

    def __init__(
        self,
        path: Path | None,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_shape: Sequence[int],
        d: D.DistInfo | None,
    ) -> None:
        self.path = path
        self.module = module
        self.optimizer = optimizer
        self.data_shape = list(data_shape)
        self.d = d
        self.main = d is None or d.is_main
        self._lock: RunLock | None = None
        self._staging: Path | None = None
        self._config_due = False  # a resumed run's config.toml, written with its checkpoint

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        """Drop the folder's lock; a new run that failed before its first checkpoint was
        published leaves no folder behind."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def lock(self) -> None:
        """Take the folder's lock, for a resumed run (a new run locks its staging folder)."""
        if self.path is not None and self.main:
            self._lock = RunLock(self.path).acquire()

    def restore(self, device: torch.device) -> TrainState:
        """Load the folder's checkpoint into module, optimizer and this rank's RNGs."""
        file = self.path / CHECKPOINT
        ckpt = load_checkpoint(file, map_location=device)
        check_state_matches(self.module, ckpt["model"], str(file))
        self.module.load_state_dict(ckpt["model"])
        # The optimizer's moments and step counts continue; the settings train.lr and
        # train.clip_norm set are this run's, which a resume may change (load_state_dict would
        # put back the checkpoint's).
        settings = [
            {k: g[k] for k in ("lr", "clip_norm") if k in g} for g in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, mine in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(mine)
        set_rng_state(rank_rng(ckpt["rng"], self.d))
        return TrainState(
            ckpt["epoch"],
            ckpt["step"],
            list(ckpt["history"]),
            ckpt.get("config"),
            list(ckpt.get("changes", [])),
        )

    def start(self, state: TrainState, fresh: bool) -> None:
        """Begin writing the run. A fresh run writes ``config.toml`` and saves epoch 0, so a
        last good checkpoint exists from the start. A resumed run changes nothing yet: its
        ``config.toml`` goes with its first checkpoint (:meth:`save`); only a ``metrics.json``
        that does not hold the checkpoint's history (a run stopped between its checkpoint and
        its metrics) is repaired from that history now. Called once every input has been
        checked.

        A fresh run is written into a hidden sibling folder, locked, and renamed to the run
        folder only once its first checkpoint is on disk: the folder appears complete or not
        at all, and a rival run that got there first is detected by the rename."""
        if self.path is None:
            return
        if not fresh:
            self._config_due = self.main and state.config is not None
            if self.main and not _holds(self.path / METRICS, metrics_text(state)):
                atomic_write_bytes(self.path / METRICS, metrics_text(state))
            return
        final = self.path
        if self.main:
            final.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(final)
            staging = final.parent / f"{_staging_prefix(final)}{os.getpid()}"
            staging.mkdir()
            self._staging, self.path = staging, staging
            self._lock = RunLock(staging).acquire()
        try:
            if self.main and state.config is not None:
                atomic_write_bytes(self.path / CONFIG, config_text(state))
            self.save(state)
            if self.main:
                self._publish(final)
        finally:
            self.path = final

    def _publish(self, final: Path) -> None:
        try:
            os.rename(self._staging, final)  # replaces an empty folder, never a non-empty one
        except OSError as err:
            check_not_locked(final)
            raise ValueError(
                f"run_dir {str(final)!r} was created by another process while this run started "
                f"({err.strerror}); choose another folder"
            ) from None
        self._staging = None
        self._lock.folder = final

    def save(self, state: TrainState) -> None:
        """Write the checkpoint and ``metrics.json`` for ``state``."""
        if self.path is None:
            return
        rng = rng_state()
        if self.d is not None:  # every rank's generators, for an exact resume
            states: list[Any] = [None] * self.d.world_size
            torch.distributed.all_gather_object(states, rng)
            rng = {"ranks": states}
        if not self.main:
            return
        file = self.path / CHECKPOINT
        config = config_text(state) if self._config_due else None
        if config is not None and _holds(self.path / CONFIG, config):
            config = None
        previous = file.read_bytes() if config is not None and file.is_file() else None
        save_checkpoint(
            file,
            {
                "epoch": state.epoch,
                "step": state.step,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "history": state.history,
                "config": state.config,
                "data_shape": self.data_shape,
                "changes": state.changes,
            },
        )
        if config is not None:
            try:
                atomic_write_bytes(self.path / CONFIG, config)
            except BaseException:
                if previous is not None:  # config and checkpoint stay a pair
                    with contextlib.suppress(OSError):
                        atomic_write_bytes(file, previous)
                raise
        self._config_due = False
        self._write_metrics(state)

    def _write_metrics(self, state: TrainState) -> None:
        atomic_write_bytes(self.path / METRICS, metrics_text(state))


def metrics_text(state: TrainState) -> bytes:
    """``metrics.json`` of ``state``: its history as strict JSON (non-finite numbers ``null``)."""
    return (json.dumps(finite(state.history), indent=1, allow_nan=False) + "\n").encode()


def config_text(state: TrainState) -> bytes:
    """``config.toml`` of ``state``: its configuration, after comment lines telling what each
    resume changed (:func:`pvae.training.changes.record_lines`)."""
    head = "".join(line + "\n" for line in record_lines(state.changes))
    return (head + ("\n" if head else "") + dumps_toml(state.config)).encode()


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def _staging_prefix(final: Path) -> str:
    return f".{final.name}.pvae-new-"


def _remove_stale_staging(final: Path) -> None:
    """Remove staging folders of new runs into ``final`` that were killed before their first
    checkpoint; one whose lock a live process holds is left to it."""
    for old in final.parent.glob(f"{glob.escape(_staging_prefix(final))}*"):
        try:
            lock = RunLock(old).acquire()
        except (RunFolderBusyError, OSError):
            continue
        lock.release()
        shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """This process's torch (and CUDA) generator states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def rank_rng(state: dict[str, Any], d: D.DistInfo | None) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint. An exact resume needs the world size the
    checkpoint was written with (otherwise ranks would share one stream of noise)."""
    ranks = state.get("ranks", [state])
    world = 1 if d is None else d.world_size
    if len(ranks) != world:
        raise CheckpointError(
            f"checkpoint was written by {len(ranks)} process(es); resume it with the same number "
            f"(torchrun --nproc_per_node={len(ranks)}), this job has {world}"
        )
    return ranks[0 if d is None else d.rank]


def load_run_state(
    run_dir: str | Path, module: nn.Module, map_location: Any = "cpu"
) -> dict[str, Any]:
    """Load ``run_dir/checkpoint.pt`` (or a checkpoint file) into ``module``.

    A module with ``build(data_shape)`` that is not built yet (a :class:`~pvae.VAE` without a
    data shape) is built for the checkpoint's data shape first.

    Returns:
        The checkpoint.

    Raises:
        CheckpointError: the checkpoint is missing, unreadable, or from another model.
    """
    path = Path(run_dir)
    path = path / CHECKPOINT if path.is_dir() else path
    ckpt = load_checkpoint(path, map_location=map_location)
    unbuilt = (
        callable(getattr(module, "build", None)) and getattr(module, "data_shape", None) is None
    )
    if unbuilt and "data_shape" in ckpt:
        module.build(ckpt["data_shape"])
    check_state_matches(module, ckpt["model"], str(path))
    module.load_state_dict(ckpt["model"])
    return ckpt
