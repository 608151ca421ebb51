r"""VIMCO: the multi-sample bound with leave-one-out baselines, as a Pyro objective.

For K samples :math:`h_{1:K} \sim q(h \mid x)` and weights :math:`w_k = p(x, h_k)/q(h_k \mid x)`,
the bound is the IWAE bound (Burda et al. 2015),

.. math::

    \hat{\mathcal L}(h_{1:K}) = \log \frac1K \sum_{k=1}^K w_k,\qquad
    \mathcal L_K = \mathbb E\big[\hat{\mathcal L}\big] \le \log p(x),

and its gradient (Mnih & Rezende 2016, "Variational inference for Monte Carlo objectives",
eqs. 5–10) is estimated by

.. math::

    \nabla \mathcal L_K \approx \sum_k \tilde w_k \nabla \log w_k
        + \sum_k \big(\hat{\mathcal L} - \hat{\mathcal L}_{-k}\big) \nabla \log q(h_k \mid x),
    \qquad
    \hat{\mathcal L}_{-k} = \log \frac1K \Big(\sum_{j \ne k} w_j + \hat w_{-k}\Big),\quad
    \hat w_{-k} = \exp\Big(\frac{1}{K-1} \sum_{j\ne k} \log w_j\Big),

with :math:`\tilde w_k = w_k / \sum_j w_j`. The baseline :math:`\hat{\mathcal L}_{-k}` replaces
:math:`w_k` by the geometric mean of the other samples' weights; it does not depend on
:math:`h_k`, so the estimator stays unbiased, and the learning signal of sample k measures how
much :math:`h_k` contributes beyond what the others would. The first sum differentiates
:math:`\log w_k` at fixed draws: the model's parameters, the guide's parameters through
:math:`-\log q`, and the reparameterized path through every site that has ``rsample``. The score
term uses :math:`\log q` of the sites **without** ``rsample`` only (the discrete units); a guide
may mix both kinds. ``baseline="none"`` drops the baseline (the learning signal is
:math:`\hat{\mathcal L}` itself): the plain score-function estimator of the same bound, unbiased
and of much higher variance, kept for comparison.

The weights are per datapoint (the sites must lie in the ``"data"`` plate, as for
:class:`~pvae.objectives.iwae.IWAE`), the particles vectorized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import torch
from torch import Tensor

from pvae._checks import one_of, positive_int
from pvae.program import as_program
from pvae.traces import checked_particle_traces, particle_traces, site_terms

__all__ = ["BASELINES", "VIMCO", "leave_one_out", "vimco_surrogate"]

BASELINES = ("vimco", "none")


def leave_one_out(lw: Tensor) -> Tensor:
    r"""``(K, B)`` VIMCO baselines :math:`\hat{\mathcal L}_{-k}` from ``(K, B)`` log weights:
    the bound with :math:`\log w_k` replaced by the mean of the other K − 1 log weights."""
    k = lw.shape[0]
    others = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # (K, B): mean of the others' log w
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)  # (K, K, 1)
    swapped = torch.where(eye, others.unsqueeze(1), lw.unsqueeze(0))  # [k, j]: lw_j, j≠k
    return swapped.logsumexp(1) - math.log(k)


def vimco_surrogate(lw: Tensor, log_q_score: Tensor, baseline: str = "vimco") -> Tensor:
    """``(B,)`` per-datapoint surrogate: its value is the K-sample bound, its gradient the VIMCO
    estimate (see the module docstring).

    Args:
        lw: ``(K, B)`` log weights, differentiable.
        log_q_score: ``(K, B)`` log q of the guide's non-reparameterized sites, differentiable
            in the guide's parameters (zeros when there are none).
        baseline: ``"vimco"`` (leave-one-out) or ``"none"``.
    """
    k = lw.shape[0]
    bound = lw.logsumexp(0) - math.log(k)
    with torch.no_grad():
        signal = bound.expand_as(lw)
        if baseline == "vimco":
            signal = signal - leave_one_out(lw.detach())
    score = (signal * log_q_score).sum(0)
    return bound + score - score.detach()


class VIMCO(pyro.infer.ELBO):
    """The K-sample bound with VIMCO gradients, per datapoint (Mnih & Rezende 2016).

    Defined on Pyro traces (:mod:`pvae.traces`): every sample site inside the data plate; the
    particles are always vectorized. Works with ``pyro.infer.SVI``, ``pvae.fit(...,
    objective="vimco")`` and ``[train] objective = "vimco"``.

    Args:
        num_particles: K ≥ 2 samples per datapoint (the baseline needs another sample).
        vectorize_particles: Accepted for the registry's signature; the particles are always
            drawn in one vectorized pass.
        max_plate_nesting: Plates in the model (1 for a data plate alone).
        baseline: ``"vimco"`` or ``"none"`` (plain score function, for comparison).
        data_plate: Name of the plate over datapoints.

    Example:
        >>> import torch
        >>> from pvae.sbn import SigmoidBeliefNet
        >>> sbn = SigmoidBeliefNet(latent_sizes=(10,)).build((4,))
        >>> VIMCO(num_particles=5).differentiable_loss(sbn.model, sbn.guide, torch.ones(3, 4)).shape
        torch.Size([])
    """

    def __init__(
        self,
        num_particles: int = 5,
        vectorize_particles: bool = True,
        max_plate_nesting: int = 1,
        baseline: str = "vimco",
        data_plate: str = "data",
    ) -> None:
        k = positive_int("num_particles", num_particles)
        if k < 2:
            raise ValueError(
                f"num_particles must be at least 2 for VIMCO (each sample's baseline is built "
                f"from the others), got {k}"
            )
        super().__init__(
            num_particles=k,
            max_plate_nesting=positive_int("max_plate_nesting", max_plate_nesting),
            vectorize_particles=True,
        )
        self.baseline = one_of("baseline", baseline, BASELINES)
        self.data_plate = data_plate
        self.nesting = max_plate_nesting

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        """Model and guide traces inside the particle plate (Pyro's ELBO hook)."""
        return particle_traces(
            as_program(model, guide), args, kwargs, self.num_particles, self.nesting
        )

    def surrogate(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
    ) -> tuple[Tensor, float]:
        """``(B,)`` per-datapoint surrogates (:func:`vimco_surrogate`) and the data plate's
        scale."""
        k = self.num_particles
        model_trace, guide_trace = checked_particle_traces(
            as_program(model, guide), args, kwargs, k, self.nesting, self.data_plate
        )
        terms = site_terms(model_trace, guide_trace, k, self.nesting, self.data_plate)
        scale = terms.scale("VIMCO")
        lw = terms.lw
        score = [
            terms.guide[name]
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["fn"].has_rsample
        ]
        log_q_score = sum(score) if score else torch.zeros_like(lw)
        return vimco_surrogate(lw, log_q_score, self.baseline), scale

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Tensor:
        """Negative K-sample bound of the minibatch, scaled to the dataset; its gradient is the
        VIMCO estimate."""
        surrogate, scale = self.surrogate(model, guide, args, kwargs)
        return -scale * surrogate.sum()

    @torch.no_grad()
    def loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """Negative K-sample bound as a float."""
        return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """For ``pyro.infer.SVI``: backpropagate and return the loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())
