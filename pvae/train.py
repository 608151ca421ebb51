r"""Training: stochastic variational inference over a VAE's model/guide pair.

Each step evaluates one of Pyro's ELBO estimators on a minibatch inside the ``"data"`` plate
(scaled by N / B, an unbiased estimate of the full-data ELBO), divides by N so the loss is the
negative ELBO *per datapoint* (learning rates and gradient clipping then do not depend on the
dataset size), and takes a torch optimizer step over ``vae.parameters()``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.optim.clipped_adam
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pvae import distributed as D
from pvae._checks import one_of, positive_float, positive_int
from pvae.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    check_state_matches,
    load_checkpoint,
    save_checkpoint,
)
from pvae.config import dumps_toml
from pvae.datasets import DataSplits, Split
from pvae.evaluation.bounds import bounds
from pvae.evaluation.elbo import ElboEstimate, evaluate_elbo
from pvae.model import VAE
from pvae.objectives import fused, make_objective

__all__ = ["FitResult", "TrainingDivergedError", "fit", "resolve_device"]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
METRICS = "metrics.json"


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        vae: The trained model (on the training device).
        history: One dict per epoch: ``epoch``, ``step``, ``train_elbo`` and, with a validation
            split, ``val_elbo``, ``val_elbo_se``, ``val_recon``, ``val_kl`` (nats per datapoint).
        run_dir: Where the checkpoint, metrics and pictures were written, if anywhere.
    """

    vae: VAE
    history: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    return dev


def _as_splits(data: Any) -> tuple[Split, Split | None]:
    if isinstance(data, DataSplits):
        return data.train, data.val
    if isinstance(data, Split):
        return data, None
    from pvae.datasets import _as_float

    return Split(_as_float("data", data), None), None


def _make_optimizer(
    name: str, params: Any, lr: float, clip_norm: float | None
) -> torch.optim.Optimizer:
    one_of("optimizer", name, ("adam", "clipped_adam"))
    if name == "clipped_adam":
        # Pyro's ClippedAdam clips each gradient elementwise to [-clip_norm, clip_norm].
        return pyro.optim.clipped_adam.ClippedAdam(params, lr=lr, clip_norm=clip_norm or 10.0)
    return torch.optim.Adam(params, lr=lr)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # The shuffle of epoch e depends only on (seed, e), so resuming needs no loader state.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    atomic_write_bytes(run_dir / METRICS, (json.dumps(history, indent=1) + "\n").encode())


def _check_data(vae: VAE, split: Split, name: str) -> None:
    # Dynamic binarization draws are binary by construction; their intensities were range-checked
    # when the split was made, so checking one draw covers every epoch.
    vae.likelihood.check_data(split.observed(), name=name)


