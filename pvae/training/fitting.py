"""Training: stochastic variational inference over a module's model/guide pair.

:func:`fit` composes the parts in :mod:`pvae.training`: each step evaluates one of Pyro's ELBO
estimators on a minibatch inside the ``"data"`` plate (or, for a standard :class:`~pvae.VAE`,
the fused fast path that computes the same loss), as the negative ELBO *per datapoint*, and
takes a torch optimizer step over ``module.parameters()``; each epoch ends with validation, a
checkpoint, a line of progress and the callbacks (:mod:`pvae.training.callbacks`: CSV and
TensorBoard loggers, or one's own). Its options are one :class:`~pvae.options.FitOptions`, the
``[train]``, ``[eval]`` and ``[log]`` tables of a config.

:func:`fit` is three named pieces: :func:`_setup` (every input checked, the module built and
moved, nothing written yet), :func:`_epochs` (the loop) and :func:`_end` (figures, end hooks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from pvae import distributed as D
from pvae.datasets import DataSplits, Split
from pvae.options import FitOptions
from pvae.training.callbacks import Callback, OnEpoch, TrainInfo, check_callbacks
from pvae.training.changes import config_changes
from pvae.training.checkpointing import Checkpointer, TrainState, check_run_dir
from pvae.training.progress import Progress
from pvae.training.setup import (
    as_splits,
    check_trainable,
    prepare,
    set_enum_nesting,
    training_device,
)
from pvae.training.step import (
    StepOptions,
    TrainStep,
    check_mean_field,
    check_takes_labels,
    notice_monte_carlo_kl,
    run_epoch,
    steps_per_epoch,
)
from pvae.training.validation import ValidationOptions, validate, write_figures

__all__ = ["TIMING_KEYS", "FitResult", "drop_timings", "fit"]


TIMING_KEYS = ("epoch_seconds", "images_per_second", "val_seconds", "compile_seconds")
"""Record entries measured by the clock: they differ between two otherwise identical runs."""


def drop_timings(history: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """``history`` without its :data:`TIMING_KEYS`: what two runs with the same seed, or a
    resumed and an uninterrupted run, have in common exactly."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        vae: The trained module (on the training device): the :class:`~pvae.VAE`, or whatever
            module with ``model``/``guide`` was passed.
        history: One dict per epoch: ``epoch``, ``step``, ``train_elbo`` and, with a validation
            split, ``val_elbo``, ``val_elbo_se``, ``val_recon``, ``val_kl`` (nats per datapoint);
            and the clock's :data:`TIMING_KEYS`: ``epoch_seconds`` (wall time of the epoch,
            validation included), ``images_per_second`` (training images per second of
            training time), with validation ``val_seconds`` and, with ``compile`` in the
            epoch whose steps compiled, ``compile_seconds``.
        run_dir: Where the checkpoint, metrics and pictures were written, if anywhere.
    """

    vae: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def fit(
    vae: nn.Module,
    data: DataSplits | Split | Tensor | Any,
    options: FitOptions | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    config: dict[str, Any] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train ``vae`` on ``data`` by stochastic variational inference.

    Args:
        vae: The module to train: a :class:`~pvae.VAE` (built for the data's shape here if it
            is not yet), or any ``nn.Module`` (e.g. a ``PyroModule``) with ``model(x)`` and
            ``guide(x)`` methods whose datapoint-local latent sites sit inside
            ``pyro.plate("data", x.shape[0])``. Its loss on a minibatch of B datapoints is
            ``elbo.differentiable_loss(vae.model, vae.guide, x) / B``. Discrete sites marked
            for enumeration (``config_enumerate``) train with ``objective="enum_elbo"`` or a
            ``TraceEnum_ELBO`` instance, whose ``max_plate_nesting`` fit reads from the traces
            where it is not given; validation sums them out (:mod:`pvae.enumeration`).
        data: :class:`~pvae.datasets.DataSplits` (validation ELBO is reported each epoch,
            unless its validation split is empty: ``val_fraction=0``), one
            :class:`~pvae.datasets.Split`, or an array/tensor of shape ``(N, ...)``.
        options: The run's options (:class:`~pvae.options.FitOptions`, e.g. a config's
            ``cfg.options``); ``None``: the defaults, which are ``pvae train``'s (200 epochs,
            IWAE curve points at k = 5 and 500 every 10 epochs, ...).
        callbacks: :class:`~pvae.training.Callback` objects, called in order at the start,
            after each epoch's checkpoint and at the end (however the run ends), on every rank;
            an exception in one stops training. E.g.
            :class:`~pvae.training.CSVLogger`, :class:`~pvae.training.TensorBoardLogger`.
        on_epoch: Called with each epoch's record (a shorthand for a
            :class:`~pvae.training.Callback` with only ``on_epoch_end``).
        run_dir: Folder for ``checkpoint.pt`` (every epoch), ``metrics.json``, ``curves.png``
            and, for a VAE on images, reconstruction and sample grids. A new run needs a new or
            empty folder, which appears once its first checkpoint is written; the folder is
            locked while the run lives, so a second run into it fails at once
            (:mod:`pvae.training.runlock`).
        resume: Continue from ``run_dir/checkpoint.pt``.
        config: The run's configuration, stored in the checkpoint and as ``config.toml``.
        **overrides: Options by keyword, over ``options``: every ``[train]`` key by its name
            (``epochs``, ``batch_size``, ``lr``, ``objective``, ``num_particles``, ``device``,
            ``compile``, ``labels``, ...), and ``eval_batch_size``, ``curve_ks``,
            ``curve_every``, ``curve_subset``, ``quiet`` and ``log_every``
            (:data:`~pvae.options.FitOptions.KEYWORDS`; documented in
            :class:`~pvae.options.TrainOptions`, :class:`~pvae.options.EvalOptions` and
            :class:`~pvae.options.LogOptions`).

    Returns:
        A :class:`FitResult`.

    Raises:
        TypeError: ``vae`` is not an ``nn.Module`` with ``model`` and ``guide`` methods, or an
            unknown keyword (the valid ones are listed).
        ValueError: a bad option (named), data that do not fit the model, or β, warm-up or
            free bits for a module that is not a VAE.
        OSError: a file could not be written (:class:`~pvae.checkpoint.WriteError`, naming
            it; the last checkpoint is kept).
        TrainingDivergedError: the loss became NaN/inf (the message names epoch and step; the
            last good checkpoint is kept).

    Example:
        >>> import pyro, pyro.distributions as dist, torch, pvae
        >>> class Factor(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.dec, self.enc = torch.nn.Linear(2, 5), torch.nn.Linear(5, 2)
        ...     def model(self, x):
        ...         with pyro.plate("data", x.shape[0]):
        ...             z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        ...             pyro.sample("x", dist.Normal(self.dec(z), 0.5).to_event(1), obs=x)
        ...     def guide(self, x):
        ...         with pyro.plate("data", x.shape[0]):
        ...             pyro.sample("z", dist.Normal(self.enc(x), 0.3).to_event(1))
        >>> res = pvae.fit(Factor(), torch.randn(40, 5), epochs=2, quiet=True, device="cpu")
        >>> len(res.history), res.final["epoch"]
        (2, 2)
    """
    if options is not None and not isinstance(options, FitOptions):
        raise TypeError(
            "options must be a pvae.options.FitOptions (a config's cfg.options), got "
            f"{type(options).__name__}; pass single options by keyword (epochs=...)"
        )
    opts = (options or FitOptions()).replace(**overrides)
    run = _setup(vae, data, opts, check_callbacks(callbacks), on_epoch, run_dir, resume)
    with run.checkpoints:  # the run folder's lock, held until the run ends however it ends
        state = _start(run, config)
        try:  # the callbacks hear of the end however the run ends
            _epochs(run, state)
            _figures(run, state)
        except BaseException:
            _end_hooks(run.hooks, state.history, failing=True)
            raise
        _end_hooks(run.hooks, state.history, failing=False)
    return FitResult(run.module, state.history, run.run_path)


