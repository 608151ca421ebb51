r"""Diagnostics of a trained VAE: active units, KL per dimension, mutual information, the prior
hole, and importance-weight quality. All are ``@torch.no_grad`` and take data on the model's
device.

* **Active units** (Burda et al. 2015): unit u is active when
  :math:`\mathrm{Cov}_x(\mathbb E_{q(z\mid x)}[z_u]) > 10^{-2}`. Few active units is posterior
  collapse: the decoder ignores those latents. Read from the guide's trace, so any model/guide
  pair gets it, per latent site (per stochastic layer of a hierarchical VAE:
  :func:`active_units_by_site`).
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
import warnings
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from torch import Tensor

from pvae._checks import positive_int
from pvae.evaluation._weights import resolve
from pvae.evaluation.log_px import LogPxEstimate, unreliable_fraction
from pvae.model import VAE
from pvae.program import param_sites
from pvae.traces import particle_traces

__all__ = [
    "ActiveUnits",
    "PriorHole",
    "active_units",
    "active_units_by_site",
    "aggregate_log_density",
    "kl_per_dimension",
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
                m = m.expand(site["value"].shape)
                event = site["fn"].event_dim
                per = m.reshape(num_samples, -1, *m.shape[m.dim() - event :]).mean(0)
                out.setdefault(name, []).append(per.reshape(per.shape[0], -1))
    return {name: torch.cat(parts) for name, parts in out.items()}


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
    other pair (a hierarchical VAE, a user's module): active units per latent site. What needs a
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
    if not callable(getattr(model, "encode", None)):  # several latent sites: per site only
        means = _site_means(model, x, 1024, 64)
        return {
            "active_units_by_site": {
                k: ActiveUnits(mu.var(0), 1e-2).count if n > 1 else None for k, mu in means.items()
            },
            "units_by_site": {k: mu.shape[1] for k, mu in means.items()},
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
