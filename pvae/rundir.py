"""A run folder on disk: the one place that knows its layout, and reads and writes what is in it.

A run folder (``pvae train --out RUN``) holds::

    RUN/config.toml          the whole configuration, defaults filled in
    RUN/checkpoint.pt        model, optimizer, epoch, RNG states, history (pvae.checkpoint)
    RUN/metrics.json         train/validation metrics per epoch
    RUN/metrics.csv          the same, one row per epoch ([log] csv)
    RUN/tensorboard/         TensorBoard scalars ([log] tensorboard)
    RUN/curves.png           training curves; reconstructions.png and samples.png for a VAE
    RUN/evaluation/<split>.npz   stored per-datapoint evaluations (pvae evaluate)
    RUN/<what>.png           pvae plot's figures (without --out)
    RUN/samples-<n>-seed<s>.png  pvae sample's grids (without --out)
    RUN/.lock                the live writer's lock (pvae.training.runlock)

and ``pvae train --seeds 0 1 2 --out OUT`` writes one such folder per seed, ``OUT/seed-0``...

Besides the names: :func:`find_runs` finds run folders, :func:`read_run_config` and
:func:`read_history` read a run's configuration and per-epoch records, :func:`save_evaluation`
and :func:`load_evaluation` write and read a stored per-datapoint evaluation (an
:class:`Evaluation`: ``.npz`` arrays with a JSON header, no pickle).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pvae.checkpoint import load_checkpoint
from pvae.config import Config, load_config
from pvae.evaluation.elbo import ElboEstimate
from pvae.evaluation.log_px import LogPxEstimate
from pvae.files import atomic_write_bytes

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
    "Evaluation",
    "data_fingerprint",
    "find_runs",
    "load_evaluation",
    "read_history",
    "read_run_config",
    "save_evaluation",
    "seed_dir",
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


def seed_dir(out: str | Path, seed: int) -> Path:
    """The run folder of one seed in ``OUT`` of ``pvae train --seeds``: ``OUT/seed-<seed>``."""
    return Path(out) / f"seed-{seed}"


EVALUATION_FORMAT = "pvae-evaluation"
EVALUATION_VERSION = 1

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------- config and history


def read_run_config(run_dir: str | Path) -> Config:
    """The :class:`~pvae.config.Config` stored in a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} is not a pvae run folder: {CONFIG} is missing")
    return load_config(path, name=f"{CONFIG} of run {str(run_dir)!r}")


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """A run's per-epoch records: ``metrics.json``, else the checkpoint's history.

    Raises:
        ValueError: unreadable JSON, not a list of per-epoch records (JSON objects of numbers),
            or no completed epoch.
        CheckpointError: no ``metrics.json`` and the checkpoint is missing or unreadable.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if path.is_file():
        try:
            history = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not readable JSON ({err})") from None
    else:
        history = load_checkpoint(run_dir / CHECKPOINT)["history"]
        path = run_dir / CHECKPOINT
    if not isinstance(history, list) or not history:
        raise ValueError(f"run {str(run_dir)!r} has no completed epoch in {path.name}")
    for i, record in enumerate(history):
        _check_record(path, i, record)
    return history


def _check_record(path: Path, i: int, record: Any) -> None:
    """One per-epoch record: an object of numbers (``null`` where a value is missing)."""
    if not isinstance(record, dict):
        raise ValueError(
            f"{path} is not a pvae history: entry {i} is {json.dumps(record)[:60]}, expected an "
            'object of per-epoch metrics such as {"epoch": 1, "train_elbo": -90.1}'
        )
    for key, value in record.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(
                f"{path} is not a pvae history: entry {i} has {key!r} = {value!r}, expected a "
                "number"
            )


def find_runs(runs: Sequence[str | Path]) -> list[Path]:
    """Run folders: each argument a run (it holds ``config.toml``) or a folder of runs (such as
    the ``OUT`` of ``pvae train --seeds``, holding ``seed-0``, ``seed-1``..., taken in natural
    order: ``seed-2`` before ``seed-10``).

    Raises:
        TypeError: ``runs`` is not a sequence of paths.
        ValueError: none given, a path that does not exist or holds no run, or a run given twice.
    """
    if isinstance(runs, (str, Path)) or not isinstance(runs, Sequence):
        raise TypeError(f"runs must be a sequence of run folders, got {runs!r}")
    if not runs:
        raise ValueError("runs must name at least one run folder, got none")
    out: list[Path] = []
    for r in runs:
        path = Path(r)
        if (path / CONFIG).is_file():
            out.append(path)
        elif not path.exists():
            raise ValueError(f"run folder {str(path)!r} does not exist")
        else:
            inner = sorted(
                (p for p in path.iterdir() if (p / CONFIG).is_file()) if path.is_dir() else (),
                key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)],
            )
            if not inner:
                raise ValueError(
                    f"{str(path)!r} is not a pvae run folder ({CONFIG} is missing) nor a folder "
                    "of runs; train one with: pvae train --out RUN (or --seeds 0 1 2)"
                )
            out.extend(inner)
    seen: dict[Path, Path] = {}
    for p in out:
        real = p.resolve()
        if real in seen:
            raise ValueError(f"run {str(p)!r} is given twice (also as {str(seen[real])!r})")
        seen[real] = p
    return out


# --------------------------------------------------------------------------- stored evaluations


def data_fingerprint(x: Tensor) -> str:
    """SHA-256 of a data tensor's shape and values (as float64, so the dtype the data were
    loaded in does not matter): two evaluations with the same fingerprint scored the same points
    in the same order."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Evaluation:
    """A run's stored per-datapoint evaluation of one split (arrays of shape ``(N,)``, nats).

    Attributes:
        run: The run folder.
        split: The split's name (``"test"``...).
        fingerprint: :func:`data_fingerprint` of the evaluated data.
        n: Number of datapoints.
        epoch: The checkpoint's epoch when evaluated (``None`` if not recorded).
        elbo: ELBO per datapoint.
        elbo_se: Its Monte Carlo s.e. (NaN with one sample).
        log_px: Importance-weighted log p(x) per datapoint, or ``None``.
        log_px_se: Its Monte Carlo s.e., or ``None``.
        k: Importance samples of ``log_px``, or ``None``.
        meta: Free-form settings recorded with it (seed, number of samples...).
        arrays: Every stored per-datapoint array by name (also ESS and k̂ where stored).
    """

    run: Path
    split: str
    fingerprint: str
    n: int
    epoch: int | None
    elbo: np.ndarray
    elbo_se: np.ndarray
    log_px: np.ndarray | None
    log_px_se: np.ndarray | None
    k: int | None
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    @classmethod
    def of(
        cls,
        run_dir: str | Path,
        split: str,
        x: Tensor,
        *,
        elbo: ElboEstimate,
        log_px: LogPxEstimate | None = None,
        epoch: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Evaluation:
        """The evaluation of ``x`` in memory, as :func:`save_evaluation` would store it (the
        arguments are those of :func:`save_evaluation`, checked alike; nothing is written, and
        ``split`` may be any label until :meth:`save`)."""
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise TypeError(f"x must be a tensor of shape (N, ...), got {type(x).__name__}")
        if not isinstance(elbo, ElboEstimate):
            raise TypeError(f"elbo must be a pvae.ElboEstimate, got {type(elbo).__name__}")
        if log_px is not None and not isinstance(log_px, LogPxEstimate):
            raise TypeError(
                f"log_px must be a pvae.LogPxEstimate or None, got {type(log_px).__name__}"
            )
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise TypeError(f"epoch must be an int or None, got {epoch!r}")
        n = int(x.shape[0])
        arrays = {
            "elbo": _float64("elbo.elbo", elbo.elbo, n),
            "elbo_se": _float64("elbo.se", elbo.se, n),
        }
        if log_px is not None:
            arrays.update(
                log_px=_float64("log_px.log_px", log_px.log_px, n),
                log_px_se=_float64("log_px.se", log_px.se, n),
                log_px_ess=_float64("log_px.ess", log_px.ess, n),
                log_px_khat=_float64("log_px.khat", log_px.khat, n),
            )
        meta = dict(meta or {})
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"meta must hold JSON values (finite numbers, strings...): {err}"
            ) from None
        k = None if log_px is None else int(log_px.k)
        return cls(
            run=Path(run_dir),
            split=split,
            fingerprint=data_fingerprint(x),
            n=n,
            epoch=epoch,
            elbo=arrays["elbo"],
            elbo_se=arrays["elbo_se"],
            log_px=arrays.get("log_px"),
            log_px_se=arrays.get("log_px_se"),
            k=k,
            meta=meta,
            arrays=arrays,
        )

    def save(self) -> Path:
        """Write ``RUN/evaluation/<split>.npz`` (atomically; the folder ``RUN`` must exist)."""
        path = _evaluation_path(self.run, self.split)
        header = {
            "format": EVALUATION_FORMAT,
            "version": EVALUATION_VERSION,
            "split": self.split,
            "n": self.n,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "k": self.k,
            "meta": self.meta,
        }
        buf = io.BytesIO()
        np.savez(buf, header=np.array(json.dumps(header, allow_nan=False)), **self.arrays)
        path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        return path