@dataclass
class _Run:
    """Everything :func:`_setup` checked and built; nothing is written yet."""

    module: nn.Module
    opts: FitOptions
    train: Split
    val: Split | None
    step: TrainStep
    checkpoints: Checkpointer
    hooks: list[Callback]
    validation: ValidationOptions
    run_path: Path | None
    resume: bool
    device: torch.device
    d: D.DistInfo | None
    main: bool
    labels: bool


def _setup(
    module: nn.Module,
    data: Any,
    opts: FitOptions,
    hooks: list[Callback],
    on_epoch: Callable[[dict[str, float]], None] | None,
    run_dir: str | Path | None,
    resume: bool,
) -> _Run:
    """Check every input and build what training needs, in the order that fails before
    anything is written: options, module, device, data, run folder, then the step."""
    t = opts.train
    step_options = StepOptions.of(t)
    validation = ValidationOptions.of(opts.eval)
    if on_epoch is not None:
        hooks.insert(0, OnEpoch(on_epoch))
    check_trainable(module)
    step_options.check_applies_to(module)
    d = D.info()
    main = d is None or d.is_main
    dev = training_device(t.device, d)
    train, val = as_splits(data)
    if val is not None and len(val) == 0:  # val_fraction=0: every datapoint trains
        val = None
    run_path = check_run_dir(run_dir, resume, main=main)

    pyro.set_rng_seed(t.seed)
    train, val = prepare(module, train, val, dev)
    notice_monte_carlo_kl(module, step_options.elbo, train.x[:2], quiet=opts.log.quiet or not main)
    labels = bool(t.labels)
    if labels:
        check_takes_labels(module, train.y)
        if val is not None and val.y is None:
            raise ValueError("labels=True needs labels in the validation split too")
    kw = {"y": train.y[:2]} if labels else {}
    check_mean_field(module, step_options.elbo, train.x[:2], kw)
    named = isinstance(t.objective, str)
    set_enum_nesting(module, step_options.elbo, named, train.x[:2], kw, val is not None)
    step = TrainStep(module, step_options, dev, d, t.seed, not main, train.y if labels else None)
    checkpoints = Checkpointer(run_path, module, step.optimizer, train.data_shape, d)
    return _Run(
        module,
        opts,
        train,
        val,
        step,
        checkpoints,
        hooks,
        validation,
        run_path,
        resume,
        dev,
        d,
        main,
        labels,
    )


