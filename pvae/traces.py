r"""Per-datapoint log importance weights, read from Pyro traces: the definition every pvae
estimator is built on.

For a model/guide pair whose sample sites all lie inside the ``"data"`` plate, K particles are
drawn in one vectorized pass (an outer ``pyro.plate`` of size K), the guide is traced, the model
is replayed against the guide's draws, and each datapoint n gets

.. math::

    \log w_{k,n} = \sum_{s\,\in\,\text{model sites}} \log p\big(v_s^{(k)} \mid \mathrm{pa}_s\big)
                 - \sum_{s\,\in\,\text{guide sites}} \log q\big(v_s^{(k)} \mid \cdot\big),

every site's log density summed over all of its dimensions except the particle and the data
plate. Observed sites enter through the model alone; every latent site enters twice. Because
the sum runs over *whatever sites the traces hold*, a second latent (a per-datapoint scale, a
second stochastic layer) can never be left out of a weight — the bug of hand-written estimators.

What is supported:

* any number of latent sites, any event shapes, sites that depend on each other, nested plates
  inside the data plate;
* continuous or discrete guide sites for log p(x) (importance sampling from the guide is valid
  for any proposal whose support covers the prior's); training objectives and the STL/DReG
  estimators need reparameterized guide sites and say so, naming the site;
* masks (``poutine.mask``) are applied; scales (``poutine.scale``, the plate's N / B) are not:
  weights are per datapoint, unscaled.

Not supported, with an error naming the site: a sample site outside the data plate (a global
latent), a latent of the model that the guide does not sample, a guide site the model does not
have, and enumerated sites (:mod:`pvae.enumeration` sums those out for the estimators).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pvae.program import Program

__all__ = [
    "PARTICLES",
    "SiteTerms",
    "TraceWeights",
    "check_sites",
    "checked_particle_traces",
    "closed_form_blockers",
    "data_frame",
    "inspect_pair",
    "log_weights",
    "particle_traces",
    "per_datapoint",
    "site_terms",
]

PARTICLES = "_pvae_particles"


def data_frame(site: dict[str, Any], data_plate: str) -> Any:
    """The frame of ``site``'s plate named ``data_plate`` (its dim and size), or ``None``."""
    for f in site["cond_indep_stack"]:
        if f.name == data_plate:
            return f
    return None


def inspect_pair(program: Program, args: tuple, kwargs: Mapping[str, Any]) -> tuple[int, Any, Any]:
    """Run the pair once without particles: the plates nested at most (Pyro's
    ``max_plate_nesting``), and the model and guide traces. The random state is left as it was,
    so checking a pair does not shift the draws of what follows."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    devices = [first.device] if first is not None and first.device.type == "cuda" else []
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=devices):
        guide_trace = poutine.trace(program.guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(program.model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    guide_trace, model_trace = (
        prune_subsample_sites(guide_trace),
        prune_subsample_sites(model_trace),
    )
    dims = [
        -f.dim
        for tr in (guide_trace, model_trace)
        for s in tr.nodes.values()
        if s["type"] == "sample"
        for f in s["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=1), model_trace, guide_trace


def checked_particle_traces(
    program: Program, args: tuple, kwargs: Mapping[str, Any], k: int, nesting: int, data_plate: str
) -> tuple[Any, Any]:
    """:func:`particle_traces` with :func:`check_sites`. A pair whose code breaks under the
    particle plate (a global latent that broadcasts badly, say) gets the site-naming error of
    a plain run when there is one, else the original error."""
    try:
        model_trace, guide_trace = particle_traces(program, args, kwargs, k, nesting)
    except Exception:
        _, model_trace, guide_trace = inspect_pair(program, args, kwargs)
        check_sites(model_trace, guide_trace, data_plate)
        raise
    check_sites(model_trace, guide_trace, data_plate)
    return model_trace, guide_trace


def particle_traces(
    program: Program, args: tuple, kwargs: Mapping[str, Any], k: int, nesting: int
) -> tuple[Any, Any]:
    """Guide and replayed model traces with ``k`` vectorized particles (outermost plate)."""
    particles = pyro.plate(PARTICLES, k, dim=-nesting - 1)
    guide_trace = poutine.trace(particles(program.guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(
        poutine.replay(particles(program.model), trace=guide_trace)
    ).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def per_datapoint(lp: Tensor, n_dims: int, data_dim: int, k: int, b: int, name: str) -> Tensor:
    """Sum a site's log density over every dimension but particles (first) and data: ``(k, b)``
    for a site inside the data plate (``data_dim`` its dim, ``b`` its size), named in errors."""
    if lp.dim() > n_dims:
        raise ValueError(
            f"site {name!r} has a log density of shape {tuple(lp.shape)}, more batch dimensions "
            f"than the {n_dims - 1} plate(s) found: declare every batch dimension with a plate "
            "or move it into the event shape with .to_event()"
        )
    lp = lp.reshape((1,) * (n_dims - lp.dim()) + tuple(lp.shape))
    keep = {0, n_dims + data_dim}
    others = [d for d in range(n_dims) if d not in keep]
    if others:
        lp = lp.sum(others)
    return lp.reshape(lp.shape[0], lp.shape[-1]).expand(k, b)


def _site_log_prob(site: dict[str, Any]) -> Tensor:
    """The site's log density with its mask applied and its scale not."""
    return scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])


