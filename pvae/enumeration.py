r"""Enumerated discrete sites in Pyro traces: the Rao-Blackwellized importance weights and the
ELBO with the discrete sites summed out exactly.

A site marked for enumeration (``infer={"enumerate": "parallel"}``, e.g. by
:func:`pyro.infer.config_enumerate`) is not sampled: under :func:`pyro.poutine.enum` it takes
every value of its support at once, along a tensor dimension of its own to the left of the
plates. pvae traces the guide that way inside the particle plate (enumeration dimensions start
at ``-nesting - 2``), replays the model against it (the model's own enumerated sites take the
dimensions after the guide's, as in :class:`pyro.infer.TraceEnum_ELBO`), and reduces every site
to a ``(E_1, …, E_m, K, B)`` tensor: enumerated configurations, particles, datapoints.

With y the enumerated sites and z the sampled ones, the importance weight of particle i is

.. math::

    w_i = \sum_{y} \frac{p(x, y, z_i^{(y)})}{q(z_i^{(y)} \mid x, y)}, \qquad
    z_i^{(y)} \sim q(z \mid x, y),

an unbiased estimate of p(x): with a guide q(y | x) q(z | x, y),
:math:`\sum_y q(y\mid x)\,\frac{p(x,y,z)}{q(y\mid x)\,q(z\mid x,y)}` is the expectation over y
taken exactly, so q(y | x) cancels (Rao-Blackwellization; lower variance than sampling y).
A site enumerated only in the model (a mixture whose guide has no y) enters the same sum, with
z drawn once for all y. The ELBO of such a pair, the objective of ``TraceEnum_ELBO``, is

.. math::

    \mathcal L(x) = \mathbb E_{z}\Big[\sum_{y_g} q(y_g \mid x)\big(\log \textstyle\sum_{y_m}
        p(x, y_g, y_m, z) - \log q(y_g \mid x) - \log q(z \mid x, y_g)\big)\Big]

(y_g enumerated in the guide, y_m in the model only), equal to log p(x) for the exact guide.

Scope, each refused with a message naming the site: parallel enumeration only (not
``"sequential"``); every enumerated site inside the ``"data"`` plate and in no other plate
(summing out per element of a nested plate would need Pyro's plate-aware contraction);
distributions with ``enumerate_support``; at most :data:`MAX_CONFIGURATIONS` joint
configurations per datapoint (the tensors grow with their product; the sum is taken over the
full joint table, not by variable elimination). Sampled sites may be in nested plates and
depend on the enumerated ones in any way.
"""

from __future__ import annotations

import math
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
from pvae.traces import PARTICLES, data_frame

__all__ = [
    "MAX_CONFIGURATIONS",
    "EnumTerms",
    "EnumWeights",
    "check_enumerable",
    "enum_particle_traces",
    "enum_terms",
    "enumerated",
    "refuse_enumerated",
]

MAX_CONFIGURATIONS = 4096
"""The most joint configurations of the enumerated sites per datapoint."""


def enumerated(model_trace: Any, guide_trace: Any) -> dict[str, str]:
    """The enumerated sites of a pair, each with where it is enumerated: ``"guide"`` (the guide
    enumerates it and the model scores it) or ``"model"`` (the model alone has it)."""
    out = {}
    for role, tr in (("guide", guide_trace), ("model", model_trace)):
        for name, site in tr.nodes.items():
            if site["type"] == "sample" and site["infer"].get("enumerate") and name not in out:
                out[name] = role
    return out


def refuse_enumerated(sites: Mapping[str, str], what: str, why: str) -> None:
    """Raise ``ValueError`` naming the first of the enumerated ``sites`` (:func:`enumerated`),
    for an estimator (``what``) that cannot sum it out (``why``)."""
    if sites:
        name, role = next(iter(sites.items()))
        raise ValueError(
            f"{what}: the {role}'s site {name!r} is enumerated (infer={{'enumerate': ...}}); "
            f"{why}. pvae.log_px, pvae.bounds and pvae.evaluate_elbo sum enumerated sites out"
        )


