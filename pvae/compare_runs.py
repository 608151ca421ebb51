"""The runs a comparison reads (:func:`pvae.compare.compare`): each run folder's canonical
configuration, history and stored per-datapoint evaluation (:func:`read_run`), the key that
groups runs of one configuration (:func:`group_key`), and the runs whose stored evaluation is
missing or stale, evaluated as ``pvae evaluate`` would evaluate them (:func:`evaluate_pending`:
``pvae compare`` does this by default)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvae.config import canonical, load_config
from pvae.rundir import (
    CONFIG,
    EVALUATION_DIR,
    Evaluation,
    load_evaluation,
    read_history,
)
from pvae.runs import evaluate_run

__all__ = [
    "IGNORED_KEYS",
    "IGNORED_SECTIONS",
    "ComparedRun",
    "evaluate_pending",
    "flatten",
    "group_key",
    "pending_evaluation",
    "read_run",
]

# Settings that do not change what is trained: left out of a group's key.
IGNORED_KEYS = frozenset(
    {
        "train.seed",
        "train.progress",
        "train.device",
        "train.compile",  # the same model, compiled or not
        "eval.batch_size",
        "eval.k",  # evaluation settings, stored with each evaluation (k is noted if it differs)
        "eval.num_samples",
        "data.root",
        "data.download",
    }
)
IGNORED_SECTIONS = frozenset({"log"})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one dict of dotted keys (``{"model.prior.name": "vamp"}``)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def group_key(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened canonical config without the seed and output-only settings."""
    return {
        k: v
        for k, v in flatten(config).items()
        if k not in IGNORED_KEYS and k.split(".", 1)[0] not in IGNORED_SECTIONS
    }


@dataclass
class ComparedRun:
    """One run as a comparison reads it.

    Attributes:
        path: The run folder.
        seed: Its ``train.seed``.
        config: Its canonical configuration (defaults filled in, one spelling).
        said: The flattened keys of ``config`` whose values are not their defaults.
        history: Its per-epoch records.
        evaluation: Its stored evaluation of the compared split.
    """

    path: Path
    seed: int
    config: dict[str, Any]
    said: set[str]
    history: list[dict[str, float]]
    evaluation: Evaluation


def pending_evaluation(path: Path, split: str) -> str | None:
    """Why the run at ``path`` needs (another) evaluation of ``split`` before it can be
    compared: no stored evaluation, or one of an earlier epoch than the run's last; ``None``
    when the stored one is current. An unreadable stored file is not pending: :func:`read_run`
    reports it (it is not overwritten)."""
    if not (path / EVALUATION_DIR / f"{split}.npz").is_file():
        return f"no stored {split} evaluation"
    ev = load_evaluation(path, split)
    last = read_history(path)[-1].get("epoch")
    if ev.epoch is not None and last is not None and ev.epoch != last:
        return f"its stored {split} evaluation is of epoch {ev.epoch}, the run's last is {last}"
    return None


def evaluate_pending(
    paths: Sequence[Path],
    split: str,
    *,
    device: str = "cpu",
    announce: Callable[[Path, str], None] | None = None,
) -> list[Path]:
    """Evaluate and store each run of ``paths`` whose ``split`` evaluation is pending
    (:func:`pending_evaluation`), with the run's own ``[eval]`` settings (``eval.k``,
    ``eval.num_samples``) and seed 0: what ``pvae evaluate RUN --split SPLIT`` computes and
    stores (:func:`~pvae.runs.evaluate_run`).

    Every run's configuration and history are read, and every pending run found, before the
    first evaluation starts. ``announce(path, reason)`` is called before each run is evaluated.
    Returns the runs evaluated.
    """
    for path in paths:  # a broken config or history fails now, not after minutes of evaluating
        load_config(path / CONFIG, name=f"{CONFIG} of run {str(path)!r}")
        read_history(path)
    pending = [(p, why) for p in paths if (why := pending_evaluation(p, split)) is not None]
    for path, why in pending:
        if announce is not None:
            announce(path, why)
        evaluate_run(path, split, device=device, quiet=True)
    return [p for p, _ in pending]


def read_run(path: Path, split: str) -> ComparedRun:
    """The run at ``path`` with its stored ``split`` evaluation, checked: of its last epoch,
    over some datapoints, every value finite.

    Raises:
        ValueError: the evaluation is missing (naming the command that writes it), stale, empty
            or holds values that are not finite.
    """
    cfg = load_config(path / CONFIG, name=f"{CONFIG} of run {str(path)!r}")
    history = read_history(path)
    ev = load_evaluation(path, split)
    if ev.n == 0:
        raise ValueError(
            f"run {str(path)!r}: its stored {split} evaluation "
            f"({path / EVALUATION_DIR / f'{split}.npz'}) holds 0 datapoints, so there is no mean "
            f"to compare; compare on a split that has datapoints (--split), or evaluate this one "
            f"again: pvae evaluate {path} --split {split}"
        )
    last = history[-1].get("epoch")
    if ev.epoch is not None and last is not None and ev.epoch != last:
        raise ValueError(
            f"the stored {split} evaluation of run {str(path)!r} is of epoch {ev.epoch}, but the "
            f"run has trained to epoch {last}; evaluate it again with: pvae evaluate {path} "
            f"--split {split} (pvae compare does, unless --no-evaluate)"
        )
    for name, a in (("ELBO", ev.elbo), ("log p(x)", ev.log_px)):
        bad = 0 if a is None else int((~np.isfinite(a)).sum())
        if bad:  # one would make every mean and s.e. of the comparison NaN
            raise ValueError(
                f"run {str(path)!r}: {bad} of the {ev.n} stored {split} {name} values are not "
                "finite (a datapoint the model gives no mass to, or a diverged model); a "
                "comparison of means needs them all finite"
            )
    said = set(flatten(canonical(cfg, defaults=False)))
    return ComparedRun(path, int(cfg.train.seed), canonical(cfg), said, history, ev)
