"""The training step: the minibatch loss, the optimizer, one update, one epoch.

The loss of a minibatch of B out of N datapoints is the negative ELBO *per datapoint*, so
learning rates and gradient clipping do not depend on the dataset size:

* a :class:`~pvae.VAE` runs its model and guide in a ``"data"`` plate over the whole dataset
  (``size=N, subsample=idx``, which scales the log densities by N / B, an unbiased estimate of
  the full-data ELBO) and the loss is divided by N. Where the fused fast path
  (:mod:`pvae.objectives.fused`) computes that loss exactly, it does so without tracing;
* any other module runs ``model(x)`` and ``guide(x)`` with the plate over the minibatch
  (``pyro.plate("data", x.shape[0])``), and the loss is
  ``elbo.differentiable_loss(model, guide, x) / B``.

Either way the optimizer updates ``module.parameters()`` directly; Pyro's param store plays no
part (see :func:`fit_context`). β, warm-up and free bits are attributes of a
:class:`~pvae.VAE` and apply to such modules only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pvae import distributed as D
from pvae.datasets import Split
from pvae.objectives import fused, make_objective
from pvae.optimizers import OPTIMIZERS, make_optimizer
from pvae.options import TrainOptions
from pvae.program import as_program, param_sites
from pvae.traces import closed_form_blockers, inspect_pair
from pvae.training.divergence import raise_if_diverged

__all__ = [
    "OPTIMIZERS",
    "CompiledLoss",
    "LossFn",
    "Objective",
    "StepOptions",
    "TraceLoss",
    "TrainStep",
    "check_mean_field",
    "check_takes_labels",
    "epoch_generator",
    "fit_context",
    "kl_weight",
    "kl_weighted",
    "make_loss",
    "make_optimizer",
    "minibatches",
    "run_epoch",
    "steps_per_epoch",
    "vae_like",
]

LossFn = Callable[[Tensor, Tensor, int], Tensor]
"""``(x, idx, N) -> loss``: the negative ELBO per datapoint of minibatch ``x`` (indices ``idx``
of ``N`` datapoints), differentiable."""


@dataclass
class StepOptions(TrainOptions):
    """The ``[train]`` options (:class:`~pvae.options.TrainOptions`, whose defaults and
    documentation these are), checked on construction, with ``elbo``, the Pyro objective the
    first four name. :meth:`of` derives them from a :class:`~pvae.options.TrainOptions`.

    ``compile`` runs the fused objective through :func:`torch.compile`
    (:class:`~pvae.objectives.fused.CompiledObjective`; CUDA graphs on a GPU); it applies to a
    standard :class:`~pvae.VAE` on the fused path and falls back to eager, with a one-line
    notice, elsewhere.
    """

    elbo: pyro.infer.ELBO = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.check()
        self.elbo = make_objective(
            self.objective, self.num_particles, self.vectorize_particles, self.estimator
        )

    @classmethod
    def of(cls, options: TrainOptions) -> StepOptions:
        """``options`` as step options (checked, the objective built)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(TrainOptions)})

    def check_applies_to(self, module: nn.Module) -> None:
        """Refuse β, warm-up and free bits for a module that has no KL weight to set."""
        if kl_weighted(module):
            return
        for name, value, default in (
            ("beta", self.beta, 1.0),
            ("warmup_steps", self.warmup_steps, 0),
            ("free_bits", self.free_bits, 0.0),
        ):
            if value != default:
                raise ValueError(
                    f"{name}={value!r} applies to a pvae.VAE (a module with beta and free_bits "
                    f"attributes), not to a {type(module).__name__}; leave it at {default!r} "
                    "and weight the latent sites in its model and guide (pyro.poutine.scale)"
                )


def vae_like(module: object) -> bool:
    """Whether ``module`` has a :class:`~pvae.VAE`'s one-latent structure: an encoder
    (``encode(x)``, q(z | x)) and a ``prior``. Such a module (a VAE, or a subclass of one) runs
    its ``"data"`` plate over the whole dataset (``model(x, size=N, subsample=idx)``), trains on
    the fused path where :func:`pvae.objectives.fused.supports` says so, else through Pyro with
    that plate, and its guide is mean-field by construction."""
    return callable(getattr(module, "encode", None)) and hasattr(module, "prior")


def kl_weighted(module: nn.Module) -> bool:
    """Whether ``module`` takes β and free bits as attributes (as :class:`~pvae.VAE` does)."""
    return hasattr(module, "beta") and hasattr(module, "free_bits")


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """β at 0-based ``step``: linear warm-up from β/warmup_steps to β, then constant."""
    return beta * min(1.0, (step + 1) / warmup_steps) if warmup_steps else beta