def _evaluation_path(run_dir: str | Path, split: str) -> Path:
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise ValueError(
            "split must be a name such as 'test', 'val' or 'train' (letters, digits, '_', '.', "
            f"'-'), got {split!r}"
        )
    return Path(run_dir) / EVALUATION_DIR / f"{split}.npz"


def _float64(name: str, t: Tensor, n: int) -> np.ndarray:
    a = t.detach().to("cpu", torch.float64).numpy().reshape(-1)
    if a.shape != (n,):
        raise ValueError(f"{name} must hold one value per datapoint ({n}), got shape {a.shape}")
    return a


def save_evaluation(
    run_dir: str | Path,
    split: str,
    x: Tensor,
    *,
    elbo: ElboEstimate,
    log_px: LogPxEstimate | None = None,
    epoch: int | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Store a run's per-datapoint evaluation of ``x`` as ``RUN/evaluation/<split>.npz``.

    The file (written atomically) holds float64 arrays ``elbo``, ``elbo_se`` and, with
    ``log_px``, ``log_px``, ``log_px_se``, ``log_px_ess``, ``log_px_khat``, plus a JSON header
    with the number of points, the :func:`data_fingerprint` of ``x`` (so that
    :func:`~pvae.compare.compare` pairs datapoints only across runs that scored the same
    points), ``epoch``, ``k`` and ``meta``. It is read back with :func:`load_evaluation`; no
    pickle is involved.

    Args:
        run_dir: The run folder (must exist).
        split: The split's name, used as the file name (``"test"``, ``"val"``, ``"train"``).
        x: The evaluated data, ``(N, ...)``, as the model saw them.
        elbo: :func:`~pvae.evaluate_elbo` of the run's model on ``x``.
        log_px: :func:`~pvae.log_px` on ``x``, if computed.
        epoch: The checkpoint's epoch (lets :func:`~pvae.compare.compare` refuse a stale
            evaluation).
        meta: Other JSON-able settings to record (evaluation seed, number of samples...).

    Returns:
        The path written.

    Example:
        >>> import tempfile, torch, pvae
        >>> from pvae.rundir import save_evaluation, load_evaluation
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
        >>> x = torch.ones(3, 4)
        >>> run = tempfile.mkdtemp()
        >>> _ = save_evaluation(run, "test", x, elbo=pvae.evaluate_elbo(vae, x))
        >>> load_evaluation(run, "test").n
        3
    """
    path = _evaluation_path(run_dir, split)
    if not Path(run_dir).is_dir():
        raise ValueError(f"run_dir {str(run_dir)!r} is not a folder")
    Evaluation.of(run_dir, split, x, elbo=elbo, log_px=log_px, epoch=epoch, meta=meta).save()
    return path


# The header's entries: name → (a check, what it must be).
_HEADER = {
    "n": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer ≥ 0"),
    "split": (lambda v: isinstance(v, str), "a string"),
    "fingerprint": (lambda v: isinstance(v, str), "a string"),
    "epoch": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an int"),
    "k": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an int"),
    "meta": (lambda v: isinstance(v, dict), "an object"),
}
_OPTIONAL_HEADER = {"epoch": None, "k": None, "meta": {}}


def _check_header(path: Path, header: dict[str, Any], again: str) -> None:
    for name, (ok, expected) in _HEADER.items():
        if name not in header and name in _OPTIONAL_HEADER:
            continue
        if name not in header:
            raise ValueError(f"{path}: its header lacks {name!r}; {again}")
        if not ok(header[name]):
            raise ValueError(
                f"{path}: its header's {name!r} must be {expected}, got {header[name]!r}; {again}"
            )


def load_evaluation(run_dir: str | Path, split: str = "test") -> Evaluation:
    """Read ``RUN/evaluation/<split>.npz`` written by :func:`save_evaluation`.

    Raises:
        ValueError: the file is missing (the message gives the ``pvae evaluate`` command that
            writes it), unreadable, or not a pvae evaluation.
    """
    path = _evaluation_path(run_dir, split)
    if not path.is_file():
        raise ValueError(
            f"run {str(run_dir)!r} has no stored evaluation of its {split} split ({path} is "
            f"missing); write it with: pvae evaluate {run_dir} --split {split}"
        )
    again = f"write it again with: pvae evaluate {run_dir} --split {split}"
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
            stored = {name: f[name] for name in f.files}
        header = json.loads(str(stored.pop("header")))
    except (
        ValueError,  # also json.JSONDecodeError; numpy's "allow_pickle" advice is not passed on
        OSError,
        KeyError,
        EOFError,
        zipfile.BadZipFile,  # a truncated or corrupt file
        zlib.error,
    ) as err:
        reason = (
            "it holds pickled objects, which pvae never loads"
            if "pickle" in str(err)
            else f"{type(err).__name__}: {err}"
        )
        raise ValueError(f"{path} is not a readable pvae evaluation ({reason}); {again}") from None
    if not isinstance(header, dict) or header.get("format") != EVALUATION_FORMAT:
        raise ValueError(f"{path} is not a pvae evaluation (expected format {EVALUATION_FORMAT!r})")
    if not isinstance(header.get("version"), int) or header["version"] > EVALUATION_VERSION:
        raise ValueError(
            f"{path} has version {header.get('version')!r}; this pvae reads versions up to "
            f"{EVALUATION_VERSION}"
        )
    _check_header(path, header, again)
    n = header["n"]
    for name, a in stored.items():
        if a.shape != (n,):
            raise ValueError(f"{path}: array {name!r} has shape {a.shape}, expected ({n},)")
    if "elbo" not in stored:
        raise ValueError(f"{path} lacks the per-datapoint ELBO")
    return Evaluation(
        run=Path(run_dir),
        split=header["split"],
        fingerprint=header["fingerprint"],
        n=n,
        epoch=header.get("epoch"),
        elbo=stored["elbo"],
        elbo_se=stored.get("elbo_se", np.full(n, np.nan)),
        log_px=stored.get("log_px"),
        log_px_se=stored.get("log_px_se"),
        k=header.get("k"),
        meta=header.get("meta", {}),
        arrays=stored,
    )