def check_sites(
    model_trace: Any, guide_trace: Any, data_plate: str, enumerated: bool = False
) -> None:
    """Raise ``ValueError`` naming the first site the weights cannot handle; ``enumerated``:
    the caller sums enumerated sites out (:mod:`pvae.enumeration`), so they are allowed."""
    for role, tr in (("model", model_trace), ("guide", guide_trace)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            enum = bool(site["infer"].get("enumerate"))
            if enum and not enumerated:
                raise ValueError(
                    f"{role} site {name!r} is enumerated; this computation samples every site "
                    "(train such a pair with objective 'enum_elbo'; pvae.log_px, bounds and "
                    "evaluate_elbo sum enumerated sites out)"
                )
            if data_frame(site, data_plate) is None:
                what = "observed site" if site["is_observed"] else "latent site"
                raise ValueError(
                    f"{role} {what} {name!r} is outside the {data_plate!r} plate (a global "
                    "latent?): per-datapoint importance weights need every sample site inside "
                    f"pyro.plate({data_plate!r}, ...)"
                )
            if role == "guide" and site["is_observed"]:
                raise ValueError(f"guide site {name!r} is observed; a guide only samples latents")
            if role == "guide" and name not in model_trace.nodes:
                raise ValueError(
                    f"guide site {name!r} has no counterpart in the model (auxiliary guide "
                    "variables are not supported)"
                )
            if (
                role == "model"
                and not (site["is_observed"] or enum)
                and name not in guide_trace.nodes
            ):
                raise ValueError(
                    f"model latent site {name!r} is not sampled by the guide: every latent needs "
                    "a proposal q in the guide"
                )


@dataclass
class SiteTerms:
    """Per-datapoint log densities of every sample site of a traced pair.

    Attributes:
        model: Site name to ``(K, B)`` log p of the model's site (latent or observed).
        guide: Site name to ``(K, B)`` log q of the guide's site.
        observed: Names of the model's observed sites.
        scales: The distinct scales of the sites (the data plate's N / B, β…).
        reparam: Whether every guide site was drawn by reparameterization.
    """

    model: dict[str, Tensor]
    guide: dict[str, Tensor]
    observed: list[str]
    scales: set[float]
    reparam: bool

    @property
    def lw(self) -> Tensor:
        """``(K, B)`` log weights: Σ log p over the model's sites − Σ log q over the guide's."""
        return sum(self.model.values()) - sum(self.guide.values())

    def scale(self, objective: str) -> float:
        """The one scale of every site (the data plate's N / B), which a multi-sample bound
        applies to its log-mean-exp; ``objective`` names the bound in the error otherwise."""
        if len(self.scales) != 1:
            raise ValueError(
                f"{objective} needs one scale for all sites (the data plate's N / B), got "
                f"{sorted(self.scales)}; poutine.scale on single sites does not fit the "
                f"{objective} bound"
            )
        return next(iter(self.scales))


def site_terms(
    model_trace: Any,
    guide_trace: Any,
    k: int,
    nesting: int,
    data_plate: str = "data",
    log_q: Mapping[str, Tensor] | None = None,
) -> SiteTerms:
    """Reduce each site of :func:`particle_traces` to ``(K, B)`` (see the module docstring).

    Args:
        model_trace: The replayed model trace.
        guide_trace: The guide trace.
        k: Particles.
        nesting: Plates nested at most in the pair.
        data_plate: Name of the plate over datapoints.
        log_q: Replacement log densities of the guide's sites (STL/DReG hold the guide's
            parameters fixed).
    """
    n_dims = nesting + 1
    terms = SiteTerms({}, {}, [], set(), True)
    for role, tr in (("model", model_trace), ("guide", guide_trace)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            frame = data_frame(site, data_plate)
            terms.scales.add(float(site["scale"]))
            if role == "guide":
                terms.reparam = terms.reparam and bool(site["fn"].has_rsample)
                lp = log_q[name] if log_q is not None else _site_log_prob(site)
                terms.guide[name] = per_datapoint(lp, n_dims, frame.dim, k, frame.size, name)
            else:
                lp = _site_log_prob(site)
                terms.model[name] = per_datapoint(lp, n_dims, frame.dim, k, frame.size, name)
                if site["is_observed"]:
                    terms.observed.append(name)
    return terms


def closed_form_blockers(model_trace: Any, guide_trace: Any) -> dict[str, list[str]]:
    """For each latent site, the latents drawn *after* it in the guide that condition it in the
    model (come before it in the model). Where the list is non-empty, a closed-form KL at the
    site, taken at the drawn values of those latents, is biased: the ELBO needs
    E_q[log q(v | ·) − log p(v | pa)] with pa drawn *given* v, which is what the Monte Carlo
    term estimates (z₁ of a bottom-up hierarchical guide, whose z₂ ~ q(z₂ | z₁)). Pyro's
    ``TraceMeanField_ELBO`` assumes the list is empty everywhere."""
    guide_order = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"]
    model_order = [
        n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
    ]
    out = {}
    for name in guide_order:
        after = guide_order[guide_order.index(name) + 1 :]
        before = model_order[: model_order.index(name)] if name in model_order else []
        out[name] = [n for n in after if n in before]
    return out


def log_weights(
    program: Program,
    args: tuple,
    kwargs: Mapping[str, Any],
    k: int,
    nesting: int,
    *,
    data_plate: str = "data",
    check: bool = True,
) -> tuple[SiteTerms, Any, Any]:
    """Trace the pair with ``k`` particles on one minibatch and reduce its sites.

    Args:
        program: The model/guide pair.
        args: Positional arguments of model and guide (the minibatch first).
        kwargs: Keyword arguments of both.
        k: Particles per datapoint.
        nesting: Plates nested at most in the pair (:func:`inspect_pair`).
        data_plate: Name of the plate over datapoints.
        check: Validate the sites (:func:`check_sites`).

    Returns:
        The :class:`SiteTerms` (``.lw`` is the ``(K, B)`` log weights), the model trace and the
        guide trace.
    """
    if check:
        model_trace, guide_trace = checked_particle_traces(
            program, args, kwargs, k, nesting, data_plate
        )
    else:
        model_trace, guide_trace = particle_traces(program, args, kwargs, k, nesting)
    terms = site_terms(model_trace, guide_trace, k, nesting, data_plate)
    return terms, model_trace, guide_trace


class TraceWeights:
    """Log weights of a pair by :func:`log_weights`, for the chunked estimators.

    Args:
        program: The pair.
        nesting: Plates nested at most (guessed from one run when ``None``).
    """

    def __init__(self, program: Program, nesting: int) -> None:
        self.program = program
        self.nesting = nesting

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any]]:
        return xb, kwargs

    def draw(self, state: tuple[Tensor, Mapping[str, Any]], c: int) -> Tensor:
        xb, kw = state
        return log_weights(self.program, (xb,), kw, c, self.nesting, check=False)[0].lw