def make_loss(
    module: nn.Module, opts: StepOptions, quiet: bool = False, labels: Tensor | None = None
) -> LossFn:
    """The per-datapoint loss of ``module`` (see the module docstring).

    Args:
        module: A :class:`~pvae.VAE` or any module with ``model(x)``/``guide(x)``.
        opts: The objective and whether to try the fused fast path.
        quiet: Do not print the notice that a VAE subclass trains through Pyro.
        labels: The training split's labels: model and guide then get the minibatch's as the
            keyword argument ``y`` (a conditional model, :func:`check_takes_labels`).
    """
    elbo = opts.elbo
    say = (
        (lambda msg: None) if quiet else (lambda msg: print(f"pvae: note: {msg}", file=sys.stderr))
    )
    if labels is not None:
        if opts.compile:
            say(
                "compile applies to a standard VAE on the fused path; a conditional model "
                "trains eagerly"
            )
        return TraceLoss(elbo, module, labels=labels)
    if not vae_like(module):
        if opts.compile:
            say(
                f"compile applies to a standard pvae.VAE on the fused path; a "
                f"{type(module).__name__} trains eagerly through Pyro"
            )
        return TraceLoss(elbo, module)
    if opts.fast and isinstance(opts.objective, str):
        reason = fused.supports(module, opts.objective)
        if reason is None:
            fo = fused.FusedObjective(
                opts.objective, opts.num_particles, opts.vectorize_particles, opts.estimator
            )
            if opts.compile:
                return CompiledLoss(fused.CompiledObjective(fo, module, quiet=quiet))
            return lambda x, idx, n: fo.loss(module, x, n) / n
        say(
            f"{reason}; training through Pyro's {type(elbo).__name__} "
            "(the fast path handles the standard VAE model/guide only)"
            + (
                "; compile applies to the fast path only, so it trains eagerly"
                if opts.compile
                else ""
            )
        )
    elif opts.compile:
        why = "fast=False" if not opts.fast else "a Pyro ELBO instance as the objective"
        say(f"compile applies to the fused path, which {why} turns off; training eagerly")
    return TraceLoss(elbo, module, whole_data=True)


class TraceLoss:
    """The trace path's :data:`LossFn`: ``elbo.differentiable_loss`` over the module's model and
    guide traces, per datapoint.

    With ``whole_data`` the ``"data"`` plate runs over the whole dataset
    (``model(x, size=N, subsample=idx)``, loss / N: a :class:`~pvae.VAE`); else over the
    minibatch (loss / B), with the minibatch's ``labels[idx]`` as ``y=`` when ``labels`` is given.

    **Checks once, not every step.** Pyro's validation (each distribution's argument and support
    checks, the model/guide site match, site shapes, the NaN hooks of every ``log_prob_sum``)
    costs O(batch) tensor passes and Python per site at every step, and the hand-written step it
    is measured against (``benchmarks/two_layer_step.py``) pays none. It runs, as Pyro has it
    set, on the first call and on the first call after :meth:`check_next` (each epoch's first
    step, :func:`run_epoch`); the other steps run under ``pyro.validation_enabled(False)``. The
    numbers are the same either way (validation only reads); a parameter that turns NaN then
    shows as a NaN loss, which :func:`~pvae.training.divergence.raise_if_diverged` names by
    epoch and step.
    """

    def __init__(
        self,
        elbo: pyro.infer.ELBO,
        module: nn.Module,
        whole_data: bool = False,
        labels: Tensor | None = None,
    ) -> None:
        self.elbo = elbo
        # Bound once: each attribute read of a PyroProgram's model/guide builds a new module.
        self.model, self.guide = module.model, module.guide
        self.whole_data = whole_data
        self.labels = labels
        self._check = True

    def check_next(self) -> None:
        """Run the next call with Pyro's validation as Pyro has it set."""
        self._check = True

    def __call__(self, x: Tensor, idx: Tensor, n: int) -> Tensor:
        if self._check:
            self._check = False
            return self._loss(x, idx, n)
        with pyro.validation_enabled(False):
            return self._loss(x, idx, n)

    def _loss(self, x: Tensor, idx: Tensor, n: int) -> Tensor:
        dl = self.elbo.differentiable_loss
        if self.whole_data:
            return dl(self.model, self.guide, x, size=n, subsample=idx) / n
        if self.labels is not None:
            return dl(self.model, self.guide, x, y=self.labels[idx]) / x.shape[0]
        return dl(self.model, self.guide, x) / x.shape[0]


