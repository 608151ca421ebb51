r"""The evidence lower bound, through Pyro's own estimators.

.. math::

    \log p_\theta(x) \ge \mathcal L(x) = \mathbb E_{q_\phi(z\mid x)}\big[\log p_\theta(x\mid z)\big]
        - \mathrm{KL}\big(q_\phi(z\mid x)\,\|\,p(z)\big)

* ``"elbo"``: :class:`pyro.infer.Trace_ELBO`, the Monte Carlo estimate of
  :math:`\log p(x, z) - \log q(z\mid x)` with reparameterized z (Kingma & Welling 2013).
* ``"meanfield_elbo"``: :class:`pyro.infer.TraceMeanField_ELBO`, the same bound with the KL term
  in closed form where Pyro knows it (e.g. Gaussian guide against Gaussian prior), which lowers
  the gradient variance. Both estimate the same number: they agree in expectation.
* ``"iwae"``: the importance-weighted bound with K = ``num_particles``
  (:class:`pvae.objectives.iwae.IWAE`).
* ``"enum_elbo"``: :class:`pyro.infer.TraceEnum_ELBO`, the same bound with the sites marked for
  enumeration (``config_enumerate``) summed out exactly in parallel; :func:`pvae.fit` sets its
  ``max_plate_nesting`` from the traces.
* ``"vimco"``, ``"rws"``: the K-sample bound for discrete latents, with VIMCO's leave-one-out
  baselines (:class:`pvae.objectives.vimco.VIMCO`) or reweighted wake-sleep
  (:class:`pvae.objectives.rws.RWS`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyro.infer

from pvae._checks import lookup, positive_int
from pvae.objectives.iwae import IWAE
from pvae.objectives.rws import RWS
from pvae.objectives.vimco import VIMCO

__all__ = ["OBJECTIVES", "make_objective"]

OBJECTIVES: Mapping[str, Callable[..., pyro.infer.ELBO]] = {
    "elbo": pyro.infer.Trace_ELBO,
    "meanfield_elbo": pyro.infer.TraceMeanField_ELBO,
    "iwae": IWAE,
    "vimco": VIMCO,
    "rws": RWS,
    "enum_elbo": pyro.infer.TraceEnum_ELBO,
}


def make_objective(
    name: str | pyro.infer.ELBO,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    estimator: str = "reparam",
) -> pyro.infer.ELBO:
    """Build the Pyro objective called ``name`` (or return an ELBO instance unchanged).

    Args:
        name: ``"elbo"``, ``"meanfield_elbo"`` or ``"iwae"``, or a :class:`pyro.infer.ELBO`.
        num_particles: Samples of z per datapoint (K for ``"iwae"``).
        vectorize_particles: Draw the particles in one batched pass instead of a Python loop
            (``"iwae"`` always does).
        estimator: Encoder gradient estimator of ``"iwae"``: ``"reparam"``, ``"stl"``, ``"dreg"``.
    """
    if isinstance(name, pyro.infer.ELBO):
        return name
    cls = lookup("objective", OBJECTIVES, name)
    if cls is IWAE:
        return IWAE(num_particles=num_particles, estimator=estimator)
    if estimator != "reparam":
        raise ValueError(f"estimator {estimator!r} applies to objective 'iwae' only, not {name!r}")
    return cls(
        num_particles=positive_int("num_particles", num_particles),
        vectorize_particles=bool(vectorize_particles),
        max_plate_nesting=1,
    )
