r"""Diagnostics of a trained VAE: active units, KL per dimension, mutual information, the prior
hole, and importance-weight quality. All are ``@torch.no_grad`` and take data on the model's
device.

* **Active units** (Burda et al. 2015): unit u is active when
  :math:`\mathrm{Cov}_x(\mathbb E_{q(z\mid x)}[z_u]) > 10^{-2}`. Few active units is posterior
  collapse: the decoder ignores those latents. Read from the guide's trace, so any model/guide
  pair gets it, per latent site (per stochastic layer of a hierarchical VAE:
  :func:`active_units_by_site`).
* **KL and active units per layer** of a hierarchical VAE (a module with ``layer_kls``:
  :class:`~pvae.HierarchicalVAE`, a top-down ``LadderVAE``): :func:`layer_summary`, what a
  run records each epoch (:func:`layer_columns`) and ``pvae plot --what kl`` draws.
* **Mutual information** under the aggregate posterior
  :math:`q(z) = \frac1N\sum_n q(z\mid x_n)` (Hoffman & Johnson 2016):
  :math:`I(x; z) = \mathbb E_{x}\,\mathbb E_{q(z\mid x)}[\log q(z\mid x) - \log q(z)]`,
  bounded by :math:`\log N`.
* **Prior hole** (the aggregate posterior does not fill the prior, so prior samples land where
  the decoder was never trained): :math:`\mathrm{KL}(q(z)\,\|\,p(z))` and the fraction of prior
  draws whose aggregate-posterior density is below the 1% quantile of that density under q(z)
  itself (≈ 0.01 when q(z) = p(z); larger means holes).
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pvae._checks import positive_int
from pvae.evaluation._weights import resolve
from pvae.evaluation.log_px import LogPxEstimate, unreliable_fraction
from pvae.model import VAE
from pvae.program import param_sites
from pvae.traces import particle_traces

__all__ = [
    "ActiveUnits",
    "LayerSummary",
    "PriorHole",
    "active_units",
    "active_units_by_site",
    "aggregate_log_density",
    "kl_per_dimension",
    "layer_columns",
    "layer_history",
    "layer_summary",
    "mutual_information",
    "prior_hole",
    "report",
    "report_lines",
    "weight_diagnostics",
]


@dataclass
class ActiveUnits:
    """Active-unit statistics: ``variance[u] = Cov_x(E_q[z_u])`` and how many exceed the
    threshold."""

    variance: Tensor
    threshold: float

    @property
    def active(self) -> Tensor:
        return self.variance > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())


def _site_means(model: Any, x: Tensor, batch_size: int, num_samples: int) -> dict[str, Tensor]:
    """E_q[v | x] per datapoint for every latent site v of the guide, flattened to ``(N, units)``.

    A site's mean given its parents is averaged over ``num_samples`` draws of the parents
    (Rao-Blackwellized; exact for a site without latent parents); a distribution without a
    closed-form mean (a flow) is averaged over its draws instead.
    """
    target = resolve(model, x, None, None)
    out: dict[str, list[Tensor]] = {}
    with pyro.validation_enabled(False), param_sites(False):
        for xb in x.split(batch_size):
            _, guide_trace = particle_traces(target.program, (xb,), {}, num_samples, target.nesting)
            for name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                try:
                    m = site["fn"].mean
                except NotImplementedError:
                    m = site["value"]
                if not bool(torch.isfinite(m).all()):
                    continue  # no mean (a categorical, e.g. an enumerated class): no units
                m = m.expand(site["value"].shape)
                event = site["fn"].event_dim
                per = m.reshape(num_samples, -1, *m.shape[m.dim() - event :]).mean(0)
                out.setdefault(name, []).append(per.reshape(per.shape[0], -1))
    return {name: torch.cat(parts) for name, parts in out.items()}


def _one_encoder(model: Any, x: Tensor) -> bool:
    """Whether the pair is a one-site VAE (``encode`` and a guide with one latent site)."""
    if not callable(getattr(model, "encode", None)):
        return False
    with pyro.validation_enabled(False), param_sites(False):
        tr = poutine.trace(model.guide).get_trace(x[:1])
    latent = [
        name
        for name, site in tr.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]
    return len(latent) == 1


@torch.no_grad()
def active_units_by_site(
    model: Any,
    x: Tensor,
    threshold: float = 1e-2,
    batch_size: int = 1024,
    num_samples: int = 64,
) -> dict[str, ActiveUnits]:
    """Active units (Burda et al. 2015) of every latent site of any model/guide pair: for a
    hierarchical VAE, one entry per stochastic layer.

    Args:
        model: A pair (object with ``.model``/``.guide``).
        x: Data ``(N, *data_shape)``, N ≥ 2.
        threshold: Activity threshold on the variance over x of the posterior mean.
        batch_size: Datapoints per guide call.
        num_samples: Draws of a site's latent parents (and of flows) for its posterior mean.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(3), data_shape=(4,))
        >>> au = pvae.diagnostics.active_units_by_site(vae, torch.rand(50, 4).round())
        >>> list(au), au["z"].variance.shape
        (['z'], torch.Size([3]))
    """
    if x.shape[0] < 2:
        raise ValueError(f"x needs at least 2 datapoints for a variance, got {x.shape[0]}")
    means = _site_means(
        model, x, positive_int("batch_size", batch_size), positive_int("num_samples", num_samples)
    )
    return {name: ActiveUnits(mu.var(0), float(threshold)) for name, mu in means.items()}


@torch.no_grad()
def active_units(
    vae: Any, x: Tensor, threshold: float = 1e-2, batch_size: int = 1024, warn: bool = True
) -> ActiveUnits:
    """Count active latent units (Burda et al. 2015) and warn on posterior collapse.

    For a pair with one latent site (a :class:`~pvae.VAE`); with several sites use
    :func:`active_units_by_site`.

    Args:
        vae: A VAE, or any pair with a single latent site.
        x: Data ``(N, *data_shape)``.
        threshold: Activity threshold on the variance over x of the posterior mean.
        batch_size: Datapoints per encoder call.
        warn: Emit a ``UserWarning`` when fewer than half the units are active.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(3), data_shape=(4,))
        >>> pvae.diagnostics.active_units(vae, torch.rand(50, 4).round(), warn=False).variance.shape
        torch.Size([3])
    """
    sites = active_units_by_site(vae, x, threshold, batch_size)
    if len(sites) != 1:
        raise ValueError(
            f"the pair has {len(sites)} latent sites ({', '.join(sites)}); use "
            "pvae.diagnostics.active_units_by_site for one count per site"
        )
    (res,) = sites.values()
    units = res.variance.numel()
    if warn and res.count < max(1, units // 2):
        warnings.warn(
            f"posterior collapse: only {res.count} of {units} latent units are active "
            f"(Cov_x E_q[z_u] > {threshold}); consider KL warm-up (train.warmup_steps), free bits "
            "(train.free_bits) or a weaker decoder",
            UserWarning,
            stacklevel=2,
        )
    return res


@dataclass
class LayerSummary:
    r"""One stochastic layer's KL term and activity.

    Attributes:
        site: The layer's latent site (``"z1"`` bottom … ``"zL"`` top).
        kl: Minibatch-mean KL term of the layer, nats (one draw of the inference chain; the
            layers' terms sum to the KL term of the ELBO).
        units: The same per unit, ``(d,)`` nats summing to ``kl``, or ``None`` where the layer's
            densities do not split over units.
        active: Active units (Burda et al. 2015: :math:`\mathrm{Cov}_x\,\mathbb E_q[z_u] >`
            ``threshold``), ``None`` for fewer than 2 datapoints.
        dim: The layer's number of units.
    """

    site: str
    kl: float
    units: Tensor | None
    active: int | None
    dim: int


def _unit_terms(module: Any, x: Tensor) -> dict[str, Tensor]:
    r"""Per unit of each latent site, the minibatch mean of :math:`\log q(z_u \mid \cdot) -
    \log p(z_u \mid \cdot)` at one draw of the guide (the model replayed on it), for the sites
    whose q and p are independent over units (``Independent`` over an elementwise base)."""
    with pyro.validation_enabled(False), param_sites(False), poutine.block():
        guide_trace = poutine.trace(module.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(x)
    out = {}
    for name, g in guide_trace.nodes.items():
        m = model_trace.nodes.get(name)
        if g["type"] != "sample" or m is None or m.get("is_observed", False):
            continue
        q, p, v = g["fn"], m["fn"], g["value"]
        bases = [getattr(d, "base_dist", None) for d in (q, p)]
        if any(
            b is None or getattr(d, "reinterpreted_batch_ndims", None) != 1
            for b, d in zip(bases, (q, p), strict=True)
        ):
            continue
        terms = bases[0].log_prob(v) - bases[1].log_prob(v)  # (B, d)
        out[name] = terms.reshape(-1, terms.shape[-1]).mean(0)
    return out


@torch.no_grad()
def layer_summary(
    module: Any, x: Tensor, threshold: float = 1e-2, num_samples: int = 8
) -> list[LayerSummary] | None:
    """KL term and active units of each stochastic layer, bottom to top, for a module with
    ``layer_kls(x)`` (a hierarchical VAE); ``None`` for any other module.

    The per-unit KL comes from the module's ``unit_kls(x)`` where it has one (a closed form at
    the drawn layer above), else from one draw of the guide with the model replayed on it (the
    same estimator as ``layer_kls``); each layer's ``kl`` is then the sum of its units, so the
    two agree. Active units are :func:`active_units_by_site` with ``num_samples`` draws of each
    layer's latent parents.

    Args:
        module: The model (in eval mode for the plain, unweighted model).
        x: Datapoints ``(N, *data_shape)``; a validation minibatch is enough.
        threshold: Activity threshold on the variance over x of the posterior mean.
        num_samples: Draws of the layers below for each posterior mean.

    Example:
        >>> import torch, pvae
        >>> m = pvae.HierarchicalVAE((3, 2), data_shape=(4,))
        >>> [(s.site, s.dim) for s in layer_summary(m, torch.rand(20, 4).round())]
        [('z1', 3), ('z2', 2)]
    """
    layer_kls = getattr(module, "layer_kls", None)
    if not callable(layer_kls):
        return None
    unit_kls = getattr(module, "unit_kls", None)
    sites = tuple(getattr(module, "sites", ()))
    if callable(unit_kls):
        units: dict[str, Tensor] = dict(zip(sites, unit_kls(x), strict=True))
    else:
        units = _unit_terms(module, x)
    units = {k: u for k, u in units.items() if u.dim() == 1}  # a 0-d: no split over units
    kls = (
        [float(units[s].sum()) for s in sites]
        if all(s in units for s in sites)
        else list(layer_kls(x))
    )
    active = (
        {
            k: a.count
            for k, a in active_units_by_site(module, x, threshold, x.shape[0], num_samples).items()
        }
        if x.shape[0] > 1
        else {}
    )
    dims = [int(d) for d in getattr(module, "latent_dims", [u.numel() for u in units.values()])]
    return [
        LayerSummary(s, kl, units.get(s), active.get(s), d)
        for s, kl, d in zip(sites, kls, dims, strict=True)
    ]


_UNIT = re.compile(r"^val_unit_kl_(?P<site>.+)_(?P<unit>\d+)$")


def layer_columns(summary: Sequence[LayerSummary]) -> dict[str, float]:
    """A :func:`layer_summary` as a run's per-epoch history columns: ``val_kl_<site>`` (nats),
    ``val_active_<site>`` (a count) and ``val_unit_kl_<site>_<u>`` (nats, u 0-based)."""
    out: dict[str, float] = {}
    for s in summary:
        out[f"val_kl_{s.site}"] = s.kl
        if s.active is not None:
            out[f"val_active_{s.site}"] = s.active
    for s in summary:
        if s.units is not None:
            out.update({f"val_unit_kl_{s.site}_{u}": float(v) for u, v in enumerate(s.units)})
    return out


def layer_history(
    history: Sequence[Mapping[str, Any]],
) -> tuple[list[float], dict[str, list[float]], dict[str, list[list[float]]]]:
    """The :func:`layer_columns` of a history read back: the epochs, the KL per layer over
    them and the KL per unit over them (``[epoch][unit]``), sites bottom to top. Epochs without
    the columns (a run resumed from an older version) get NaN."""
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    sites: dict[str, int] = {}
    for r in history:
        for key in r:
            m = _UNIT.match(key)
            if m:
                site = m["site"]
                sites[site] = max(sites.get(site, 0), int(m["unit"]) + 1)
            elif key.startswith("val_kl_") and key != "val_kl_se":
                sites.setdefault(key[len("val_kl_") :], 0)
    order = sorted(sites, key=lambda k: (len(k), k))  # z1, z2, …, z10
    nan = math.nan

    def num(v: Any) -> float:
        return nan if v is None else float(v)

    layers = {s: [num(r.get(f"val_kl_{s}")) for r in history] for s in order}
    units = {
        s: [[num(r.get(f"val_unit_kl_{s}_{u}")) for u in range(sites[s])] for r in history]
        for s in order
        if sites[s]
    }
    return epochs, layers, units


@torch.no_grad()
def kl_per_dimension(vae: VAE, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Mean over x of KL(q(z_d | x) ‖ p(z_d)) for each latent dimension d, in nats.

    Needs a factorized prior and a diagonal guide (the KL splits over dimensions only then).
    Uses the closed form where it exists, else 256 Monte Carlo draws per datapoint.
    """
    prior = vae.prior()
    if not getattr(vae.prior, "factorized", False):
        raise ValueError(
            f"KL per dimension needs a factorized prior, got {type(vae.prior).__name__}"
        )
    total = torch.zeros(vae.latent_dim, device=x.device, dtype=x.dtype)
    for xb in x.split(positive_int("batch_size", batch_size)):
        q = vae.encode(xb)
        qb = getattr(q, "base_dist", None)
        if not isinstance(q, torch.distributions.Independent) or qb is None:
            raise ValueError(f"KL per dimension needs a diagonal guide, got {type(q).__name__}")
        pb = prior.base_dist
        try:
            kl = torch.distributions.kl_divergence(qb, pb)  # (B, D)
        except NotImplementedError:
            z = qb.sample((256,))
            kl = (qb.log_prob(z) - pb.log_prob(z)).mean(0)
        total += kl.sum(0)
    return total / x.shape[0]


