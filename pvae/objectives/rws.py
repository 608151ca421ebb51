r"""Reweighted wake-sleep (Bornschein & Bengio 2015) through Pyro's ``ReweightedWakeSleep``,
per datapoint, with one loss for :func:`pvae.fit`.

With K draws :math:`h_k \sim q_\phi(h \mid x)`, weights :math:`w_k = p_\theta(x, h_k) /
q_\phi(h_k \mid x)` and :math:`\tilde w_k = w_k / \sum_j w_j`:

* **wake-θ**: ascend :math:`\log \frac1K \sum_k w_k` in θ at fixed draws, the IWAE bound's
  gradient in the model's parameters (:math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x,
  h_k)`);
* **wake-φ**: ascend :math:`\sum_k \tilde w_k \log q_\phi(h_k \mid x)` with the weights held
  fixed, a self-normalized importance-sampling estimate of :math:`-\nabla_\phi
  \mathrm{KL}(p_\theta(h \mid x) \,\|\, q_\phi(h \mid x))`: the guide chases the posterior
  (inclusive KL), which needs no reparameterization and no score-function term, so it works for
  discrete units. It is not the gradient of any bound in φ.

:class:`RWS` subclasses :class:`pyro.infer.ReweightedWakeSleep` and keeps its contract: ``loss``
and ``loss_and_grads`` return the pair (wake-θ loss, wake-φ loss) as Pyro's does, and the draws
are detached before the model scores them (Pyro's ``detach=True``). It changes one thing, and
adds one:

* Pyro's class sums the log weights over the whole minibatch before the log-sum-exp (its
  docstring: "mini-batch training is not supported yet"): with B datapoints it is the bound of
  the joint of B datapoints with K particles, whose weights degenerate as B grows. Here each
  datapoint gets its own K weights, as in :class:`~pvae.objectives.iwae.IWAE`; with B = 1 the
  two agree exactly (tested).
* :meth:`RWS.differentiable_loss` presents the two losses as one tensor for ``pvae.fit``, which
  trains one optimizer on one loss: its value is the wake-θ loss (the negative K-sample bound)
  and its gradient is wake-θ's in θ plus wake-φ's in φ, the sum Pyro's ``loss_and_grads``
  backpropagates. Each loss reaches only its own parameters, since the draws are detached and
  the weights in wake-φ are constants, **provided model and guide share no parameter**; a
  shared parameter would get both gradients.

Where it stops: only ``insomnia = 1`` (wake-φ). Sleep-φ (``insomnia < 1``) draws (h, x) from
the model and needs a guide that takes ``observations=...``, which pvae's programs do not; it
is refused with an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pvae._checks import positive_int
from pvae.program import Program, as_program
from pvae.traces import PARTICLES, check_sites, inspect_pair, site_terms

__all__ = ["RWS", "detached_particle_traces"]


def detached_particle_traces(
    program: Program, args: tuple, kwargs: Mapping[str, Any], k: int, nesting: int, data_plate: str
) -> tuple[Any, Any]:
    """Guide trace with ``k`` vectorized particles, its draws detached, and the model replayed
    against it; sites checked (:func:`pvae.traces.check_sites`)."""
    particles = pyro.plate(PARTICLES, k, dim=-nesting - 1)
    try:
        guide_trace = poutine.trace(particles(program.guide)).get_trace(*args, **kwargs)
        guide_trace.detach_()
        model_trace = poutine.trace(
            poutine.replay(particles(program.model), trace=guide_trace)
        ).get_trace(*args, **kwargs)
    except Exception:
        _, model_trace, guide_trace = inspect_pair(program, args, kwargs)
        check_sites(model_trace, guide_trace, data_plate)
        raise
    model_trace, guide_trace = (
        prune_subsample_sites(model_trace),
        prune_subsample_sites(guide_trace),
    )
    check_sites(model_trace, guide_trace, data_plate)
    return model_trace, guide_trace


class RWS(pyro.infer.ReweightedWakeSleep):
    """Reweighted wake-sleep with per-datapoint weights (see the module docstring).

    Args:
        num_particles: K ≥ 2 draws per datapoint (self-normalization needs two).
        vectorize_particles: Accepted for the registry's signature; always vectorized.
        max_plate_nesting: Plates in the model (1 for a data plate alone).
        insomnia: Must be 1 (wake-φ only).
        data_plate: Name of the plate over datapoints.

    Example:
        >>> import torch
        >>> from pvae.sbn import SigmoidBeliefNet
        >>> sbn = SigmoidBeliefNet(latent_sizes=(10,)).build((4,))
        >>> theta, phi = RWS(num_particles=5).loss(sbn.model, sbn.guide, torch.ones(3, 4))
        >>> theta.shape, phi.shape
        (torch.Size([]), torch.Size([]))
    """

    def __init__(
        self,
        num_particles: int = 5,
        vectorize_particles: bool = True,
        max_plate_nesting: int = 1,
        insomnia: float = 1.0,
        data_plate: str = "data",
    ) -> None:
        k = positive_int("num_particles", num_particles)
        if k < 2:
            raise ValueError(
                f"num_particles must be at least 2 for RWS (its weights are self-normalized), "
                f"got {k}"
            )
        if insomnia != 1.0:
            raise ValueError(
                f"insomnia must be 1.0 (wake-phi): sleep-phi needs a guide taking "
                f"observations=..., which pvae's programs do not; got {insomnia!r}"
            )
        nesting = positive_int("max_plate_nesting", max_plate_nesting)
        super().__init__(num_particles=k, insomnia=1.0, max_plate_nesting=nesting)
        self.data_plate = data_plate
        self.nesting = nesting

    def _loss(self, model: Any, guide: Any, args: Any, kwargs: Any) -> tuple[Tensor, Tensor]:
        """(wake-θ loss, wake-φ loss) of the minibatch, per datapoint, scaled to the dataset
        (overrides Pyro's, which sums the weights over the minibatch first)."""
        k = self.num_particles
        model_trace, guide_trace = detached_particle_traces(
            as_program(model, guide), args, kwargs, k, self.nesting, self.data_plate
        )
        terms = site_terms(model_trace, guide_trace, k, self.nesting, self.data_plate)
        scale = terms.scale("RWS")
        log_q = sum(terms.guide.values())
        lw = sum(terms.model.values()) - log_q.detach()
        wake_theta = -scale * (lw.logsumexp(0) - math.log(k)).sum()
        weights = torch.softmax(lw.detach(), dim=0)
        wake_phi = -scale * (weights * log_q).sum()
        return wake_theta, wake_phi

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Tensor:
        """One loss for one optimizer: the wake-θ loss's value, the gradient of wake-θ + wake-φ
        (each reaching its own parameters)."""
        wake_theta, wake_phi = self._loss(model, guide, args, kwargs)
        return wake_theta + wake_phi - wake_phi.detach()