def check_enumerable(
    model_trace: Any, guide_trace: Any, data_plate: str = "data"
) -> dict[str, int]:
    """Check the enumerated sites against the scope (module docstring); their support sizes.

    Raises:
        ValueError: naming the site that is sequential, in a plate nested in the data plate,
            without an enumerable support, or the sites whose joint support is too large.
    """
    sizes: dict[str, int] = {}
    for name, role in enumerated(model_trace, guide_trace).items():
        site = (guide_trace if role == "guide" else model_trace).nodes[name]
        how = site["infer"]["enumerate"]
        if how != "parallel":
            raise ValueError(
                f"{role} site {name!r} is enumerated {how!r}: pvae's estimators sum out "
                "parallel enumeration only (infer={'enumerate': 'parallel'}, config_enumerate's "
                "default)"
            )
        inner = [
            f.name
            for f in site["cond_indep_stack"]
            if f.vectorized and f.name not in (data_plate, PARTICLES)
        ]
        if inner:
            raise ValueError(
                f"{role} site {name!r} is enumerated inside plate {inner[0]!r}: pvae sums out "
                f"enumerated sites that lie in the {data_plate!r} plate and in no other plate"
            )
        if data_frame(site, data_plate) is None:
            continue  # check_sites names it: outside the data plate
        if not site["fn"].has_enumerate_support:
            raise ValueError(
                f"{role} site {name!r} is enumerated, but its {type(site['fn']).__name__} has "
                "no enumerable support"
            )
        sizes[name] = int(site["fn"].enumerate_support(expand=False).shape[0])
    total = math.prod(sizes.values())
    if total > MAX_CONFIGURATIONS:
        raise ValueError(
            f"the enumerated sites {sizes} have {total} joint configurations per datapoint, more "
            f"than {MAX_CONFIGURATIONS}: sample some of them instead (drop their "
            "infer={'enumerate': ...})"
        )
    return sizes


def enum_particle_traces(
    program: Program, args: tuple, kwargs: Mapping[str, Any], k: int, nesting: int
) -> tuple[Any, Any]:
    """Model and guide traces with ``k`` vectorized particles (outermost plate, dim
    ``-nesting - 1``) and every enumerated site enumerated in parallel to its left."""
    particles = pyro.plate(PARTICLES, k, dim=-nesting - 1)
    guide = poutine.enum(particles(program.guide), first_available_dim=-nesting - 2)
    model = poutine.enum(particles(program.model))  # continues after the guide's dimensions
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


@dataclass
class EnumTerms:
    """Every site of an enumerated pair reduced to ``(E_1, …, E_m, K, B)`` (module docstring).

    Attributes:
        log_p: Σ log p over the model's sites, observed and latent.
        log_q: Σ log q over the guide's sampled (not enumerated) sites.
        log_q_enum: Σ log q over the guide's enumerated sites.
        recon: Σ log p over the model's observed sites.
        guide_dims: Positions (among the first m) of the guide's enumerated sites.
        model_dims: Positions of the sites enumerated in the model only.
    """

    log_p: Tensor
    log_q: Tensor
    log_q_enum: Tensor
    recon: Tensor
    guide_dims: tuple[int, ...]
    model_dims: tuple[int, ...]

    @property
    def enum_dims(self) -> tuple[int, ...]:
        return tuple(range(self.log_p.dim() - 2))

    def log_weights(self) -> Tensor:
        """``(K, B)`` Rao-Blackwellized log weights: log Σ_y p(x, y, z) / q(z | x, y)."""
        t = self.log_p - self.log_q
        return t.logsumexp(self.enum_dims) if self.enum_dims else t

    def elbo(self) -> tuple[Tensor, Tensor]:
        """``(K, B)`` ELBO per particle, with y summed out (module docstring), and its
        reconstruction term E[log p(x | ·)] (model-only sites under their posterior given the
        rest)."""
        t = self.log_p - self.log_q
        recon = self.recon.expand_as(t)
        if self.model_dims:
            marginal = t.logsumexp(self.model_dims, keepdim=True)
            posterior = (t - marginal).exp()
            recon = (posterior * recon).sum(self.model_dims, keepdim=True)
            t = marginal
        q = self.log_q_enum.exp()
        per = torch.where(q > 0, q * (t - self.log_q_enum), torch.zeros_like(t))
        rec = torch.where(q > 0, q * recon, torch.zeros_like(recon))
        dims = self.enum_dims
        return (per.sum(dims), rec.sum(dims)) if dims else (per, rec)


