"""Before the first step: the splits, the device, and the module built for and checked against the
data, so that bad input fails before anything is written."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from pvae import distributed as D
from pvae._checks import check_data_fits
from pvae.datasets import DataSplits, Split
from pvae.enumeration import check_enumerable, enumerated
from pvae.program import as_program, param_sites
from pvae.traces import inspect_pair

__all__ = [
    "as_splits",
    "check_trainable",
    "prepare",
    "resolve_device",
    "set_enum_nesting",
    "training_device",
]


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


def training_device(device: str | torch.device, d: D.DistInfo | None) -> torch.device:
    """:func:`resolve_device`, with one GPU per rank in a distributed job."""
    dev = resolve_device(device)
    if d is not None and dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", d.local_rank)
    return dev


def check_trainable(module: Any) -> None:
    """Raise ``TypeError`` unless ``module`` is an ``nn.Module`` with ``model`` and ``guide``.

    Args:
        module: What was passed to :func:`pvae.fit` as its first argument.
    """
    missing = [name for name in ("model", "guide") if not callable(getattr(module, name, None))]
    if missing:
        raise TypeError(
            "fit trains a pvae.VAE or an nn.Module with model(x) and guide(x) methods; the "
            f"first argument (vae), a {type(module).__name__}, has no {' or '.join(missing)} method"
        )
    if not isinstance(module, nn.Module):
        raise TypeError(
            "fit optimizes module.parameters(): the first argument (vae) must be an nn.Module "
            f"(e.g. a PyroModule) with model/guide methods, got {type(module).__name__}"
        )


def as_splits(data: Any) -> tuple[Split, Split | None]:
    """Training and (if any) validation split of what was passed as ``data``."""
    if isinstance(data, DataSplits):
        return data.train, data.val
    if isinstance(data, Split):
        return data, None
    from pvae.datasets import as_float

    return Split(as_float("data", data), None), None


def prepare(
    module: nn.Module, train: Split, val: Split | None, device: torch.device
) -> tuple[Split, Split | None]:
    """Build ``module`` for the data, check the data against it, move both to ``device``.

    What applies to a module depends on what it has: ``build(data_shape)`` (a
    :class:`~pvae.VAE` creates its default networks), a ``likelihood`` that checks the data's
    range, ``check_compatible(x)`` (a dry run of the networks). The data follow the module's
    floating dtype, so a float64 model trains on float64 data.

    Returns:
        The training and validation splits on ``device`` in the module's dtype.

    Raises:
        ValueError: the data do not fit the module, or the module has no parameters to train.
    """
    if len(train) == 0:
        raise ValueError("data is empty: the training split has no datapoints")
    if callable(getattr(module, "build", None)):
        module.build(train.data_shape)
    _check_data(module, train, "data")
    if val is not None:
        _check_data(module, val, "validation data")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        raise ValueError(
            f"the {type(module).__name__} passed to fit has no floating-point parameters to "
            "train (fit optimizes module.parameters())"
        )
    module.to(device)
    train = train.to(device, dtype)
    val = val.to(device, dtype) if val is not None else None
    if callable(getattr(module, "check_compatible", None)):
        module.check_compatible(train.x[:2])
    return train, val


def _check_data(module: nn.Module, split: Split, name: str) -> None:
    # Dynamic binarization draws are binary by construction; their intensities were range-checked
    # when the split was made, so checking one draw covers every epoch.
    check_data_fits(module, split.observed(), name)


def set_enum_nesting(
    module: nn.Module,
    elbo: pyro.infer.ELBO,
    named: bool,
    x: Tensor,
    kwargs: Mapping[str, Any] | None = None,
    validated: bool = True,
) -> None:
    """Give a :class:`pyro.infer.TraceEnum_ELBO` the plate nesting of ``module``'s traces.

    Pyro's enumeration puts each enumerated site's dimension to the left of the plates, so
    ``TraceEnum_ELBO`` must know how many plates the pair nests (one more with vectorized
    particles). The pair is traced once on ``x`` with the random state left as it was (a
    resumed run draws what an uninterrupted one does), and the nesting is set where the
    objective was built from its name (``objective="enum_elbo"``) or left at Pyro's default
    (infinity: Pyro would guess it at the first step, from the global random stream).

    Args:
        module: The module trained.
        elbo: The objective; anything but a ``TraceEnum_ELBO`` is left alone.
        named: Whether ``elbo`` was built from the name ``"enum_elbo"``.
        x: A few training datapoints.
        kwargs: Keyword arguments of model and guide (labels).
        validated: Whether a validation split will be evaluated: its estimators sum the
            enumerated sites out within :mod:`pvae.enumeration`'s scope, checked here before
            the first step (``TraceEnum_ELBO`` itself trains a wider class).

    Raises:
        ValueError: ``"enum_elbo"`` for a pair without enumerated sites, an enumerated site
            beyond what the estimators sum out (:mod:`pvae.enumeration`; named), or an
            instance whose ``max_plate_nesting`` is smaller than the pair's.
    """
    if not isinstance(elbo, pyro.infer.TraceEnum_ELBO):
        return
    with param_sites(False), pyro.get_param_store().scope(), pyro.validation_enabled(False):
        nesting, model_trace, guide_trace = inspect_pair(as_program(module), (x,), kwargs or {})
    if not enumerated(model_trace, guide_trace):
        if named:
            raise ValueError(
                "objective 'enum_elbo' (TraceEnum_ELBO) sums out the sites marked for "
                f"enumeration, but the {type(module).__name__}'s model and guide have none: mark "
                "discrete sites with infer={'enumerate': 'parallel'} (pyro.infer."
                "config_enumerate), or use objective 'elbo'"
            )
        return
    if validated:
        check_enumerable(model_trace, guide_trace)
    need = nesting + int(bool(elbo.vectorize_particles) and elbo.num_particles > 1)
    if named or elbo.max_plate_nesting == math.inf:
        elbo.max_plate_nesting = need
    elif elbo.max_plate_nesting < need:
        raise ValueError(
            f"objective: TraceEnum_ELBO(max_plate_nesting={elbo.max_plate_nesting}) is smaller "
            f"than the {need} plate(s) the {type(module).__name__}'s model and guide nest: pass "
            f"max_plate_nesting={need}, or leave it out and fit sets it"
        )
