r"""Compare trained runs across seeds: pooled final metrics, paired per-datapoint differences of
log p(x) on the same test points, and overlaid validation curves (``pvae compare``).

A ranking of models from one training run each confuses the Monte Carlo error of an estimate
with the variability of training itself. Here every configuration is trained with several seeds
(``pvae train --seeds 0 1 2``), every run is evaluated per datapoint (``pvae evaluate RUN``
stores ``RUN/evaluation/<split>.npz`` through :func:`save_evaluation`), and :func:`compare`
reports, for runs grouped by configuration (the seed pooled):

* each group's final metrics as mean ± standard error over its :math:`n` seeds,
  :math:`\bar m \pm s_m/\sqrt n` with :math:`s_m` the sample standard deviation of the per-seed
  values :math:`m_1, \dots, m_n` (one seed: no s.e.);
* per datapoint :math:`i` of the same test set (checked by a fingerprint of the data), the
  difference of a group :math:`A` from the reference group :math:`B`

  .. math::

      d_i = \frac1{n_A}\sum_{s=1}^{n_A} \log\hat p_{A,s}(x_i)
          - \frac1{n_B}\sum_{s=1}^{n_B} \log\hat p_{B,s}(x_i),
      \qquad \bar d = \frac1N \sum_i d_i,

  with three standard errors of :math:`\bar d` that answer three questions:

  - **over datapoints**, :math:`\mathrm{sd}(d)/\sqrt N`: how much :math:`\bar d` would move on
    another test set of :math:`N` points drawn like this one, for these trained models. Pairing
    on the same points removes the spread of difficulty between datapoints, which dominates an
    unpaired comparison of two means.
  - **over seeds**, :math:`\sqrt{s_A^2/n_A + s_B^2/n_B}` with :math:`s_G` the standard deviation
    of the per-seed means :math:`\frac1N\sum_i \log\hat p_{G,s}(x_i)` (their difference of means
    is :math:`\bar d` exactly): how much :math:`\bar d` would move if the models were retrained
    with other seeds, on this test set. Needs two seeds in both groups.
  - **Monte Carlo**, :math:`\sqrt{\sum_i \big(\sum_s \mathrm{se}_{A,s,i}^2/n_A^2
    + \sum_s \mathrm{se}_{B,s,i}^2/n_B^2\big)}/N` from the per-datapoint importance-sampling
    errors: how much :math:`\bar d` would move with other importance samples. Usually the smallest.

  A difference is worth stating when it is well beyond (say, twice) the larger of the first two.

References:
    Burda, Grosse & Salakhutdinov (2015), *Importance weighted autoencoders* (log p(x)).
    Bouthillier et al. (2021), *Accounting for variance in machine learning benchmarks*, MLSys
    (seeds as a source of variance to report).

Example:
    From a shell, three priors with three seeds each::

        for p in standard_normal mog vamp; do
            pvae train --set model.prior.name=$p --seeds 0 1 2 --out runs/$p --quiet
            for s in 0 1 2; do pvae evaluate runs/$p/seed-$s > /dev/null; done
        done
        pvae compare runs/standard_normal runs/mog runs/vamp --reference 0 --plot curves.png

    or from Python, on runs trained and evaluated (:func:`evaluate_run`) the same way:

    >>> from pvae.compare import compare  # doctest: +SKIP
    >>> c = compare(["runs/standard_normal", "runs/vamp"], reference=0)  # doctest: +SKIP
    >>> print(c.table())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pvae._checks import figure_path, positive_int
from pvae.checkpoint import load_checkpoint
from pvae.evaluation.elbo import ElboEstimate
from pvae.evaluation.log_px import LogPxEstimate
from pvae.files import atomic_write_bytes, dumps, finite
from pvae.rundir import CHECKPOINT, CONFIG, EVALUATION_DIR, METRICS
from pvae.runs import read_run_config

__all__ = [
    "Comparison",
    "Difference",
    "Evaluation",
    "Group",
    "Pooled",
    "add_parser",
    "compare",
    "data_fingerprint",
    "evaluate_run",
    "load_evaluation",
    "run",
    "save_evaluation",
]

FORMAT = "pvae-evaluation"
VERSION = 1

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

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_PER_DATAPOINT = ("elbo", "elbo_se", "log_px", "log_px_se", "log_px_ess", "log_px_khat")


# --------------------------------------------------------------------------- per-datapoint store


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
    :func:`compare` pairs datapoints only across runs that scored the same points), ``epoch``,
    ``k`` and ``meta``. It is read back with :func:`load_evaluation`; no pickle is involved.

    Args:
        run_dir: The run folder (must exist).
        split: The split's name, used as the file name (``"test"``, ``"val"``, ``"train"``).
        x: The evaluated data, ``(N, ...)``, as the model saw them.
        elbo: :func:`~pvae.evaluate_elbo` of the run's model on ``x``.
        log_px: :func:`~pvae.log_px` on ``x``, if computed.
        epoch: The checkpoint's epoch (lets :func:`compare` refuse a stale evaluation).
        meta: Other JSON-able settings to record (evaluation seed, number of samples...).

    Returns:
        The path written.

    Example:
        >>> import tempfile, torch, pvae
        >>> from pvae.compare import save_evaluation, load_evaluation
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
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError(f"x must be a tensor of shape (N, ...), got {type(x).__name__}")
    if not isinstance(elbo, ElboEstimate):
        raise TypeError(f"elbo must be a pvae.ElboEstimate, got {type(elbo).__name__}")
    if log_px is not None and not isinstance(log_px, LogPxEstimate):
        raise TypeError(f"log_px must be a pvae.LogPxEstimate or None, got {type(log_px).__name__}")
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
    header = {
        "format": FORMAT,
        "version": VERSION,
        "split": split,
        "n": n,
        "fingerprint": data_fingerprint(x),
        "epoch": epoch,
        "k": None if log_px is None else int(log_px.k),
        "meta": dict(meta or {}),
    }
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta must hold JSON values (finite numbers, strings...): {err}") from None
    buf = io.BytesIO()
    np.savez(buf, header=np.array(text), **arrays)
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
            stored = {name: f[name] for name in f.files}
        header = json.loads(str(stored.pop("header")))
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not a readable pvae evaluation ({type(err).__name__}: {err}); write it "
            f"again with: pvae evaluate {run_dir} --split {split}"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pvae evaluation (expected format {FORMAT!r})")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise ValueError(
            f"{path} has version {header.get('version')!r}; this pvae reads versions up to "
            f"{VERSION}"
        )
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


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    *,
    k: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Evaluation:
    """Evaluate a run folder's model on one split of its data and store the result per
    datapoint (:func:`save_evaluation`): ``pvae evaluate RUN --split SPLIT`` without the
    printed report and diagnostics.

    Args:
        run_dir: The run folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        k: Importance samples for log p(x) (default: the run's ``eval.k``; 0 skips it).
        num_samples: Latent samples per datapoint for the ELBO (default ``eval.num_samples``).
        seed: Seed of the Monte Carlo draws.
        device: Where to evaluate.

    Returns:
        The stored :class:`Evaluation`.
    """
    import pyro

    from pvae.evaluation import evaluate_elbo
    from pvae.evaluation import log_px as log_px_fn
    from pvae.runs import load_run

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of 'train', 'val', 'test', got {split!r}")
    run_ = load_run(run_dir, device=device)
    if run_.data is None:  # load_run with data=True always loads them
        raise ValueError(f"run {str(run_dir)!r}: its data could not be loaded")
    cfg = run_.config.eval
    k = cfg.k if k is None else k
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer (0 to skip log p(x)), got {k!r}")
    if k < 0:
        raise ValueError(f"k must be a positive integer (or 0 to skip log p(x)), got {k}")
    num_samples = positive_int(
        "num_samples", cfg.num_samples if num_samples is None else num_samples
    )
    pyro.set_rng_seed(seed)  # before observed(): a dynamically binarized split, drawn alike
    x = run_.data.split(split).observed().to(device)
    elbo = evaluate_elbo(run_.vae, x, num_samples=num_samples, batch_size=cfg.batch_size)
    lp = log_px_fn(run_.vae, x, k=k, seed=seed) if k > 0 else None
    save_evaluation(
        run_dir,
        split,
        x,
        elbo=elbo,
        log_px=lp,
        epoch=int(run_.checkpoint["epoch"]),
        meta={"seed": seed, "num_samples": num_samples},
    )
    return load_evaluation(run_dir, split)


# --------------------------------------------------------------------------- grouping


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _group_key(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config without the seed and output-only settings."""
    return {
        k: v
        for k, v in _flatten(config).items()
        if k not in IGNORED_KEYS and k.split(".", 1)[0] not in IGNORED_SECTIONS
    }


def _show(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _expand(runs: Sequence[str | Path]) -> list[Path]:
    """Run folders: each argument a run (it holds ``config.toml``) or a folder of runs (such as
    the ``OUT`` of ``pvae train --seeds``, holding ``seed-0``, ``seed-1``...)."""
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


def _history(run_dir: Path) -> list[dict[str, float]]:
    """The per-epoch records: ``metrics.json``, else the checkpoint's history."""
    path = run_dir / METRICS
    if path.is_file():
        try:
            history = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not readable JSON ({err})") from None
    else:
        history = load_checkpoint(run_dir / CHECKPOINT)["history"]
    if not isinstance(history, list) or not history:
        raise ValueError(f"run {str(run_dir)!r} has no completed epoch in {path.name}")
    return history


@dataclass
class _Run:
    path: Path
    seed: int
    config: dict[str, Any]
    history: list[dict[str, float]]
    evaluation: Evaluation


def _read(path: Path, split: str) -> _Run:
    cfg = read_run_config(path).to_dict()
    history = _history(path)
    ev = load_evaluation(path, split)
    last = history[-1].get("epoch")
    if ev.epoch is not None and last is not None and ev.epoch != last:
        raise ValueError(
            f"the stored {split} evaluation of run {str(path)!r} is of epoch {ev.epoch}, but the "
            f"run has trained to epoch {last}; evaluate it again with: pvae evaluate {path} "
            f"--split {split}"
        )
    for name, a in (("ELBO", ev.elbo), ("log p(x)", ev.log_px)):
        bad = 0 if a is None else int((~np.isfinite(a)).sum())
        if bad:  # one would make every mean and s.e. of the comparison NaN
            raise ValueError(
                f"run {str(path)!r}: {bad} of the {ev.n} stored {split} {name} values are not "
                "finite (a datapoint the model gives no mass to, or a diverged model); a "
                "comparison of means needs them all finite"
            )
    return _Run(path, int(cfg["train"]["seed"]), cfg, history, ev)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Pooled:
    """A metric over a group's seeds: mean and s.e. :math:`s/\\sqrt n` (``None`` for one seed).

    Attributes:
        mean: Mean over seeds.
        se: Standard error over seeds, or ``None`` with one seed.
        values: The per-seed values, in the group's seed order.
    """

    mean: float
    se: float | None
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Pooled:
        a = np.asarray(values, dtype=np.float64)
        se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None
        return cls(float(a.mean()), se, tuple(float(v) for v in a))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {'—' if self.se is None else f'{self.se:.3f}'}"


@dataclass
class Group:
    """Runs with the same configuration but for the seed.

    Attributes:
        label: ``key=value`` of the settings that tell this group from the others (or the
            runs' folder name when there is one group).
        settings: Those settings, flattened (``{"model.prior.name": "vamp"}``).
        runs: The run folders, by seed.
        seeds: Their ``train.seed``.
        metrics: Final metrics pooled over seeds: ``train_elbo`` and ``val_elbo`` (last epoch),
            ``val_log_px`` (the last curve point, on ``eval.curve_subset`` validation points),
            ``<split>_elbo`` and ``<split>_log_px`` (stored evaluation, mean over datapoints).
    """

    label: str
    settings: dict[str, Any]
    runs: list[Path]
    seeds: list[int]
    metrics: dict[str, Pooled]
    _runs: list[_Run] = field(repr=False)

    def per_datapoint(self, metric: str) -> np.ndarray:
        """``(n_seeds, N)`` stored per-datapoint values of ``"log_px"`` or ``"elbo"``."""
        rows = [getattr(r.evaluation, metric) for r in self._runs]
        if any(row is None for row in rows):
            raise ValueError(f"group {self.label!r}: not every run stored {metric}")
        return np.stack(rows)


@dataclass(frozen=True)
class Difference:
    """Paired difference of a group from the reference group on the same datapoints.

    ``mean`` is :math:`\\bar d`; the three errors are defined in :mod:`pvae.compare`.

    Attributes:
        group: The group's label.
        reference: The reference group's label.
        metric: ``"log_px"`` or ``"elbo"`` (per datapoint, nats).
        n_points: Number of datapoints N.
        mean: Mean over datapoints of the difference of seed-averaged values.
        se_datapoints: sd(d)/√N: test-set sampling error, for these trained models.
        se_seeds: Seed-to-seed (training) error, ``None`` unless both groups have ≥ 2 seeds.
        se_mc: Monte Carlo (importance-sampling) error, ``None`` if not available.
    """

    group: str
    reference: str
    metric: str
    n_points: int
    mean: float
    se_datapoints: float
    se_seeds: float | None
    se_mc: float | None


def _difference(a: Group, b: Group, metric: str) -> Difference:
    la, lb = a.per_datapoint(metric), b.per_datapoint(metric)
    d = la.mean(0) - lb.mean(0)
    n = d.size
    se_dp = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    ma, mb = la.mean(1), lb.mean(1)
    se_seeds = (
        math.sqrt(ma.var(ddof=1) / ma.size + mb.var(ddof=1) / mb.size)
        if ma.size > 1 and mb.size > 1
        else None
    )
    se_mc = None
    se_name = "log_px_se" if metric == "log_px" else "elbo_se"
    sa = [r.evaluation.arrays.get(se_name) for r in a._runs]
    sb = [r.evaluation.arrays.get(se_name) for r in b._runs]
    if all(s is not None for s in sa + sb):
        var = (np.stack(sa) ** 2).sum(0) / len(sa) ** 2 + (np.stack(sb) ** 2).sum(0) / len(sb) ** 2
        total = float(np.sqrt(var.sum()) / n)
        se_mc = total if math.isfinite(total) else None
    return Difference(a.label, b.label, metric, n, float(d.mean()), se_dp, se_seeds, se_mc)


# --------------------------------------------------------------------------- the comparison


_COLUMNS = {
    "train_elbo": "train ELBO",
    "val_elbo": "val ELBO",
    "val_log_px": "val log p(x)",
}


@dataclass
class Comparison:
    """What :func:`compare` returns: groups of runs, their pooled metrics and paired differences.

    Attributes:
        split: The evaluated split the per-datapoint metrics are of.
        groups: The groups, in the order their first run was given.
        reference: Label of the group the differences are taken from.
        metric: The per-datapoint metric of the differences (``"log_px"`` when every run stored
            it, else ``"elbo"``).
        differences: One :class:`Difference` per group other than the reference.
        n_points: Number of evaluated datapoints (the same for every run).
        k: Importance samples of the stored log p(x) of each run (``None`` where not stored).
        notes: Caveats to print with the numbers.
    """

    split: str
    groups: list[Group]
    reference: str
    metric: str
    differences: list[Difference]
    n_points: int
    k: dict[str, int | None]
    notes: list[str]

    def _column_names(self) -> list[str]:
        names = [*_COLUMNS, f"{self.split}_elbo", f"{self.split}_log_px"]
        return [m for m in names if any(m in g.metrics for g in self.groups)]

    def table(self) -> str:
        """Aligned text: one row per group (metrics as mean ± s.e. over seeds), then the paired
        differences from the reference group, then the notes."""
        cols = self._column_names()
        titles = {
            **_COLUMNS,
            f"{self.split}_elbo": f"{self.split} ELBO",
            f"{self.split}_log_px": f"{self.split} log p(x)",
        }
        rows = [["group", "seeds", *(titles[c] for c in cols)]]
        for g in self.groups:
            mark = " *" if g.label == self.reference else ""
            cells = [str(g.metrics[c]) if c in g.metrics else "n/a" for c in cols]
            rows.append([g.label + mark, str(len(g.seeds)), *cells])
        lines = [
            "final metrics, nats per datapoint: mean ± s.e. over seeds (— : 1 seed, no s.e.); "
            "* = reference",
            *_align(rows),
            "",
            f"paired differences of {self.split} "
            f"{'log p(x)' if self.metric == 'log_px' else 'ELBO'} from {self.reference} on the "
            f"same {self.n_points} datapoints (nats; + = better than the reference)",
        ]
        diff_rows = [["group", "difference", "s.e. datapoints", "s.e. seeds", "s.e. Monte Carlo"]]
        for d in self.differences:
            diff_rows.append(
                [
                    d.group,
                    f"{d.mean:+.3f}",
                    f"{d.se_datapoints:.3f}",
                    "—" if d.se_seeds is None else f"{d.se_seeds:.3f}",
                    "n/a" if d.se_mc is None else f"{d.se_mc:.3f}",
                ]
            )
        lines += _align(diff_rows) if self.differences else ["  (one group: nothing to compare)"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        """Plain, strictly JSON-able data (non-finite numbers as ``None``)."""
        return finite(
            {
                "split": self.split,
                "metric": self.metric,
                "reference": self.reference,
                "n_points": self.n_points,
                "k": self.k,
                "groups": [
                    {
                        "label": g.label,
                        "settings": g.settings,
                        "runs": [str(r) for r in g.runs],
                        "seeds": g.seeds,
                        "metrics": {
                            name: {"mean": p.mean, "se": p.se, "values": list(p.values)}
                            for name, p in g.metrics.items()
                        },
                    }
                    for g in self.groups
                ],
                "differences": [vars(d).copy() for d in self.differences],
                "notes": self.notes,
            }
        )

    def plot(
        self,
        path: str | Path | None = None,
        *,
        skip: int | None = None,
        figsize: tuple[float, float] | None = None,
        dpi: int | None = None,
    ) -> Any:
        """Validation curves overlaid: per group, the validation ELBO each epoch (solid) and the
        validation log p(x) curve points (dashed, markers) where recorded, each the mean over
        the group's seeds with a band of ± one s.e. over seeds.

        Args:
            path: Where to save the figure (format by suffix, as :mod:`pvae.plotting` does).
            skip: Epochs left out of the y-limits, whose bounds are far below the rest
                (``None``: 10% of the epochs, at least 1, when there are 3 or more; 0 keeps all).
            figsize: ``(width, height)`` in inches (``None``: a text width).
            dpi: Resolution (``None``: :data:`pvae.plotting.style.DPI`).

        Returns:
            The matplotlib figure.
        """
        from pvae import plotting

        return plotting.comparison(self, path, skip=skip, figsize=figsize, dpi=dpi)


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]


def _final(history: list[dict[str, float]], key: str) -> float | None:
    for h in reversed(history):
        if h.get(key) is not None:
            return float(h[key])
    return None


def _groups(runs: list[_Run], split: str) -> list[Group]:
    keys: list[dict[str, Any]] = []
    members: list[list[_Run]] = []
    for r in runs:
        key = _group_key(r.config)
        for i, k in enumerate(keys):
            if k == key:
                members[i].append(r)
                break
        else:
            keys.append(key)
            members.append([r])
    differing = sorted(
        name
        for name in set().union(*keys)
        if len({json.dumps(k.get(name), sort_keys=True) for k in keys}) > 1
    )
    groups = []
    for key, rs in zip(keys, members, strict=True):
        rs.sort(key=lambda r: r.seed)
        for a, b in itertools.pairwise(rs):
            if a.seed == b.seed:
                raise ValueError(
                    f"runs {str(a.path)!r} and {str(b.path)!r} have the same configuration and "
                    f"the same train.seed ({a.seed}): they are repeats of one run, not "
                    "independent seeds; train the others with pvae train --seeds"
                )
        settings = {k: key[k] for k in differing if k in key}
        if settings:
            label = ", ".join(f"{k}={_show(v)}" for k, v in settings.items())
        else:
            paths = [r.path.resolve() for r in rs]
            common = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0]
            label = common.name or str(common)
        metrics: dict[str, Pooled] = {}
        for name in _COLUMNS:
            values = [_final(r.history, name) for r in rs]
            if all(v is not None for v in values):
                metrics[name] = Pooled.of(values)  # type: ignore[arg-type]
        metrics[f"{split}_elbo"] = Pooled.of([float(r.evaluation.elbo.mean()) for r in rs])
        if all(r.evaluation.log_px is not None for r in rs):
            lp = [float(r.evaluation.log_px.mean()) for r in rs]  # type: ignore[union-attr]
            metrics[f"{split}_log_px"] = Pooled.of(lp)
        groups.append(
            Group(label, settings, [r.path for r in rs], [r.seed for r in rs], metrics, rs)
        )
    return groups


def _pick_reference(groups: list[Group], reference: str | int | None, metric: str) -> Group:
    if reference is None:  # the best group by its pooled mean
        return max(groups, key=lambda g: g.metrics[metric].mean)
    if isinstance(reference, int) and not isinstance(reference, bool):
        if not 0 <= reference < len(groups):
            raise ValueError(
                f"reference must be a group index in [0, {len(groups)}), got {reference}"
            )
        return groups[reference]
    if isinstance(reference, (str, Path)):
        for g in groups:
            if str(reference) == g.label or any(
                Path(reference).resolve() == r.resolve() for r in g.runs
            ):
                return g
        if isinstance(reference, str) and reference.isdigit():  # an index from the command line
            return _pick_reference(groups, int(reference), metric)
        raise ValueError(
            f"reference {str(reference)!r} is neither a group label, one of the runs nor a "
            f"group index; the groups are {[g.label for g in groups]}"
        )
    raise TypeError(
        f"reference must be a group label, run folder, index or None, got {reference!r}"
    )


def compare(
    runs: Sequence[str | Path],
    split: str = "test",
    *,
    reference: str | int | None = None,
) -> Comparison:
    """Group runs by configuration (seeds pooled) and compare them on the same datapoints.

    Every run needs its stored per-datapoint evaluation of ``split`` (``pvae evaluate RUN``, or
    :func:`evaluate_run`), of its last epoch, and all of them must have scored the same points
    (the fingerprints in the evaluations must match). Runs are grouped by their ``config.toml``
    with ``train.seed`` and output-only settings (``IGNORED_KEYS``, a ``[log]`` section)
    left out. The statistics are defined in :mod:`pvae.compare`.

    Args:
        runs: Run folders, or folders of runs (``OUT`` of ``pvae train --seeds``).
        split: The evaluated split to compare on.
        reference: The group the paired differences are taken from: its label, one of its run
            folders, or its index; ``None``: the best group by mean log p(x) (ELBO when not every
            run stored log p(x)).

    Returns:
        A :class:`Comparison` (``.table()``, ``.to_dict()``, ``.plot(path)``).

    Raises:
        ValueError: a missing run folder or evaluation (the message names the run and the
            command that makes it), a stale evaluation, runs evaluated on different datapoints
            (naming two of them), or two runs of one configuration with the same seed.
    """
    read = [_read(p, split) for p in _expand(runs)]
    first = read[0]
    for r in read[1:]:
        if (r.evaluation.n, r.evaluation.fingerprint) != (
            first.evaluation.n,
            first.evaluation.fingerprint,
        ):
            raise ValueError(
                f"runs {str(first.path)!r} and {str(r.path)!r} were evaluated on different "
                f"{split} datapoints ({first.evaluation.n} vs {r.evaluation.n} points, data "
                f"fingerprints {first.evaluation.fingerprint[:12]}… vs "
                f"{r.evaluation.fingerprint[:12]}…): per-datapoint differences need the same "
                "data (same [data] settings); compare only runs trained on the same data"
            )
    groups = _groups(read, split)
    metric = "log_px" if all(r.evaluation.log_px is not None for r in read) else "elbo"
    ref = _pick_reference(groups, reference, f"{split}_{metric}")
    differences = [_difference(g, ref, metric) for g in groups if g is not ref]
    k = {str(r.path): r.evaluation.k for r in read}
    notes = []
    if metric == "elbo":
        missing = [str(r.path) for r in read if r.evaluation.log_px is None]
        notes.append(
            f"compared on the ELBO: no stored log p(x) for {missing[:3]}"
            f"{'…' if len(missing) > 3 else ''} (pvae evaluate RUN with --k > 0)"
        )
    elif len(set(k.values())) > 1:
        notes.append(
            f"log p(x) was estimated with different k ({sorted(set(k.values()))}): the estimate "
            "is biased low by an amount that shrinks with k, so differences mix in that bias"
        )
    if any(len(g.seeds) == 1 for g in groups):
        notes.append(
            "a group with 1 seed has no s.e. over seeds; train more: pvae train --seeds 0 1 2"
        )
    if any("val_log_px" in g.metrics for g in groups):
        notes.append("val log p(x) is the last IWAE curve point, on eval.curve_subset points")
    return Comparison(split, groups, ref.label, metric, differences, first.evaluation.n, k, notes)


# --------------------------------------------------------------------------- command line


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``pvae compare`` on the ``pvae`` parser's subparsers; it runs :func:`run`."""
    c = subparsers.add_parser(
        "compare",
        help="compare runs across seeds: pooled metrics, paired differences, curves",
        description=(
            "Group runs by configuration (seeds pooled) and report final metrics as mean ± s.e. "
            "over seeds, and paired per-datapoint differences of log p(x) on the same "
            "datapoints. Every run needs its stored evaluation: pvae evaluate RUN."
        ),
    )
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or folders of runs")
    c.add_argument("--split", default="test", choices=("train", "val", "test"))
    c.add_argument(
        "--reference",
        default=None,
        metavar="GROUP",
        help="group label or run folder the differences are from (default: the best group)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--plot", metavar="PNG", help="also save the overlaid validation curves")
    c.set_defaults(func=run)
    return c


def run(args: argparse.Namespace) -> int:
    """``pvae compare``: print the table (or JSON) and save the plot; returns the exit status."""
    result = compare(args.runs, split=args.split, reference=args.reference)
    if args.plot:
        result.plot(figure_path("--plot", args.plot))
    if args.json:
        print(dumps(result.to_dict()))
    else:
        print(result.table())
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