def aggregate_log_density(vae: VAE, x: Tensor, z: Tensor, batch_size: int = 512) -> Tensor:
    """:math:`\\log q(z) = \\mathrm{logsumexp}_n \\log q(z\\mid x_n) - \\log N` for z ``(M, D)``."""
    lse = torch.full((z.shape[0],), -math.inf, device=z.device, dtype=torch.float64)
    for xb in x.split(batch_size):
        q = vae.encode(xb)  # batch (b,)
        lp = q.log_prob(z[:, None, :].expand(z.shape[0], xb.shape[0], z.shape[-1]))
        lse = torch.logaddexp(lse, lp.double().logsumexp(1))
    return lse - math.log(x.shape[0])


@torch.no_grad()
def mutual_information(vae: VAE, x: Tensor, num_samples: int = 1) -> tuple[float, float]:
    """I(x; z) under the aggregate posterior, and its Monte Carlo standard error (nats).

    Uses each datapoint's own z draws against the mixture over all N datapoints; cost is
    O(N² · num_samples) encoder densities (run it on a subset for large N).
    """
    num_samples = positive_int("num_samples", num_samples)
    q = vae.encode(x)
    z = q.sample((num_samples,))  # (S, N, D)
    own = q.log_prob(z).double()  # (S, N)
    agg = aggregate_log_density(vae, x, z.reshape(-1, z.shape[-1])).reshape(own.shape)
    terms = (own - agg).reshape(-1)
    return float(terms.mean()), float(terms.std() / math.sqrt(terms.numel()))


