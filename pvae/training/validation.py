"""Validation during training: the ELBO and its terms every epoch, for a hierarchical VAE the KL
term and active units of each layer (and the KL of each unit) every epoch, IWAE_k curve points on
a schedule, and the pictures a run folder gets at the end.

Both estimators read the module's Pyro traces (:func:`pvae.evaluate_elbo`, :func:`pvae.bounds`),
so they serve any module with ``model``/``guide``; the validation numbers are always the true
ELBO, whatever β or free bits the training objective used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pvae import distributed as D
from pvae.datasets import Split
from pvae.diagnostics import layer_columns, layer_summary
from pvae.evaluation.bounds import bounds
from pvae.evaluation.elbo import ElboEstimate, evaluate_elbo
from pvae.options import EvalOptions
from pvae.rundir import CURVES, RECONSTRUCTIONS, SAMPLES
from pvae.training.step import fit_context

__all__ = [
    "ValidationOptions",
    "curve_points",
    "layer_points",
    "validate",
    "validation_elbo",
    "write_figures",
]


@dataclass
class ValidationOptions(EvalOptions):
    """What is evaluated on the validation split: the ``[eval]`` options
    (:class:`~pvae.options.EvalOptions`, whose defaults and documentation these are), checked on
    construction, with ``curve_ks`` as a tuple. :meth:`of` derives them from an
    :class:`~pvae.options.EvalOptions`."""

    def __post_init__(self) -> None:
        self.check()
        self.curve_ks = tuple(self.curve_ks)

    @classmethod
    def of(cls, options: EvalOptions) -> ValidationOptions:
        """``options`` as validation options (checked)."""
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(EvalOptions)})

    def curves_at(self, epoch: int) -> bool:
        """Whether ``epoch`` records curve points: a schedule of the epoch number alone, so a
        resumed run records (and draws random numbers for) exactly the epochs an uninterrupted
        one does."""
        return bool(self.curve_ks) and epoch % self.curve_every == 0


def validate(
    module: nn.Module,
    val: Split,
    opts: ValidationOptions,
    epoch: int,
    d: D.DistInfo | None,
    labels: bool = False,
) -> dict[str, float]:
    """The validation part of epoch ``epoch``'s record (nats per datapoint); with ``labels``
    the model and guide get the validation labels as ``y``.

    Returns:
        ``val_elbo``, ``val_elbo_se``, ``val_recon``, ``val_kl``; for a module with
        ``layer_kls`` the columns of :func:`layer_points`; on the curve schedule also
        ``val_iwae_<k>`` for each k and ``val_log_px`` (the largest k).
    """
    module.eval()
    x = val.observed()
    y = val.y if labels else None
    with fit_context():
        s = validation_elbo(module, x, opts.batch_size, d, y)
        record = {
            "val_elbo": s["elbo"],
            "val_elbo_se": s["elbo_se"],
            "val_recon": s["recon"],
            "val_kl": s["kl"],
        }
        record.update(layer_points(module, x[: opts.batch_size]))
        if opts.curves_at(epoch):
            sub = slice(0, opts.curve_subset)
            ys = None if y is None else y[sub]
            record.update(curve_points(module, x[sub], opts.curve_ks, d, ys))
    return record


def validation_elbo(
    module: nn.Module,
    x: Tensor,
    batch_size: int,
    d: D.DistInfo | None,
    y: Tensor | None = None,
) -> dict[str, float]:
    """:meth:`ElboEstimate.summary` of ``x`` (labels ``y`` passed on, if given); in a
    distributed job each rank evaluates a contiguous shard and the per-datapoint values are
    gathered on every rank."""
    if d is None:
        kw = None if y is None else {"y": y}
        return evaluate_elbo(module, x, batch_size=batch_size, kwargs=kw).summary()
    part = x.tensor_split(d.world_size)[d.rank]  # may be empty when N < world size
    ypart = None if y is None else y.tensor_split(d.world_size)[d.rank]
    mine_n = part.shape[0]
    if not mine_n:
        part, ypart = x[:1], None if y is None else y[:1]
    kw = None if ypart is None else {"y": ypart}
    e = evaluate_elbo(module, part, batch_size=batch_size, kwargs=kw)
    mine = torch.stack([e.elbo, e.recon, e.kl])[:, :mine_n]
    every = torch.cat(D.gather_blocks({d.rank: mine}, d.world_size), dim=1)
    nan = torch.full_like(every[0], math.nan)
    return ElboEstimate(every[0], every[1], every[2], e.analytic_kl, e.num_dims, nan).summary()


def layer_points(module: nn.Module, x: Tensor) -> dict[str, float]:
    """For a hierarchical VAE (a module with ``layer_kls``), each layer's KL term
    ``val_kl_<site>``, active units ``val_active_<site>`` and KL per unit
    ``val_unit_kl_<site>_<u>`` on ``x`` (the first validation chunk:
    :func:`pvae.diagnostics.layer_summary`, one draw of the guide and a few for the active
    units, a small share of an epoch); nothing for any other module. Its draws come from a
    forked random state, so training draws what it would without it."""
    if not callable(getattr(module, "layer_kls", None)):
        return {}
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        summary = layer_summary(module, x)
    return layer_columns(summary) if summary else {}


def curve_points(
    module: nn.Module,
    x: Tensor,
    ks: Sequence[int],
    d: D.DistInfo | None,
    y: Tensor | None = None,
) -> dict[str, float]:
    """IWAE_k of ``x`` for each k (``val_iwae_<k>``) and the largest-k one as ``val_log_px``."""
    kw = None if y is None else {"y": y}
    ladder = bounds(module, x, ks=ks, kwargs=kw, distributed=d is not None)
    points = {f"val_iwae_{k}": rung["mean"] for k, rung in ladder.iwae.items()}
    points["val_log_px"] = ladder.iwae[max(ladder.iwae)]["mean"]
    frac = ladder.log_px.get("khat_frac_above_0.7")
    if frac is not None:  # k̂ needs k ≥ 10: how far val_log_px can be trusted
        points["val_log_px_khat_frac"] = frac
    return points


def write_figures(
    module: nn.Module, run_path: Path, history: list[dict[str, float]], shown: Tensor
) -> None:
    """``curves.png`` always; ``reconstructions.png`` and ``samples.png`` for a module over
    image-shaped data that can ``reconstruct(x)`` and ``sample(n, mean=True)`` (a
    :class:`~pvae.VAE`, a :class:`~pvae.HierarchicalVAE`)."""
    from pvae import plotting

    images = plotting.is_image_shape(getattr(module, "data_shape", None)) and all(
        callable(getattr(module, name, None)) for name in ("reconstruct", "sample")
    )
    if images:
        plotting.reconstructions(module, shown, path=run_path / RECONSTRUCTIONS)
        plotting.samples(module, path=run_path / SAMPLES)
    plotting.training_curves(history, path=run_path / CURVES)