def _start(run: _Run, config: dict[str, Any] | None) -> TrainState:
    """The state to continue from (a resumed run's checkpoint, restored under the folder's
    lock), written as the run's start: only now does a new run's folder appear (a resumed
    run writes nothing until its first checkpoint). What a resume changes in the
    configuration is recorded in the state's ``changes``."""
    if run.resume:
        run.checkpoints.lock()
    state = run.checkpoints.restore(run.device) if run.resume else TrainState()
    if config is not None:
        changed = config_changes(state.config, config) if state.config is not None else {}
        if changed:
            what = {k: [old, new] for k, (old, new) in changed.items()}
            state.changes.append({"epoch": state.epoch, "changes": what})
        state.config = config
    run.step.steps = state.step
    run.checkpoints.start(state, fresh=not run.resume)
    return state


def _epochs(run: _Run, state: TrainState) -> None:
    """The loop: each epoch trains, validates, checkpoints, reports and calls the hooks."""
    t = run.opts.train
    per_epoch = steps_per_epoch(run.step.module, len(run.train), t.batch_size, run.d)
    total_steps = max(0, t.epochs - state.epoch) * per_epoch
    info = TrainInfo(
        run_dir=run.run_path,
        epochs=t.epochs,
        start_epoch=state.epoch,
        resumed=run.resume,
        history=list(state.history),
        config=state.config,
        main=run.main,
    )
    log = run.opts.log
    report = Progress(
        t.progress,
        run.main,
        total_steps,
        t.epochs,
        quiet=log.quiet,
        every=log.every,
        batch_size=t.batch_size,
    )
    epoch = state.epoch + 1
    compile_noted = False
    with report:
        for hook in run.hooks:
            hook.on_train_begin(info)
        try:
            for epoch in range(state.epoch + 1, t.epochs + 1):
                record = _epoch(run, epoch, report)
                if run.step.compile_seconds is not None and not compile_noted:
                    record["compile_seconds"] = run.step.compile_seconds
                    compile_noted = True
                state.epoch, state.step = epoch, run.step.steps
                state.history.append(record)
                run.checkpoints.save(state)
                report.epoch_done(record)
                for hook in run.hooks:
                    hook.on_epoch_end(record)
        except KeyboardInterrupt:
            report.interrupted(epoch, run.run_path)
            raise
        finally:
            run.step.unweight()


def _epoch(run: _Run, epoch: int, report: Progress) -> dict[str, float]:
    """Epoch ``epoch``'s training and validation, as its record (without the checkpoint)."""
    t = run.opts.train
    t0 = time.perf_counter()
    elbo = run_epoch(
        run.step, run.train, t.batch_size, t.seed, epoch, run.d, report.step, run.run_path
    )
    record = {"epoch": epoch, "step": run.step.steps, "train_elbo": elbo}
    t1 = time.perf_counter()
    run.step.unweight()  # validation reports the true ELBO: β = 1, no free bits
    if run.val is not None:
        record.update(validate(run.module, run.val, run.validation, epoch, run.d, run.labels))
    record.update(_timings(len(run.train), t0, t1, run.val is not None))
    return record


def _figures(run: _Run, state: TrainState) -> None:
    """After the last epoch, on the main process of a run with a folder: the pictures."""
    run.module.eval()
    if run.d is not None:
        torch.distributed.barrier()
    if run.run_path is not None and run.main:
        pictured = (run.val if run.val is not None else run.train).observed()
        write_figures(run.module, run.run_path, state.history, pictured)


def _end_hooks(hooks: Sequence[Callback], history: list[dict[str, float]], failing: bool) -> None:
    """Every hook's ``on_train_end``, each in turn even when an earlier one raises (a logger
    must close its files); the first such error is raised afterwards, unless the run is
    already ending with an error of its own (``failing``), which is the one to report."""
    first: Exception | None = None
    for hook in hooks:
        try:
            hook.on_train_end(history)
        except Exception as err:
            first = first or err
    if first is not None and not failing:
        raise first


def _timings(n: int, start: float, trained: float, validated: bool) -> dict[str, float]:
    """The clock's :data:`TIMING_KEYS` of an epoch that began at ``start`` and finished its
    ``n`` training datapoints (every rank's) at ``trained`` (:func:`time.perf_counter`)."""
    now = time.perf_counter()
    out = {"images_per_second": n / max(trained - start, 1e-9), "epoch_seconds": now - start}
    if validated:
        out["val_seconds"] = now - trained
    return out