@dataclass
class PriorHole:
    """Aggregate posterior vs prior.

    Attributes:
        kl: Monte Carlo estimate of KL(q(z) ‖ p(z)), nats, and its standard error ``kl_se``.
        hole_fraction: Fraction of prior draws with log q(z) below the 1% quantile of log q(z)
            for z ~ q(z) (≈ 0.01 with no hole).
    """

    kl: float
    kl_se: float
    hole_fraction: float


@torch.no_grad()
def prior_hole(vae: VAE, x: Tensor, num_samples: int = 2000) -> PriorHole:
    """Measure how well the aggregate posterior covers the prior (see the module docstring)."""
    num_samples = positive_int("num_samples", num_samples)
    idx = torch.randint(x.shape[0], (num_samples,), device=x.device)
    q = vae.encode(x[idx])
    zq = q.sample()  # draws from the aggregate posterior
    zp = vae.prior().sample((num_samples,))
    log_q_at_q = aggregate_log_density(vae, x, zq)
    log_p_at_q = vae.prior().log_prob(zq).double()
    diff = log_q_at_q - log_p_at_q
    tau = torch.quantile(log_q_at_q.float(), 0.01).double()
    hole = float((aggregate_log_density(vae, x, zp) < tau).double().mean())
    return PriorHole(float(diff.mean()), float(diff.std() / math.sqrt(num_samples)), hole)