class CompiledLoss:
    """A :data:`LossFn` over a :class:`~pvae.objectives.fused.CompiledObjective` (``idx`` unused:
    the fused path needs only the minibatch and N)."""

    def __init__(self, compiled: fused.CompiledObjective) -> None:
        self.compiled = compiled

    def __call__(self, x: Tensor, idx: Tensor, n: int) -> Tensor:
        return self.compiled(x, n)


def notice_monte_carlo_kl(
    module: nn.Module, elbo: pyro.infer.ELBO, x: Tensor, quiet: bool = False
) -> None:
    """One notice when ``TraceMeanField_ELBO`` must fall back to the Monte Carlo KL for a VAE's
    guide/prior pair (none when ``quiet``: ``log.quiet``, ``--quiet``)."""
    if quiet or not vae_like(module) or not isinstance(elbo, pyro.infer.TraceMeanField_ELBO):
        return
    with torch.no_grad():
        try:
            torch.distributions.kl_divergence(module.encode(x), module.prior())
        except NotImplementedError:
            guide = type(getattr(module, "encoder", None)).__name__
            print(
                f"pvae: note: no closed-form KL between the {guide} "
                f"guide and the {type(module.prior).__name__} prior; meanfield_elbo uses the "
                "Monte Carlo KL estimate (Pyro's fallback) for it",
                file=sys.stderr,
            )


def check_takes_labels(module: nn.Module, labels: Tensor | None) -> None:
    """``labels=True`` passes ``y`` to model and guide: refuse it for data without labels and
    for a module whose ``model`` or ``guide`` has no parameter ``y`` (it would be ignored)."""
    if labels is None:
        raise ValueError("labels=True needs data with labels (a Split or DataSplits with y)")
    for role in ("model", "guide"):
        fn = getattr(type(module), role, None)
        params = inspect.signature(fn).parameters if callable(fn) else {}
        if "y" not in params:
            raise ValueError(
                f"labels=True passes each minibatch's labels as y=..., but "
                f"{type(module).__name__}.{role} takes no argument y"
            )


def check_mean_field(
    module: nn.Module, elbo: pyro.infer.ELBO, x: Tensor, kwargs: Mapping[str, Any] | None = None
) -> None:
    """Refuse ``TraceMeanField_ELBO`` for a guide that is not mean-field with respect to the
    model: its closed-form KL would then be biased (:func:`pvae.traces.closed_form_blockers`),
    and Pyro only warns."""
    if vae_like(module) or not isinstance(elbo, pyro.infer.TraceMeanField_ELBO):
        return
    with param_sites(False), pyro.get_param_store().scope():
        _, model_trace, guide_trace = inspect_pair(as_program(module), (x,), kwargs or {})
    bad = {n: b for n, b in closed_form_blockers(model_trace, guide_trace).items() if b}
    if bad:
        site, after = next(iter(bad.items()))
        raise ValueError(
            f"objective 'meanfield_elbo' (TraceMeanField_ELBO) is biased for this guide: it "
            f"draws {', '.join(map(repr, after))} after {site!r}, but the model conditions "
            f"{site!r} on it, so the closed-form KL at {site!r} is not the ELBO's term; use "
            "objective 'elbo' or 'iwae'"
        )


