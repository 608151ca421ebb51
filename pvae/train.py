"""Training: stochastic variational inference over a module's model/guide pair.

:func:`fit` composes the parts in :mod:`pvae.training`: each step evaluates one of Pyro's ELBO
estimators on a minibatch inside the ``"data"`` plate (or, for a standard :class:`~pvae.VAE`,
the fused fast path that computes the same loss), as the negative ELBO *per datapoint*, and
takes a torch optimizer step over ``module.parameters()``; each epoch ends with validation, a
checkpoint, a line of progress and the callbacks (:mod:`pvae.training.callbacks`: CSV and
TensorBoard loggers, or one's own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from pvae import distributed as D
from pvae._checks import positive_float, positive_int
from pvae.checkpoint import CheckpointError
from pvae.datasets import DataSplits, Split
from pvae.training.callbacks import Callback, OnEpoch, TrainInfo, check_callbacks
from pvae.training.checkpointing import (
    CHECKPOINT,
    CONFIG,
    Checkpointer,
    TrainState,
    check_run_dir,
    load_run_state,
)
from pvae.training.divergence import TrainingDivergedError
from pvae.training.progress import Progress
from pvae.training.setup import (
    as_splits,
    check_trainable,
    prepare,
    resolve_device,
    training_device,
)
from pvae.training.step import (
    StepOptions,
    TrainStep,
    check_mean_field,
    check_takes_labels,
    kl_weight,
    notice_monte_carlo_kl,
    run_epoch,
)
from pvae.training.validation import ValidationOptions, validate, write_figures

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "TIMING_KEYS",
    "CheckpointError",
    "FitResult",
    "TrainingDivergedError",
    "drop_timings",
    "fit",
    "kl_weight",
    "load_run_state",
    "resolve_device",
]


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
    *,
    objective: str | pyro.infer.ELBO = "meanfield_elbo",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    clip_norm: float | None = None,
    beta: float = 1.0,
    warmup_steps: int = 0,
    free_bits: float = 0.0,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    estimator: str = "reparam",
    fast: bool = True,
    compile: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    quiet: bool = False,
    log_every: float = 30.0,
    eval_batch_size: int = 1024,
    curve_ks: Sequence[int] = (),
    curve_every: int = 10,
    curve_subset: int = 256,
    config: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    callbacks: Sequence[Callback] = (),
    labels: bool = False,
) -> FitResult:
    """Train ``vae`` on ``data`` by stochastic variational inference.

    Args:
        vae: The module to train: a :class:`~pvae.VAE` (built for the data's shape here if it
            is not yet), or any ``nn.Module`` (e.g. a ``PyroModule``) with ``model(x)`` and
            ``guide(x)`` methods whose datapoint-local latent sites sit inside
            ``pyro.plate("data", x.shape[0])``. Its loss on a minibatch of B datapoints is
            ``elbo.differentiable_loss(vae.model, vae.guide, x) / B``.
        data: :class:`~pvae.datasets.DataSplits` (validation ELBO is reported each epoch,
            unless its validation split is empty: ``val_fraction=0``), one
            :class:`~pvae.datasets.Split`, or an array/tensor of shape ``(N, ...)``.
        objective: ``"elbo"`` (``Trace_ELBO``), ``"meanfield_elbo"`` (``TraceMeanField_ELBO``,
            analytic KL), ``"iwae"`` (importance-weighted bound, K = ``num_particles``), or any
            Pyro ELBO instance.
        epochs: Total number of epochs (including those already done when resuming).
        batch_size: Minibatch size; the last batch of an epoch may be smaller.
        lr: Learning rate.
        optimizer: ``"adam"`` or ``"clipped_adam"`` (Pyro's ClippedAdam).
        clip_norm: With Adam, clip the global gradient norm to this; with ClippedAdam, its
            elementwise clip value.
        beta: Weight of the KL term (β-VAE, Higgins et al. 2017), applied as a Pyro scale on the
            latent sites. A :class:`~pvae.VAE` option (it sets ``vae.beta``); another module
            weights its own sites.
        warmup_steps: Anneal β linearly from 0 over this many steps (Bowman et al. 2016;
            Sønderby et al. 2016); 0 disables warm-up. A :class:`~pvae.VAE` option.
        free_bits: Free bits (Kingma et al. 2016), nats per latent dimension: no KL gradient while
            the minibatch KL is below ``free_bits × latent_dim``. Validation always reports the
            true ELBO; ``train_elbo`` is the regularized objective. A :class:`~pvae.VAE` option.
        num_particles: Samples of the latents per datapoint in each ELBO estimate.
        vectorize_particles: Draw those samples in one batched pass.
        estimator: Encoder gradient estimator for ``"iwae"``: ``"reparam"``, ``"stl"``, ``"dreg"``.
        fast: Compute a standard VAE's objective on the fused fast path
            (:mod:`pvae.objectives.fused`): the same loss and gradients as Pyro's objective for
            the same draws, without per-step tracing. Falls back to Pyro, with a one-line notice,
            for a VAE that overrides ``model`` or ``guide``; an ELBO instance as ``objective``
            and any other module always run through Pyro.
        compile: Run the fused objective and Adam's update through :func:`torch.compile`
            (:class:`~pvae.objectives.fused.CompiledObjective`; CUDA graphs on CUDA): the same
            losses and gradients as eager to float precision, one graph without breaks, a
            ragged last batch and dynamic binarization without recompiling. Compilation takes
            seconds to tens of seconds, said once on stderr and recorded as
            ``compile_seconds``; it pays off on long runs (measured on a 2-core CPU: 0.78× the
            eager epoch time after 25 s of compilation). Needs ``fast``; a notice and eager
            steps where :func:`torch.compile` is unavailable.
        seed: Seeds parameter initialization (for default networks), shuffling and sampling.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        run_dir: Folder for ``checkpoint.pt`` (every epoch), ``metrics.json``, ``curves.png``
            and, for a VAE on images, reconstruction and sample grids. A new run needs a new or
            empty folder, which appears once its first checkpoint is written; the folder is
            locked while the run lives, so a second run into it fails at once
            (:mod:`pvae.training.runlock`).
        resume: Continue from ``run_dir/checkpoint.pt``.
        progress: Show progress over the steps on stderr: tqdm's bar on a terminal, else a
            plain line at most every ``log_every`` seconds (no ``\\r`` frames in log files).
        quiet: Write nothing but errors and, after Ctrl-C, where the checkpoint is: no progress
            and no per-epoch lines (which are written on stderr otherwise, even without
            ``progress``).
        log_every: Seconds between the plain progress lines when stderr is not a terminal.
        eval_batch_size: Datapoints per chunk in validation.
        curve_ks: Every ``curve_every`` epochs, record IWAE_k on the first
            ``curve_subset`` validation datapoints for each k, as ``val_iwae_<k>``, and the
            largest-k estimate as ``val_log_px``. Empty: off.
        curve_every: Epochs between those evaluations.
        curve_subset: Validation datapoints used for them.
        config: The run's configuration, stored in the checkpoint and as ``config.toml``.
        on_epoch: Called with each epoch's record (a shorthand for a
            :class:`~pvae.training.Callback` with only ``on_epoch_end``).
        callbacks: :class:`~pvae.training.Callback` objects, called in order at the start,
            after each epoch's checkpoint and at the end (however the run ends), on every rank;
            an exception in one stops training. E.g.
            :class:`~pvae.training.CSVLogger`, :class:`~pvae.training.TensorBoardLogger`.
        labels: Pass each minibatch's labels to ``model`` and ``guide`` as the keyword
            argument ``y`` (a conditional model, e.g. a conditional VAE on digit classes);
            validation passes the validation labels. Needs data with labels and a model and
            guide that take ``y``.

    Returns:
        A :class:`FitResult`.

    Raises:
        TypeError: ``vae`` is not an ``nn.Module`` with ``model`` and ``guide`` methods.
        ValueError: a bad argument (named), data that do not fit the model, or β, warm-up or
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
    module = vae
    step_options = StepOptions(
        objective=objective,
        num_particles=num_particles,
        vectorize_particles=vectorize_particles,
        estimator=estimator,
        fast=fast,
        compile=compile,
        optimizer=optimizer,
        lr=lr,
        clip_norm=clip_norm,
        beta=beta,
        warmup_steps=warmup_steps,
        free_bits=free_bits,
    )
    val_options = ValidationOptions(eval_batch_size, curve_ks, curve_every, curve_subset)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    log_every = positive_float("log_every", log_every, allow_zero=True)
    hooks = check_callbacks(callbacks)
    if on_epoch is not None:
        hooks.insert(0, OnEpoch(on_epoch))
    check_trainable(module)
    step_options.check_applies_to(module)
    d = D.info()
    main = d is None or d.is_main
    dev = training_device(device, d)
    train, val = as_splits(data)
    if val is not None and len(val) == 0:  # val_fraction=0: every datapoint trains
        val = None
    run_path = check_run_dir(run_dir, resume, main=main)

    pyro.set_rng_seed(seed)
    train, val = prepare(module, train, val, dev)
    notice_monte_carlo_kl(module, step_options.elbo, train.x[:2])
    if labels:
        check_takes_labels(module, train.y)
        if val is not None and val.y is None:
            raise ValueError("labels=True needs labels in the validation split too")
    check_mean_field(module, step_options.elbo, train.x[:2], {"y": train.y[:2]} if labels else {})
    step = TrainStep(module, step_options, dev, d, seed, not main, train.y if labels else None)
    checkpoints = Checkpointer(run_path, module, step.optimizer, train.data_shape, d)
    with checkpoints:  # the run folder's lock, held until the run ends however it ends
        if resume:
            checkpoints.lock()
        state = checkpoints.restore(dev) if resume else TrainState()
        state.config = config if config is not None else state.config
        step.steps = state.step
        checkpoints.start(state, fresh=not resume)  # every input checked: only now a folder

        per_rank = -(-len(train) // (1 if d is None else d.world_size))
        total_steps = max(0, epochs - state.epoch) * math.ceil(per_rank / batch_size)
        info = TrainInfo(
            run_dir=run_path,
            epochs=epochs,
            start_epoch=state.epoch,
            resumed=resume,
            history=list(state.history),
            config=state.config,
            main=main,
        )
        epoch = state.epoch + 1
        compile_noted = False
        report = Progress(
            progress,
            main,
            total_steps,
            epochs,
            quiet=quiet,
            every=log_every,
            batch_size=batch_size,
        )
        try:  # the callbacks hear of the end however the run ends
            with report:
                for hook in hooks:
                    hook.on_train_begin(info)
                try:
                    for epoch in range(state.epoch + 1, epochs + 1):
                        t0 = time.perf_counter()
                        elbo = run_epoch(
                            step, train, batch_size, seed, epoch, d, report.step, run_path
                        )
                        record = {"epoch": epoch, "step": step.steps, "train_elbo": elbo}
                        t1 = time.perf_counter()
                        if val is not None:
                            record.update(validate(module, val, val_options, epoch, d, labels))
                        record.update(_timings(len(train), t0, t1, val is not None))
                        if step.compile_seconds is not None and not compile_noted:
                            record["compile_seconds"] = step.compile_seconds
                            compile_noted = True
                        state.epoch, state.step = epoch, step.steps
                        state.history.append(record)
                        checkpoints.save(state)
                        report.epoch_done(record)
                        for hook in hooks:
                            hook.on_epoch_end(record)
                except KeyboardInterrupt:
                    report.interrupted(epoch, run_path)
                    raise
                finally:
                    step.unweight()
            module.eval()
            if d is not None:
                torch.distributed.barrier()
            if run_path is not None and main:
                pictured = (val if val is not None else train).observed()
                write_figures(module, run_path, state.history, pictured)
        except BaseException:
            _end_hooks(hooks, state.history, failing=True)
            raise
        _end_hooks(hooks, state.history, failing=False)
    return FitResult(module, state.history, run_path)


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