def weight_diagnostics(est: LogPxEstimate, worst: int = 10) -> dict[str, object]:
    """Distribution of PSIS k̂ over datapoints and the worst datapoints (highest k̂).

    The quantiles are over the finite k̂; the fractions over every datapoint with a k̂, ``+inf``
    (a failed tail fit) counted above both thresholds, as :func:`pvae.evaluation.log_px.
    unreliable_fraction` counts it (``fraction_above_0.7`` is that fraction: k̂ ≥ 0.7)."""
    kh = est.khat
    finite = kh[torch.isfinite(kh)]
    computed = kh[~torch.isnan(kh)]
    order = torch.argsort(torch.nan_to_num(kh, nan=-math.inf), descending=True)[:worst]
    quant = (
        {f"q{int(p * 100)}": float(torch.quantile(finite, p)) for p in (0.5, 0.9, 0.99)}
        if finite.numel()
        else {}
    )
    return {
        "khat_quantiles": quant,
        "fraction_above_0.5": (
            float((computed > 0.5).double().mean()) if computed.numel() else None
        ),
        "fraction_above_0.7": unreliable_fraction(kh),
        "worst": [
            {
                "index": int(i),
                "khat": float(kh[i]),
                "log_px": float(est.log_px[i]),
                "ess": float(est.ess[i]),
            }
            for i in order
        ],
    }


