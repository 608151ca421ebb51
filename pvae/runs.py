"""Runs on disk: train from a :class:`~pvae.config.Config` into a folder
(:func:`train_from_config`), rebuild a trained model from that folder (config + checkpoint)
exactly as it was trained (:func:`load_run`), and evaluate it (:func:`evaluate_run`: what
``pvae evaluate`` reports and stores). The folder's layout is :mod:`pvae.rundir`'s."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn

from pvae import diagnostics
from pvae import distributed as D
from pvae._checks import positive_float, positive_int
from pvae.checkpoint import CheckpointError, check_state_matches, load_checkpoint
from pvae.config import Config, build_vae, load_data
from pvae.config.semisupervised import attach_labels
from pvae.datasets import DataSplits, as_float, read_array_file
from pvae.evaluation import ElboEstimate, LogPxEstimate, evaluate_elbo, log_px
from pvae.rundir import CHECKPOINT, CONFIG, Evaluation, read_run_config
from pvae.training import FitResult, fit, load_run_state, resolve_device
from pvae.training.callbacks import Callback, run_loggers
from pvae.training.changes import check_resume
from pvae.training.changes import note as note_changes
from pvae.training.checkpointing import check_run_dir
from pvae.training.mlflow import log_evaluation
from pvae.training.runlock import check_not_locked

__all__ = [
    "Run",
    "RunEvaluation",
    "evaluate_run",
    "load_run",
    "read_run_config",
    "train_from_config",
]


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

    @property
    def device(self) -> torch.device:
        """Where the model lives (any module: a user's need not have ``.device``)."""
        for t in itertools.chain(self.vae.parameters(), self.vae.buffers()):
            return t.device
        return torch.device("cpu")


def train_from_config(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    data: DataSplits | None = None,
    callbacks: Sequence[Callback] = (),
    allow_changes: Sequence[str] = (),
    mlflow_parent: str | None = None,
    mlflow_tags: Mapping[str, str] | None = None,
) -> FitResult:
    """Build data and model from ``cfg`` and train into ``run_dir`` (writing ``config.toml``).

    ``[log]`` turns on the loggers, which write into the run folder on the main process:
    ``metrics.csv`` (``log.csv``) and ``tensorboard/`` (``log.tensorboard``); a resumed run
    appends to them. ``log.mlflow`` logs the run to MLflow
    (:class:`~pvae.training.mlflow.MLflowLogger`), as a nested run of ``mlflow_parent`` if
    given, with ``mlflow_tags``. ``callbacks`` are passed to :func:`~pvae.fit` after those.

    A resume continues the same model on the same data: ``cfg`` may differ from the
    configuration the checkpoint records only in the keys of
    :data:`pvae.training.changes.RESUMABLE` (epochs, learning rate, clipping, batch size,
    device, ``[eval]``, ``[log]``...), compared by meaning. Any other change is refused, each key
    named with its old and new value, unless ``allow_changes`` names it (a key, or a table such
    as ``model``); an allowed change is recorded in the checkpoint and in ``config.toml``.

    Everything that can fail on bad input (config, a refused change, data, model shapes, a
    ``tensorboard`` package that is missing or fails to import) fails before :func:`~pvae.fit`
    writes anything, so a rejected run leaves nothing behind, and a rejected resume leaves its
    run as it was.
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
    if resume:
        allowed = check_resume(run_path, cfg.to_dict(), allow_changes)
        if main and not cfg.log.quiet:
            note_changes(run_path, allowed)
    elif allow_changes:
        raise ValueError(
            f"allow_changes (--allow-change) applies to a resumed run, got {list(allow_changes)} "
            "for a new one"
        )
    loggers = (
        run_loggers(cfg.log, run_path, mlflow_parent=mlflow_parent, mlflow_tags=mlflow_tags)
        if main
        else []
    )
    data = data if data is not None else load_data(cfg.data)
    pyro.set_rng_seed(cfg.train.seed)  # seeds the initial weights
    vae = build_vae(cfg.model, data.data_shape)
    attach_labels(vae, data, cfg.data)  # a semi-supervised model's labelled subset
    return fit(
        vae,
        data,
        cfg.options,
        callbacks=[*loggers, *callbacks],
        run_dir=run_path,
        resume=resume,
        config=cfg.to_dict(),
    )


def load_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    data: bool = True,
    quiet: bool = False,
) -> Run:
    """Rebuild the model, data and checkpoint of a run folder written by ``pvae train``.

    A run whose config names ``model.class`` imports that module, from ``sys.path`` as it is
    now (the ``pvae`` command puts the current directory first): a line on stderr says which
    file, unless ``quiet``.

    Args:
        run_dir: The run folder.
        device: Where to put the model.
        data: Also load the data the config names; without it (drawing from the prior needs no
            data) ``Run.data`` is ``None`` and the model is built for the checkpoint's data shape.
        quiet: No line on stderr naming the ``model.class`` module imported.

    Raises:
        CheckpointError: the checkpoint is missing, corrupt, or does not fit the config's model.
    """
    run_path = Path(run_dir)
    cfg = read_run_config(run_path)
    dev = resolve_device(device)
    if cfg.model.class_ is not None and not quiet:
        _announce_import(cfg.model.class_)
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


def _announce_import(class_path: str) -> None:
    """Say on stderr which file ``model.class``'s module is imported from (resolved as the
    import will resolve it; nothing is said where it cannot be found: the import says why)."""
    module = class_path.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return
    if spec is None:
        return
    where = spec.origin if spec.has_location and spec.origin else "a namespace package"
    print(f"pvae: importing model.class {module} from {where}", file=sys.stderr)


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class RunEvaluation(Evaluation):
    """What :func:`evaluate_run` returns: the per-datapoint values, as
    :class:`~pvae.rundir.Evaluation` holds them (and the run folder stores them), plus the
    report ``pvae evaluate`` prints.

    Attributes:
        report: The summary ``pvae evaluate --json`` prints: ``run``, ``split``, ``epoch``, the
            ELBO's summary (``n``, ``elbo``, ``elbo_se``, ``recon``, ``kl``...), with log p(x)
            its ``log_px*`` means and the ``weights`` diagnostics, the latent ``diagnostics``,
            and ``stored`` (the file written, or ``None`` if writing failed) where stored.
        elbo_estimate: The ELBO's :class:`~pvae.ElboEstimate`.
        log_px_estimate: The :class:`~pvae.LogPxEstimate` (its ``adaptive`` report with
            ``max_k``), or ``None`` with ``k=0``.
        stored: The file written, or ``None``.
    """

    report: dict[str, Any] = field(default_factory=dict, repr=False)
    elbo_estimate: ElboEstimate | None = field(default=None, repr=False)
    log_px_estimate: LogPxEstimate | None = field(default=None, repr=False)
    stored: Path | None = None


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    *,
    k: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    data: str | Path | None = None,
    subset: int | None = None,
    max_k: int | None = None,
    target_se: float | None = None,
    store: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_store_error: Callable[[OSError], None] | None = None,
    quiet: bool = False,
) -> RunEvaluation:
    """Evaluate a run folder's model on one split of its data (``pvae evaluate RUN``): the
    ELBO, log p(x), the weight and latent diagnostics, stored per datapoint for
    :func:`~pvae.compare.compare`.

    The split is drawn with Pyro seeded by ``seed`` (a dynamically binarized split: the same
    draw every time), and Pyro is seeded again before the ELBO's draws. Log p(x) is
    :func:`~pvae.log_px` with ``k`` importance samples (sharded over the processes under
    ``torchrun``). The latent diagnostics are active units, KL per dimension, I(x; z) and the
    prior hole for a model with one encoder and a prior (``encode`` and ``prior``), active
    units per latent site for any other pair. The per-datapoint values go to
    ``RUN/evaluation/<split>.npz`` (:func:`~pvae.rundir.save_evaluation`, on the main process)
    unless ``store`` is false or ``data`` is given; a run with ``log.mlflow`` also logs the
    stored evaluation to its MLflow run (:func:`pvae.training.mlflow.log_evaluation`).

    Args:
        run_dir: The run folder.
        split: ``"train"``, ``"val"`` or ``"test"`` (not used with ``data``).
        k: Importance samples for log p(x) (default: the run's ``eval.k``; 0 skips it).
        num_samples: Latent samples per datapoint for the ELBO (default ``eval.num_samples``).
        seed: Seed of the Monte Carlo draws.
        device: Where to evaluate.
        data: A ``.npy`` (the array) or ``.npz`` (its ``x``, or ``test``) to score instead of a
            split, scaled (and, for a run on binarized data, binarized once, seeded) as the
            run's own data are; reported as the split ``file:<data>`` and never stored.
        subset: Only the first ``subset`` datapoints (of the split, drawn as above, or of
            ``data``): e.g. the first 2,000 test images for k = 5000, as papers report.
        max_k: Adaptive log p(x): more draws, up to this many, where k̂ ≥ 0.7.
        target_se: Adaptive log p(x): also draw until each datapoint's s.e. is at most this.
        store: Write the per-datapoint values into the run folder.
        progress: Called as ``progress(done, total)`` while log p(x) draws.
        on_store_error: Called with the error when writing the values fails (the report then
            says ``stored: None``); by default the error is raised.
        quiet: No line on stderr naming the ``model.class`` module imported (:func:`load_run`).

    Returns:
        A :class:`RunEvaluation`.
    """
    if data is None and split not in ("train", "val", "test"):
        raise ValueError(f"split must be one of 'train', 'val', 'test', got {split!r}")
    if k is not None:
        _checked_k(k)
    if max_k is not None:
        positive_int("max_k", max_k)
    if target_se is not None:
        positive_float("target_se", target_se)
    if subset is not None:
        positive_int("subset", subset)
    run = load_run(run_dir, device=device, data=data is None, quiet=quiet)
    if data is not None:
        x, split = _external(data, run).to(run.device), f"file:{data}"
    else:
        pyro.set_rng_seed(seed)  # a dynamically binarized split: the same draw every time
        x = run.data.split(split).to(run.device).observed()
    x = _first(x, subset, split)
    k = _checked_k(run.config.eval.k if k is None else k)
    _check_adaptive(k, max_k, target_se)
    cfg = run.config.eval
    num_samples = positive_int(
        "num_samples", cfg.num_samples if num_samples is None else num_samples
    )
    pyro.set_rng_seed(seed)
    elbo = evaluate_elbo(run.vae, x, num_samples=num_samples, batch_size=cfg.batch_size)
    report: dict[str, Any] = {
        "run": str(run.path),
        "split": split,
        "epoch": run.checkpoint["epoch"],
        **elbo.summary(),
    }
    est = None
    if k > 0:
        sharded = D.info() is not None
        est = log_px(
            run.vae,
            x,
            k=k,
            seed=seed,
            distributed=sharded,
            max_k=max_k,
            target_se=target_se,
            progress=progress,
        )
        report.update(_log_px_report(est))
    report["diagnostics"] = diagnostics.report(run.vae, x)
    report.update(_task_metrics(run, x, split if data is None else None))
    meta = {"seed": seed, "num_samples": num_samples, "max_k": max_k, "target_se": target_se}
    meta["subset"] = subset
    ev = RunEvaluation.of(
        run.path, split, x, elbo=elbo, log_px=est, epoch=int(run.checkpoint["epoch"]), meta=meta
    )
    ev = replace(ev, report=report, elbo_estimate=elbo, log_px_estimate=est)
    if data is None and store and _is_main():
        ev = _store(ev, on_store_error)
        if ev.stored is not None and run.config.log.mlflow:
            _log_mlflow(run, ev.report)
    return ev


def _task_metrics(run: Run, x: torch.Tensor, split: str | None) -> dict[str, float]:
    """Metrics a module reports beside log p(x) given the split's labels (``metrics(x, y)``,
    e.g. a semi-supervised VAE's test accuracy); none for other modules or unlabelled data."""
    metrics = getattr(run.vae, "metrics", None)
    y = None if split is None or run.data is None else run.data.split(split).y
    if not callable(metrics) or y is None:
        return {}
    return dict(metrics(x, y[: x.shape[0]].to(run.device)))


def _first(x: torch.Tensor, subset: int | None, split: str) -> torch.Tensor:
    """The first ``subset`` datapoints of ``x`` (all of them when ``subset`` is None)."""
    if subset is None:
        return x
    if subset > x.shape[0]:
        raise ValueError(
            f"subset {subset} is more than the {split} split's {x.shape[0]} datapoints; give "
            f"{x.shape[0]} or fewer (or leave it out)"
        )
    return x[:subset]


def _log_mlflow(run: Run, report: dict[str, Any]) -> None:
    """A stored evaluation of a run that logs to MLflow (``log.mlflow``) goes to its MLflow
    run too; without the package the evaluation stands, and stderr says what was not logged."""
    try:
        log_evaluation(run.config.log, run.path, report)
    except ModuleNotFoundError as err:
        print(f"pvae: evaluation stored but not logged to MLflow: {err}", file=sys.stderr)


def _checked_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an integer (0 to skip log p(x)), got {k!r}")
    if k < 0:
        raise ValueError(f"k must be a positive integer (or 0 to skip log p(x)), got {k}")
    return k


def _check_adaptive(k: int, max_k: int | None, target_se: float | None) -> None:
    """The adaptive mode draws more than ``k``: it needs log p(x) (``k`` > 0), and ``max_k``
    at least ``k``."""
    asked = [f"{n}={v}" for n, v in (("max_k", max_k), ("target_se", target_se)) if v is not None]
    if k == 0 and asked:
        raise ValueError(
            f"{' and '.join(asked)} ask for an adaptive log p(x), which k=0 skips: give k ≥ 1 "
            "or leave them out"
        )
    if max_k is not None and max_k < k:
        raise ValueError(f"max_k must be at least k={k}, got max_k={max_k}")


def _log_px_report(est: LogPxEstimate) -> dict[str, Any]:
    """``log_px``, ``log_px_se``... (the summary's keys, prefixed) and the weight diagnostics."""
    lp = est.summary()
    out = {k if k.startswith("log_px") else f"log_px_{k}": v for k, v in lp.items() if k != "n"}
    out["weights"] = diagnostics.weight_diagnostics(est, worst=5)
    return out


def _store(ev: RunEvaluation, on_error: Callable[[OSError], None] | None) -> RunEvaluation:
    try:
        path = ev.save()
    except OSError as err:  # a read-only run folder: the report is still worth having
        if on_error is None:
            raise
        on_error(err)
        return replace(ev, report={**ev.report, "stored": None})
    return replace(ev, report={**ev.report, "stored": str(path)}, stored=path)


def _external(path: str | Path, run: Run) -> torch.Tensor:
    """``data=FILE``: a ``.npy`` (the array) or ``.npz`` (its ``x``, or ``test``) scored as the
    run's own data are: the same scaling (uint8 / 255) and, for a run on binarized data, one
    fixed binarization (seeded, as the run's validation and test splits are)."""
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