class Objective(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel can wrap it: every
    parameter of the trained module (priors, likelihoods, guides included) is then in the
    all-reduce."""

    def __init__(self, program: nn.Module, loss: LossFn) -> None:
        super().__init__()
        self.program = program
        self.loss = loss

    def forward(self, x: Tensor, idx: Tensor, n: int) -> Tensor:
        return self.loss(x, idx, n)


@contextlib.contextmanager
def fit_context() -> Iterator[None]:
    """How :func:`pvae.fit` runs a module's Pyro code: without announcing pvae programs'
    parameters as ``param`` sites (fit optimizes ``module.parameters()`` and needs none), and in
    a parameter store of its own, so a ``PyroModule``'s ``PyroParam`` is never swapped for a
    tensor that another instance left under the same name in Pyro's global store."""
    with param_sites(False), pyro.get_param_store().scope():
        yield


class TrainStep:
    """One optimizer update on a minibatch; ``steps`` counts the updates of the run.

    Args:
        module: The module to train.
        opts: Loss and optimizer options.
        device: The training device (the rank's GPU in a distributed job).
        d: The distributed job, or ``None``.
        seed: The run's seed; in a distributed job each rank then draws its own noise.
        quiet: Print no notices (ranks other than 0).
        labels: The training labels, for a conditional model (see :func:`make_loss`).
    """

    def __init__(
        self,
        module: nn.Module,
        opts: StepOptions,
        device: torch.device,
        d: D.DistInfo | None,
        seed: int,
        quiet: bool = False,
        labels: Tensor | None = None,
    ) -> None:
        self.module = module
        self.opts = opts
        self.steps = 0
        loss = make_loss(module, opts, quiet, labels)
        self.compiled = loss.compiled if isinstance(loss, CompiledLoss) else None
        self.trace_loss = loss if isinstance(loss, TraceLoss) else None
        self.compile_seconds: float | None = None
        self.quiet = quiet
        self.engine: nn.Module = Objective(module, loss)
        if d is not None:
            # DDP averages gradients over ranks; each rank's loss is a per-datapoint mean over
            # its b datapoints, so the average is the gradient of the global batch of
            # world_size × b, as in one process.
            self.engine = DistributedDataParallel(
                self.engine,
                device_ids=[device.index] if device.type == "cuda" else None,
                # a masked KL (free bits, global or per layer) leaves prior params unused
                find_unused_parameters=opts.free_bits > 0
                or getattr(module, "layer_free_bits", None) is not None,
            )
            torch.manual_seed(seed * 7919 + d.rank)  # each rank its own noise; same weights
        self.optimizer = make_optimizer(
            opts.optimizer, module.parameters(), opts.lr, opts.clip_norm
        )
        self._weighted = kl_weighted(module)
        # Adam's update compiled too (measured: 8% of a 784-200-200-50 step at batch 128 on a
        # CPU core, for ~13 s of compilation); Pyro's ClippedAdam stays eager.
        self._opt_state = (
            "eager-first" if self.compiled is not None and opts.optimizer == "adam" else "eager"
        )
        self._opt_step: Callable[[], Any] = self.optimizer.step
        self._compiling_for = 0.0

    def __call__(self, x: Tensor, idx: Tensor, n: int) -> Tensor:
        """Update on minibatch ``x`` (indices ``idx`` of ``n``); return its summed loss."""
        opts = self.opts
        if self._weighted:
            self.module.beta = kl_weight(self.steps, opts.beta, opts.warmup_steps)
            self.module.free_bits = opts.free_bits
        timed = self.compiled is not None and self.compile_seconds is None
        if timed:
            t0 = time.perf_counter()
        loss = self.engine(x, idx, n)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.clip_norm is not None and opts.optimizer == "adam":
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), opts.clip_norm)
        self._optimizer_step()
        self.steps += 1
        # Copied out of the graph's memory: CUDA graphs reuse their outputs at the next replay.
        out = loss.detach() * x.shape[0]
        if timed:
            if x.device.type == "cuda":  # the compiled kernels ran asynchronously
                torch.cuda.synchronize(x.device)
            self._report_compile(time.perf_counter() - t0)
        return out

    def _optimizer_step(self) -> None:
        """The optimizer's update; with ``compile``, Adam's update through :func:`torch.compile`
        from the second step on (the first, eager, creates the state the graph then reads).

        The compiled update takes its bias correction from Adam's step counter tensor (float32
        unless the default dtype was float64 when the optimizer was made), where eager Adam uses
        a Python float: the two agree to that precision, not bit for bit.
        """
        if self._opt_state == "eager-first":
            self.optimizer.step()
            c = self.compiled
            if c is not None and c.fallback is None:
                self._opt_step = torch.compile(self.optimizer.step, backend=c.backend)
                self._opt_state = "compiling"
            else:
                self._opt_state = "eager"
            return
        if self._opt_state == "compiling":
            try:
                self._opt_step()
            except Exception as err:
                fused.failure(err, "the optimizer step runs eagerly", self.quiet)
                self._opt_step = self.optimizer.step
                self._opt_state = "eager"
                self._opt_step()
                return
            self._opt_state = "compiled"
            return
        self._opt_step()

    def _report_compile(self, seconds: float) -> None:
        """Keep, and say once, how long compilation took: the first step (loss and gradient
        graphs compiled) plus, when Adam's update is compiled, the second."""
        self._compiling_for += seconds
        if self._opt_state in ("compiling", "eager-first"):  # the update compiles next step
            return
        self.compile_seconds = self._compiling_for
        c = self.compiled
        if c is None or c.fallback is not None or self.quiet:
            return
        what = (
            "loss, gradient and Adam update"
            if self._opt_state == "compiled"
            else "loss and gradient"
        )
        print(
            f"pvae: compiled the training step ({what}) in {self.compile_seconds:.1f} s "
            f"(torch.compile, {c.backend}, mode={c.mode_used or 'default'}; the first steps, "
            "compilation included)",
            file=sys.stderr,
        )

    def begin_epoch(self) -> None:
        """Have the epoch's first step run Pyro's checks (see :class:`TraceLoss`)."""
        if self.trace_loss is not None:
            self.trace_loss.check_next()

    def unweight(self) -> None:
        """Make the module the plain model again (β = 1, no free bits): for validation, the
        figures and the module returned. The next step sets β and free bits again."""
        if self._weighted:
            self.module.beta, self.module.free_bits = 1.0, 0.0


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffle of epoch ``epoch``: it depends only on (seed, epoch), so resuming needs no
    loader state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def run_epoch(
    step: TrainStep,
    train: Split,
    batch_size: int,
    seed: int,
    epoch: int,
    d: D.DistInfo | None,
    on_step: Callable[[], None] = lambda: None,
    run_path: Path | None = None,
) -> float:
    """Train one epoch of shuffled minibatches (this rank's shard of them in a distributed job),
    or of the module's own (:func:`minibatches`).

    Returns:
        The epoch's training objective, nats per datapoint: the mean over every step's
        minibatch (over every rank's, so all ranks report the same number and all stop together
        on divergence).

    Raises:
        TrainingDivergedError: a loss or a parameter became NaN/inf.
    """
    gen = epoch_generator(seed, epoch)
    losses: list[Tensor] = []
    seen = 0
    step.module.train()
    step.begin_epoch()
    try:
        with fit_context():
            for idx, x in minibatches(step.module, train, batch_size, gen, d):
                losses.append(step(x, idx, len(train)))
                seen += x.shape[0]
                on_step()
    except (ValueError, RuntimeError) as err:
        # Non-finite parameters make the next step fail inside distribution validation;
        # report that as the divergence it is, at the step where it began.
        raise_if_diverged(losses, step.module, epoch, step.steps, run_path, cause=err)
        raise
    per_step = torch.stack(losses)
    if d is not None:
        torch.distributed.all_reduce(per_step)
    # One device sync per epoch: the NaN check and the epoch mean together.
    raise_if_diverged(per_step.unbind(), step.module, epoch, step.steps, run_path)
    if d is None:
        return float(-per_step.sum() / seen)
    per_rank = -(-len(train) // d.world_size)  # the shards are padded to equal size
    return float(-per_step.sum() / (per_rank * d.world_size))


def minibatches(
    module: nn.Module,
    train: Split,
    batch_size: int,
    generator: torch.Generator,
    d: D.DistInfo | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """An epoch's ``(indices, x)`` minibatches: the module's own where it has a
    ``batch_order(batch_size, generator)`` that gives them (a list of index tensors, e.g.
    :meth:`pvae.SemiSupervisedVAE.batch_order`'s labelled minibatches), else a uniform shuffle
    of ``train`` (this rank's shard of it in a distributed job).

    Raises:
        ValueError: The module orders its own minibatches in a distributed job (not sharded).
    """
    order = getattr(module, "batch_order", None)
    batches = order(batch_size, generator) if callable(order) else None
    if batches is None:
        shard = (lambda o: D.shard(o, d)) if d is not None else None
        yield from train.batches(batch_size, shuffle=True, generator=generator, shard=shard)
        return
    if d is not None:
        raise ValueError(
            f"{type(module).__name__}.batch_order gives its own minibatches, which a "
            f"distributed job (world size {d.world_size}) does not shard; train it in one "
            "process (e.g. labelled_per_batch = 0 for a SemiSupervisedVAE)"
        )
    for idx in batches:
        idx = idx.to(train.x.device)
        yield idx, train.observed(idx)


def steps_per_epoch(module: nn.Module, n: int, batch_size: int, d: D.DistInfo | None) -> int:
    """How many steps :func:`minibatches` takes an epoch over ``n`` datapoints (for the
    progress report): the length of the module's own ``batch_order``, else ⌈n_rank / B⌉ with
    n_rank this rank's share of the shuffle."""
    order = getattr(module, "batch_order", None)
    batches = order(batch_size, torch.Generator().manual_seed(0)) if callable(order) else None
    if batches is not None:
        return len(batches)
    world = 1 if d is None else d.world_size
    return math.ceil(-(-n // world) / batch_size)