@torch.no_grad()
def report(model: Any, x: Tensor, subset: int = 1000) -> dict[str, Any]:
    """The diagnostics of ``pvae evaluate``, for any number of datapoints (one included).

    For a pair with one encoder and prior (``encode``, ``prior``, ``latent_dim``: a
    :class:`~pvae.VAE`): active units, KL per dimension where the prior is factorized, and
    I(x; z) and the prior hole on the first ``subset`` datapoints (they cost O(N²)). For any
    other pair (a hierarchical VAE, a user's module): active units per latent site, and for a
    hierarchical VAE (``layer_kls``) the KL term of each layer on the first ``subset``
    datapoints (``kl_by_site``, :func:`layer_summary`). What needs a
    variance over datapoints (active units, I(x; z)) is ``None`` for a single datapoint, with a
    ``"note"`` saying so, instead of an error after the estimates were computed.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(3), data_shape=(4,))
        >>> report(vae, torch.ones(1, 4))["active_units"] is None
        True
    """
    subset = positive_int("subset", subset)
    n = x.shape[0]
    out: dict[str, Any] = {}
    if n < 2:
        out["note"] = "one datapoint: active units and I(x; z) need a variance over datapoints"
    if not _one_encoder(model, x):  # several latent sites: per site only
        means = _site_means(model, x, 1024, 64)
        layers = layer_summary(model, x[:subset], num_samples=1) or []
        kl = {"kl_by_site": {s.site: s.kl for s in layers}} if layers else {}
        return {
            "active_units_by_site": {
                k: ActiveUnits(mu.var(0), 1e-2).count if n > 1 else None for k, mu in means.items()
            },
            "units_by_site": {k: mu.shape[1] for k, mu in means.items()},
            **kl,
            **out,
        }
    out.update(active_units=None, latent_dim=model.latent_dim)
    if n > 1:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["active_units"] = active_units(model, x).count
        if caught:
            out["warning"] = str(caught[0].message)
    with contextlib.suppress(ValueError):  # not factorized, not diagonal: no per-dimension split
        out["kl_per_dim"] = [round(float(v), 4) for v in kl_per_dimension(model, x)]
    xs = x[:subset]
    mi, mi_se = mutual_information(model, xs) if n > 1 else (None, None)
    hole = prior_hole(model, xs)
    out.update(
        mutual_information=mi,
        mutual_information_se=mi_se,
        aggregate_kl=hole.kl,
        aggregate_kl_se=hole.kl_se,
        prior_hole_fraction=hole.hole_fraction,
    )
    return out


def report_lines(dg: dict[str, Any]) -> list[str]:
    """The text lines of a :func:`report` (``n/a`` where a value needs more datapoints)."""

    def num(v: float | None, fmt: str = ".3f") -> str:
        return "n/a" if v is None or not math.isfinite(v) else format(v, fmt)

    if "active_units_by_site" in dg:  # not a one-layer VAE: per latent site only
        units = ", ".join(
            f"{k} {'n/a' if a is None else a} of {dg['units_by_site'][k]}"
            for k, a in dg["active_units_by_site"].items()
        )
        lines = [f"active units  {units}"]
        if dg.get("kl_by_site"):
            kls = ", ".join(f"{k} {num(v, '.2f')}" for k, v in dg["kl_by_site"].items())
            lines.append(f"KL per layer  {kls} nats (one draw, minibatch mean)")
    else:
        au = "n/a" if dg["active_units"] is None else dg["active_units"]
        lines = [
            f"active units  {au:>5} of {dg['latent_dim']}   I(x; z) "
            f"{num(dg['mutual_information'])} ± {num(dg['mutual_information_se'])} nats",
            f"prior hole    KL(q(z) || p(z)) {num(dg['aggregate_kl'])}; "
            f"{num(100 * dg['prior_hole_fraction'], '.1f')}% of prior draws fall in holes "
            "(≈1% = none)",
        ]
    lines += [f"note: {dg['note']}"] if "note" in dg else []
    return lines + ([f"warning: {dg['warning']}"] if "warning" in dg else [])