def fit(
    vae: VAE,
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
    seed: int = 0,
    device: str | torch.device = "auto",
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    eval_batch_size: int = 1024,
    curve_ks: Sequence[int] = (),
    curve_every: int = 10,
    curve_subset: int = 256,
    config: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``vae`` on ``data`` by stochastic variational inference.

    Args:
        vae: The model; built for the data's shape here if it is not yet.
        data: :class:`~pvae.datasets.DataSplits` (validation ELBO is reported each epoch), one
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
            latent sites.
        warmup_steps: Anneal β linearly from 0 over this many steps (Bowman et al. 2016;
            Sønderby et al. 2016); 0 disables warm-up.
        free_bits: Free bits (Kingma et al. 2016), nats per latent dimension: no KL gradient while
            the minibatch KL is below ``free_bits × latent_dim``. Validation always reports the
            true ELBO; ``train_elbo`` is the regularized objective.
        num_particles: Samples of z per datapoint in each ELBO estimate.
        vectorize_particles: Draw those samples in one batched pass.
        estimator: Encoder gradient estimator for ``"iwae"``: ``"reparam"``, ``"stl"``, ``"dreg"``.
        fast: Compute the objective on the fused fast path (:mod:`pvae.objectives.fused`): the
            same loss and gradients as Pyro's objective for the same draws, without per-step
            tracing. Falls back to Pyro, with a one-line notice, for a VAE that overrides
            ``model`` or ``guide``; an ELBO instance as ``objective`` always runs through Pyro.
        seed: Seeds parameter initialization (for default networks), shuffling and sampling.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        run_dir: Folder for ``checkpoint.pt`` (every epoch), ``metrics.json`` and PNG grids.
        resume: Continue from ``run_dir/checkpoint.pt``.
        progress: Show a progress bar and one line per epoch.
        eval_batch_size: Datapoints per chunk in validation.
        curve_ks: Every ``curve_every`` epochs, record IWAE_k on the first
            ``curve_subset`` validation datapoints for each k, as ``val_iwae_<k>``, and the
            largest-k estimate as ``val_log_px``. Empty: off.
        curve_every: Epochs between those evaluations.
        curve_subset: Validation datapoints used for them.
        config: The run's configuration, stored in the checkpoint and as ``config.toml``.
        on_epoch: Called with each epoch's record.

    Returns:
        A :class:`FitResult`.

    Raises:
        TrainingDivergedError: the loss became NaN/inf (the message names epoch and step; the
            last good checkpoint is kept).
    """
    epochs = positive_int("epochs", epochs)
    curve_ks = tuple(positive_int("curve_ks", k) for k in curve_ks)
    curve_every = positive_int("curve_every", curve_every)
    curve_subset = positive_int("curve_subset", curve_subset)
    batch_size = positive_int("batch_size", batch_size)
    eval_batch_size = positive_int("eval_batch_size", eval_batch_size)
    lr = positive_float("lr", lr)
    if clip_norm is not None:
        clip_norm = positive_float("clip_norm", clip_norm)
    one_of("optimizer", optimizer, ("adam", "clipped_adam"))
    elbo = make_objective(objective, num_particles, vectorize_particles, estimator)
    beta = positive_float("beta", beta, allow_zero=True)
    free_bits = positive_float("free_bits", free_bits, allow_zero=True)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}")
    if not isinstance(vae, VAE):
        raise TypeError(f"vae must be a pvae.VAE, got {type(vae).__name__}")
    d = D.info()
    dev = resolve_device(device)
    if d is not None and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", d.local_rank)  # one GPU per rank
    main = d is None or d.is_main
    train, val = _as_splits(data)
    if len(train) == 0:
        raise ValueError("data is empty: the training split has no datapoints")
    run_path = Path(run_dir) if run_dir is not None else None
    if resume and run_path is None:
        raise ValueError("resume=True needs run_dir, the folder holding checkpoint.pt")
    if run_path is not None and not resume and (run_path / CHECKPOINT).exists():
        raise ValueError(
            f"run_dir {str(run_path)!r} already holds a checkpoint; resume it (resume=True, "
            "`pvae train --resume RUN`) or choose another folder"
        )

    pyro.set_rng_seed(seed)
    vae.build(train.data_shape)
    _check_data(vae, train, "data")
    if val is not None:
        _check_data(vae, val, "validation data")
    vae.to(dev)
    # Data follow the model's floating dtype (a float64 model trains on float64 data).
    dtype = next((p.dtype for p in vae.parameters() if p.is_floating_point()), None)
    train = train.to(dev, dtype)
    val = val.to(dev, dtype) if val is not None else None
    vae.check_compatible(train.x[:2])
    _notice_monte_carlo_kl(vae, elbo, train.x[:2])
    loss_fn = _loss_function(
        vae, elbo, objective, fast, num_particles, vectorize_particles, estimator, quiet=not main
    )
    engine: nn.Module = _Objective(vae, loss_fn)
    if d is not None:
        # DDP averages gradients over ranks; each rank's loss is scaled by N / b, so the average
        # is the gradient of the global batch of world_size × b, as in one process.
        engine = DistributedDataParallel(
            engine,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=free_bits > 0,  # masked KL leaves prior parameters unused
        )
        torch.manual_seed(seed * 7919 + d.rank)  # each rank its own noise; same initial weights
    opt = _make_optimizer(optimizer, vae.parameters(), lr, clip_norm)

    history: list[dict[str, float]] = []
    start_epoch, step = 1, 0
    if resume:
        ckpt = load_checkpoint(run_path / CHECKPOINT, map_location=dev)
        check_state_matches(vae, ckpt["model"], str(run_path / CHECKPOINT))
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(_rank_rng(ckpt["rng"], d))
        history, start_epoch, step = list(ckpt["history"]), ckpt["epoch"] + 1, ckpt["step"]
        config = config if config is not None else ckpt.get("config")

    def checkpoint(epoch: int) -> None:
        if run_path is None:
            return
        rng = _rng_state()
        if d is not None:  # every rank's generators, for an exact resume
            states: list[Any] = [None] * d.world_size
            torch.distributed.all_gather_object(states, rng)
            rng = {"ranks": states}
        if not main:
            return
        save_checkpoint(
            run_path / CHECKPOINT,
            {
                "epoch": epoch,
                "step": step,
                "model": vae.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": rng,
                "history": history,
                "config": config,
                "data_shape": list(vae.data_shape),
            },
        )
        _write_metrics(run_path, history)

    if run_path is not None:
        # Only now, with every input checked, does the run folder appear (rank 0 writes).
        if main:
            run_path.mkdir(parents=True, exist_ok=True)
            if config is not None:  # a resumed run may extend train.epochs: keep it current
                atomic_write_bytes(run_path / CONFIG, dumps_toml(config).encode())
        if not resume:
            checkpoint(0)  # a last good checkpoint exists from the start

    n = len(train)
    shard = (lambda order: D.shard(order, d)) if d is not None else None
    per_rank = n if d is None else -(-n // d.world_size)
    steps_per_epoch = math.ceil(per_rank / batch_size)
    bar = _progress(progress and main, total=(epochs - start_epoch + 1) * steps_per_epoch)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs + 1):
            t0 = time.perf_counter()
            vae.train()
            losses = []
            gen = _epoch_generator(seed, epoch)
            try:
                for idx, x in train.batches(batch_size, shuffle=True, generator=gen, shard=shard):
                    vae.beta = kl_weight(step, beta, warmup_steps)
                    vae.free_bits = free_bits
                    loss = engine(x, idx, n) / n
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip_norm is not None and optimizer == "adam":
                        torch.nn.utils.clip_grad_norm_(vae.parameters(), clip_norm)
                    opt.step()
                    losses.append(loss.detach() * x.shape[0])
                    step += 1
                    if bar is not None:
                        bar.update(1)
            except (ValueError, RuntimeError) as err:
                # Non-finite parameters make the next step fail inside distribution validation;
                # report that as the divergence it is, at the step where it began.
                _raise_if_diverged(losses, vae, epoch, step, run_path, cause=err)
                raise
            if d is not None:  # every rank sees every rank's losses, so all stop together
                stacked = torch.stack(losses)
                torch.distributed.all_reduce(stacked)
                losses = list(stacked.unbind())
            # One device sync per epoch: the NaN check and the epoch mean together.
            _raise_if_diverged(losses, vae, epoch, step, run_path)
            per_step = torch.stack(losses)
            record: dict[str, float] = {
                "epoch": epoch,
                "step": step,
                "train_elbo": float(-per_step.sum() / (per_rank * (d.world_size if d else 1))),
            }
            if val is not None:
                vae.eval()
                s = _validation_elbo(vae, val.observed(), eval_batch_size, d)
                record.update(
                    val_elbo=s["elbo"],
                    val_elbo_se=s["elbo_se"],
                    val_recon=s["recon"],
                    val_kl=s["kl"],
                )
            # On a schedule of the epoch number alone, so a resumed run records (and draws random
            # numbers for) exactly the same epochs as an uninterrupted one.
            if val is not None and curve_ks and epoch % curve_every == 0:
                ladder = bounds(
                    vae, val.observed()[:curve_subset], ks=curve_ks, distributed=d is not None
                )
                for k, rung in ladder.iwae.items():
                    record[f"val_iwae_{k}"] = rung["mean"]
                record["val_log_px"] = ladder.iwae[max(ladder.iwae)]["mean"]
            history.append(record)
            checkpoint(epoch)
            if progress and main:
                line = f"epoch {epoch:>4}/{epochs}  train ELBO {record['train_elbo']:10.3f}"
                if "val_elbo" in record:
                    line += f"  val ELBO {record['val_elbo']:10.3f} ± {record['val_elbo_se']:.3f}"
                _write(bar, f"{line}  ({time.perf_counter() - t0:.2f}s)")
            if on_epoch is not None:
                on_epoch(record)
    except KeyboardInterrupt:
        if run_path is not None and main:
            _write(
                bar,
                f"interrupted in epoch {epoch}; checkpoint of epoch {epoch - 1} kept in "
                f"{run_path} (continue with resume)",
            )
        raise
    finally:
        vae.beta, vae.free_bits = 1.0, 0.0  # the model is the plain model again
        if bar is not None:
            bar.close()
    vae.eval()
    if d is not None:
        torch.distributed.barrier()
    if run_path is not None and main:
        from pvae import plotting

        if plotting.is_image_shape(vae.data_shape):
            shown = (val if val is not None else train).observed()
            plotting.reconstructions(vae, shown, path=run_path / "reconstructions.png")
            plotting.samples(vae, path=run_path / "samples.png")
        plotting.training_curves(history, path=run_path / "curves.png")
    return FitResult(vae, history, run_path)


class _Objective(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel can wrap it: every
    parameter of the VAE (priors, likelihoods, guides included) is then in the all-reduce."""

    def __init__(self, vae: VAE, fn: Callable[[Tensor, Tensor, int], Tensor]) -> None:
        super().__init__()
        self.vae = vae
        self.fn = fn

    def forward(self, x: Tensor, idx: Tensor, n: int) -> Tensor:
        return self.fn(x, idx, n)


def _rank_rng(state: dict[str, Any], d: D.DistInfo | None) -> dict[str, Any]:
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


def _validation_elbo(vae: VAE, x: Tensor, batch_size: int, d: D.DistInfo | None) -> dict:
    """Validation ELBO summary; in a distributed job each rank evaluates a contiguous shard and
    the per-datapoint values are gathered on every rank."""
    if d is None:
        return evaluate_elbo(vae, x, batch_size=batch_size).summary()
    part = x.tensor_split(d.world_size)[d.rank]  # may be empty when N < world size
    e = evaluate_elbo(vae, part if part.shape[0] else x[:1], batch_size=batch_size)
    mine = torch.stack([e.elbo, e.recon, e.kl])[:, : part.shape[0]]
    every = torch.cat(D.gather_blocks({d.rank: mine}, d.world_size), dim=1)
    nan = torch.full_like(every[0], math.nan)
    return ElboEstimate(every[0], every[1], every[2], e.analytic_kl, e.num_dims, nan).summary()


def _loss_function(
    vae: VAE,
    elbo: pyro.infer.ELBO,
    objective: str | pyro.infer.ELBO,
    fast: bool,
    num_particles: int,
    vectorize_particles: bool,
    estimator: str,
    quiet: bool = False,
) -> Callable[[Tensor, Tensor, int], Tensor]:
    """``(x, idx, N) -> loss``: the fused fast path where it is exact, else Pyro's objective."""
    if fast and isinstance(objective, str):
        reason = fused.supports(vae)
        if reason is None:
            fo = fused.FusedObjective(objective, num_particles, vectorize_particles, estimator)
            return lambda x, idx, n: fo.loss(vae, x, n)
        if not quiet:
            print(
                f"pvae: note: {reason}; training through Pyro's {type(elbo).__name__} "
                "(the fast path handles the standard VAE model/guide only)",
                file=sys.stderr,
            )
    return lambda x, idx, n: elbo.differentiable_loss(
        vae.model, vae.guide, x, size=n, subsample=idx
    )


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """β at 0-based ``step``: linear warm-up from β/warmup_steps to β, then constant."""
    return beta * min(1.0, (step + 1) / warmup_steps) if warmup_steps else beta


def _notice_monte_carlo_kl(vae: VAE, elbo: pyro.infer.ELBO, x: Tensor) -> None:
    """One notice when TraceMeanField_ELBO must fall back to the Monte Carlo KL."""
    if not isinstance(elbo, pyro.infer.TraceMeanField_ELBO):
        return
    with torch.no_grad():
        try:
            torch.distributions.kl_divergence(vae.encode(x), vae.prior())
        except NotImplementedError:
            print(
                f"pvae: note: no closed-form KL between the {type(vae.encoder).__name__} guide "
                f"and the {type(vae.prior).__name__} prior; meanfield_elbo uses the Monte Carlo "
                "KL estimate (Pyro's fallback) for it",
                file=sys.stderr,
            )


def _raise_if_diverged(
    losses: list[Tensor],
    vae: VAE,
    epoch: int,
    step: int,
    run_path: Path | None,
    cause: BaseException | None = None,
) -> None:
    """Raise :class:`TrainingDivergedError` if a loss or a parameter became NaN/inf."""
    bad = (
        [i for i, v in enumerate(torch.stack(losses).tolist()) if not math.isfinite(v)]
        if losses
        else []
    )
    if bad:
        first = bad[0]
        what = f"loss became {losses[first].item():.4g} at epoch {epoch}, step {first + 1}"
        global_step = step - len(losses) + first + 1
    elif any(not bool(torch.isfinite(p).all()) for p in vae.parameters()):
        first = len(losses)
        what = f"parameters became non-finite at epoch {epoch}, step {first}"
        global_step = step
    else:
        return
    kept = (
        f"; the last good checkpoint (epoch {epoch - 1}) in {run_path} is kept"
        if run_path is not None
        else ""
    )
    raise TrainingDivergedError(
        f"{what} of the epoch (global step {global_step}){kept}; lower train.lr, set "
        "train.clip_norm, or check the data"
    ) from cause


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)


def _write(bar: Any, line: str) -> None:
    if bar is not None:
        bar.write(line)
    else:
        print(line)


def load_run_state(run_dir: str | Path, vae: VAE, map_location: Any = "cpu") -> dict[str, Any]:
    """Load ``run_dir/checkpoint.pt`` (or a checkpoint file) into ``vae``; return the checkpoint."""
    path = Path(run_dir)
    path = path / CHECKPOINT if path.is_dir() else path
    ckpt = load_checkpoint(path, map_location=map_location)
    if vae.data_shape is None and "data_shape" in ckpt:
        vae.build(ckpt["data_shape"])
    check_state_matches(vae, ckpt["model"], str(path))
    vae.load_state_dict(ckpt["model"])
    return ckpt


__all__ += ["CheckpointError", "load_run_state"]
