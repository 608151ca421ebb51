"""``[model]`` keys of a hierarchical model's inference: bottom-up (:class:`~pvae.HierarchicalVAE`)
or top-down (:class:`~pvae.LadderVAE`, Sønderby et al. 2016), and the ladder's merging, paths and
per-layer KL control. The keys are optional fields of :class:`pvae.config.ModelConfig`; this
module validates them, fills in their defaults for :func:`pvae.config.canonical`, and builds the
ladder.

==================== ============== =====================================================
key                  default        meaning
==================== ============== =====================================================
``inference``        ``bottom_up``  ``bottom_up`` or ``top_down`` (a :class:`LadderVAE`)
``merge``            ``precision``  top-down: ``precision`` (Ladder VAE) or ``residual`` (NVAE)
``norm``             none           top-down: ``batch`` or ``weight`` norm in the MLP paths
``skip``             ``false``      residual connections in the MLPs (either direction)
``min_scale``        ``1e-4``       top-down: σ_min, the floor of every posterior and
                                    conditional prior scale
``generative_skip``  ``false``      top-down: a deterministic top-down path in the generative
                                    model (x reads every layer; MLP paths only)
``layer_warmup``     none           top-down: warm-up steps of each layer's KL weight
``layer_free_bits``  none           top-down: free bits per layer, nats per unit
``free_bits_groups`` ``1``          top-down: groups of units the free bits hold separately
``paths``            ``mlp``        top-down: ``{name = "conv", ...}``: :data:`pvae.nets.PATHS`
                                    and its keyword arguments (``mlp``: the MLP paths the
                                    keys ``hidden``, ``activation``, ``norm``, ``skip`` set)
==================== ============== =====================================================

A number given for a per-layer key applies to every layer; a list gives one entry per layer,
bottom (z_1) first.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from pvae._checks import lookup, one_of, positive_float, positive_int
from pvae.family import nonneg_float, nonneg_int, per_layer
from pvae.ladder import MERGES, NORMS, LadderVAE
from pvae.nets import PATHS

__all__ = ["INFERENCE", "KEYS", "build", "canonical", "validate"]

INFERENCE = ("bottom_up", "top_down")
"""The values of ``model.inference``."""
KEYS = (
    "merge",
    "norm",
    "generative_skip",
    "min_scale",
    "layer_warmup",
    "layer_free_bits",
    "free_bits_groups",
    "paths",
)
"""The ``[model]`` keys that apply to ``inference = "top_down"`` only."""
_KL_KEYS = ("layer_warmup", "layer_free_bits", "free_bits_groups")


def top_down(m: Any) -> bool:
    """Whether ``[model]`` (a :class:`~pvae.config.ModelConfig`) asks for top-down inference."""
    return getattr(m, "inference", None) == "top_down"


def validate(m: Any, objective: Any, hierarchical: bool) -> None:
    """Check the inference keys of ``[model]``; ``hierarchical``: whether it describes two or more
    stochastic layers (the keys mean nothing for one)."""
    if m.inference is not None:
        one_of("model.inference", m.inference, INFERENCE)
        if not hierarchical:
            raise ValueError(
                "model.inference applies to a hierarchical model (model.latent_dim a list of two "
                "or more layer widths)"
            )
    set_keys = [k for k in KEYS if getattr(m, k) is not None]
    if set_keys and not top_down(m):
        raise ValueError(
            f"{', '.join(f'model.{k}' for k in set_keys)} applies to a top-down model: set "
            "model.inference = 'top_down' (and model.latent_dim a list of two or more widths)"
        )
    if m.skip is not None and not isinstance(m.skip, bool):
        raise ValueError(f"model.skip must be true or false, got {m.skip!r}")
    if m.skip is not None and not hierarchical:
        raise ValueError(
            "model.skip applies to a hierarchical model; for one layer set skip in "
            "[model.encoder] and [model.decoder]"
        )
    if not top_down(m):
        return
    L = len(m.layers)
    if m.merge is not None:
        one_of("model.merge", m.merge, MERGES)
    if m.norm is not None:
        one_of("model.norm", m.norm, NORMS)
    if m.generative_skip is not None and not isinstance(m.generative_skip, bool):
        raise ValueError(f"model.generative_skip must be true or false, got {m.generative_skip!r}")
    if m.min_scale is not None:
        positive_float("model.min_scale", m.min_scale)
    if m.generative_skip and _paths_table(m.paths)[0] != "mlp":
        raise ValueError(
            "model.generative_skip applies to the MLP paths; model.paths names "
            f"{_paths_table(m.paths)[0]!r}"
        )
    per_layer("model.layer_warmup", m.layer_warmup, L, nonneg_int)
    per_layer("model.layer_free_bits", m.layer_free_bits, L, nonneg_float)
    groups = per_layer("model.free_bits_groups", m.free_bits_groups, L, positive_int) or ()
    for i, (g, d) in enumerate(zip(groups, m.layers, strict=False)):
        if g > d:
            raise ValueError(f"model.free_bits_groups[{i}] = {g} exceeds layer {i + 1}'s {d} units")
    _paths_table(m.paths)
    kl = [k for k in _KL_KEYS[:2] if getattr(m, k) is not None]
    if kl and objective == "iwae":
        raise ValueError(
            f"{' and '.join(f'model.{k}' for k in kl)} weight the ELBO's KL terms, which the "
            "IWAE bound does not have; use train.objective = 'elbo' (or 'meanfield_elbo')"
        )


def _paths_table(table: Any) -> tuple[str, dict[str, Any]]:
    """``[model.paths]`` as (name, keyword arguments); ``mlp`` (the default) takes none."""
    if table is None:
        return "mlp", {}
    if not isinstance(table, dict) or "name" not in table:
        raise ValueError(f"model.paths must be a table with a name, got {table!r}")
    kw = {k: v for k, v in table.items() if k != "name"}
    name = table["name"]
    if name == "mlp":
        if kw:
            raise ValueError(
                f"model.paths 'mlp' takes no keys ({', '.join(kw)}): the MLP paths are set by "
                "model.hidden, model.activation, model.norm and model.skip"
            )
        return name, kw
    lookup("model.paths.name", {"mlp": None, **PATHS}, name)
    return name, kw


def build_paths(m: Any, likelihood: Any, shape: Any) -> nn.Module | None:
    """The deterministic paths ``[model.paths]`` names (``None``: the ladder's MLP paths)."""
    name, kw = _paths_table(m.paths)
    if name == "mlp":
        return None
    return PATHS[name](tuple(shape), likelihood.param_shape(tuple(shape)), m.layers, **kw)


def _listed(value: Any, n: int, default: Any) -> list:
    """A per-layer key as one entry per layer (its default where unset)."""
    if value is None:
        value = default
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return [value] * n


# LadderVAE's own σ_min, so the config's default and the model's cannot drift apart.
_MIN_SCALE: float = inspect.signature(LadderVAE).parameters["min_scale"].default


def _min_scale(m: Any) -> float:
    """``[model] min_scale`` as a float, LadderVAE's default where unset."""
    return _MIN_SCALE if m.min_scale is None else float(m.min_scale)


def canonical(m: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inference keys of a hierarchical ``[model]`` filled in, and their defaults: only
    ``inference`` and ``skip`` for a bottom-up model; every key for a top-down one (per-layer
    keys as lists; no warm-up is 0 steps; unset free bits stay ``None``, the global
    ``train.free_bits``)."""
    full = {"inference": m.inference or "bottom_up", "skip": bool(m.skip)}
    default = {"inference": "bottom_up", "skip": False}
    if top_down(m):
        L = len(m.layers)
        default.update(
            merge="precision",
            norm=None,
            generative_skip=False,
            min_scale=_MIN_SCALE,
            layer_warmup=[0] * L,
            layer_free_bits=None,
            free_bits_groups=[1] * L,
        )
        full.update(
            merge=m.merge or "precision",
            norm=m.norm,
            generative_skip=bool(m.generative_skip),
            min_scale=_min_scale(m),
            layer_warmup=_listed(m.layer_warmup, L, 0),
            layer_free_bits=None
            if m.layer_free_bits is None
            else [float(v) for v in _listed(m.layer_free_bits, L, 0.0)],
            free_bits_groups=_listed(m.free_bits_groups, L, 1),
        )
        default["paths"] = {"name": "mlp"}
        name, kw = _paths_table(m.paths)
        full["paths"] = {"name": name, **kw}
    return full, default


def build(
    m: Any,
    prior: nn.Module,
    likelihood: nn.Module,
    activation: str,
    shape: Any,
    paths: nn.Module | None = None,
) -> LadderVAE:
    """The :class:`~pvae.LadderVAE` a top-down ``[model]`` describes, for data of ``shape``
    (with ``paths`` from :func:`build_paths`, or its MLP paths)."""
    return LadderVAE(
        None if paths is not None else m.layers,
        paths=paths,
        prior=prior,
        likelihood=likelihood,
        merge=m.merge or "precision",
        hidden=m.hidden,
        activation=activation,
        norm=m.norm,
        skip=bool(m.skip),
        generative_skip=bool(m.generative_skip),
        min_scale=_min_scale(m),
        layer_warmup=m.layer_warmup,
        layer_free_bits=m.layer_free_bits,
        free_bits_groups=m.free_bits_groups,
        data_shape=shape,
    )