def _reduce(lp: Tensor, total: int, data_pos: int, keep: int, name: str) -> Tensor:
    """Sum a site's log density over the plates other than the particle and data plates:
    the first ``keep`` dimensions (enumeration and particles) and ``data_pos`` are kept."""
    if lp.dim() > total:
        raise ValueError(
            f"site {name!r} has a log density of shape {tuple(lp.shape)}, more batch dimensions "
            f"than the plates and enumerated sites found: declare every batch dimension with a "
            "plate or move it into the event shape with .to_event()"
        )
    lp = lp.reshape((1,) * (total - lp.dim()) + tuple(lp.shape))
    others = [d for d in range(keep, total) if d != data_pos]
    return lp.sum(others) if others else lp


def _enum_dims(model_trace: Any, guide_trace: Any, nesting: int) -> tuple[int, dict[int, int]]:
    """How many enumeration dimensions there are, and each one's size by its position."""
    found: dict[int, int] = {}
    for tr in (guide_trace, model_trace):
        for site in tr.nodes.values():
            dim = site["type"] == "sample" and site["infer"].get("_enumerate_dim")
            if isinstance(dim, int) and not isinstance(dim, bool):
                value = site["value"]
                batch = value.shape[: value.dim() - site["fn"].event_dim]
                found[dim] = batch[len(batch) + dim]
    m = max((-d - nesting - 1 for d in found), default=0)
    return m, {m + nesting + 1 + d: size for d, size in found.items()}


def enum_terms(
    model_trace: Any, guide_trace: Any, k: int, nesting: int, data_plate: str = "data"
) -> EnumTerms:
    """Reduce every site of :func:`enum_particle_traces` to ``(E_1, …, E_m, K, B)``."""
    m, sizes = _enum_dims(model_trace, guide_trace, nesting)
    total = m + nesting + 1
    shape = [sizes.get(i, 1) for i in range(m)]
    sums: dict[str, Tensor | float] = {"p": 0.0, "q": 0.0, "q_enum": 0.0, "recon": 0.0}
    b = 1
    roles = enumerated(model_trace, guide_trace)
    for role, tr in (("model", model_trace), ("guide", guide_trace)):
        for name, site in tr.nodes.items():
            if site["type"] != "sample":
                continue
            frame = data_frame(site, data_plate)
            b = frame.size
            lp = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
            lp = _reduce(lp, total, total + frame.dim, m + 1, name)
            if role == "model":
                sums["p"] = sums["p"] + lp
                if site["is_observed"]:
                    sums["recon"] = sums["recon"] + lp
            else:
                key = "q_enum" if roles.get(name) == "guide" else "q"
                sums[key] = sums[key] + lp
    full = torch.as_tensor(sums["p"]).new_zeros((*shape, k, b))
    dims = {
        role: tuple(sorted(_positions(tr, roles, role, m, nesting)))
        for role, tr in (("guide", guide_trace), ("model", model_trace))
    }
    return EnumTerms(
        *(full + sums[key] for key in ("p", "q", "q_enum", "recon")),
        guide_dims=dims["guide"],
        model_dims=dims["model"],
    )


def _positions(tr: Any, roles: Mapping[str, str], role: str, m: int, nesting: int) -> set[int]:
    """Positions of the enumeration dimensions of the sites enumerated in ``role``."""
    return {
        m + nesting + 1 + site["infer"]["_enumerate_dim"]
        for name, site in tr.nodes.items()
        if roles.get(name) == role and "_enumerate_dim" in site["infer"]
    }


class EnumWeights:
    """Rao-Blackwellized log weights (:meth:`EnumTerms.log_weights`) of a pair with enumerated
    sites, for the chunked estimators (the weight source of :func:`pvae.log_px`).

    Args:
        program: The pair.
        nesting: Plates nested at most in the pair.
        sites: The enumerated sites (:func:`enumerated`), for messages.
    """

    def __init__(self, program: Program, nesting: int, sites: Mapping[str, str]) -> None:
        self.program = program
        self.nesting = nesting
        self.sites = dict(sites)

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any]]:
        return xb, kwargs

    def terms(self, xb: Tensor, kwargs: Mapping[str, Any], c: int) -> EnumTerms:
        """The reduced sites of ``c`` particles on the minibatch ``xb``."""
        traces = enum_particle_traces(self.program, (xb,), kwargs, c, self.nesting)
        return enum_terms(*traces, c, self.nesting)

    def draw(self, state: tuple[Tensor, Mapping[str, Any]], c: int) -> Tensor:
        xb, kw = state
        return self.terms(xb, kw, c).log_weights()
