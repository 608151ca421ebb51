r"""The importance-weighted bound (IWAE) as a Pyro objective, per datapoint.

.. math::

    \mathcal L_K(x) = \mathbb E_{z_{1:K}\sim q}\Big[\log \frac1K \sum_{k=1}^K
        \frac{p(x, z_k)}{q(z_k\mid x)}\Big] \le \log p(x)

(Burda et al. 2015). :math:`\mathcal L_1` is the ELBO; :math:`\mathcal L_K` increases with K.

The log-sum-exp is taken **per datapoint**: the unscaled log weights of every site inside the
``"data"`` plate are summed into a ``(K, B)`` array, reduced over K for each datapoint, then summed
over the minibatch with the plate's N / B scale. Pyro's ``RenyiELBO(alpha=0)`` has had problems
with local latents in a data plate (pyro-ppl/pyro#2220, #3104); with pyro-ppl 1.9.2 it agrees
with this objective per datapoint (tested), but it offers no STL or DReG estimator.

Encoder gradient estimators (the decoder gradient is the same for all three):

* ``"reparam"``: differentiate the bound through the reparameterized z.
* ``"stl"``: "sticking the landing" (Roeder et al. 2017): :math:`\log q` is evaluated with its
  parameters held fixed, dropping the score-function term, which has zero mean and dominates the
  variance near the optimum.
* ``"dreg"``: doubly reparameterized (Tucker et al. 2018): as STL, with the encoder gradient of
  each particle weighted by :math:`\tilde w_k^2` instead of :math:`\tilde w_k`. Unbiased, and its
  signal-to-noise ratio does not vanish as K grows (Rainforth et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.enum import get_importance_trace
from torch import Tensor, nn

from pvae._checks import one_of, positive_int

__all__ = ["ESTIMATORS", "IWAE"]

ESTIMATORS = ("reparam", "stl", "dreg")


class _Call(nn.Module):
    """Module wrapper so ``torch.func.functional_call`` can swap the owner's parameters."""

    def __init__(self, owner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _owner(guide: Callable[..., Any]) -> nn.Module | None:
    if isinstance(guide, nn.Module):
        return guide
    owner = getattr(guide, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class IWAE(pyro.infer.ELBO):
    """Importance-weighted ELBO with K particles, per datapoint (Burda et al. 2015).

    Every sample site must lie inside the data plate (local latents, as in a VAE). Particles are
    always vectorized.

    Args:
        num_particles: K, importance samples per datapoint.
        estimator: ``"reparam"``, ``"stl"`` or ``"dreg"`` (see the module docstring).
        max_plate_nesting: Plates in the model (1 for a VAE's data plate).
        data_plate: Name of the plate over datapoints.

    Example:
        >>> import torch, pvae
        >>> vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(4,))
        >>> loss = IWAE(num_particles=8, estimator="dreg").differentiable_loss(
        ...     vae.model, vae.guide, torch.ones(3, 4))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        num_particles: int = 5,
        estimator: str = "reparam",
        max_plate_nesting: int = 1,
        data_plate: str = "data",
    ) -> None:
        super().__init__(
            num_particles=positive_int("num_particles", num_particles),
            max_plate_nesting=positive_int("max_plate_nesting", max_plate_nesting),
            vectorize_particles=True,
        )
        self.estimator = one_of("estimator", estimator, ESTIMATORS)
        self.data_plate = data_plate

    def _particles(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return pyro.plate("iwae_particles", self.num_particles, dim=-self.max_plate_nesting - 1)(fn)

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        """Model and guide traces inside the particle plate (Pyro's ELBO hook)."""
        return get_importance_trace(
            "flat",
            self.max_plate_nesting + 1,
            self._particles(model),
            self._particles(guide),
            args,
            kwargs,
        )

    def _log_weights(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
    ) -> tuple[Tensor, float, list[Tensor]]:
        """``(K, B)`` log weights, the data plate's scale, and the guide's latent values."""
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        if self.estimator == "reparam":
            log_q = {
                n: s["unscaled_log_prob"]
                for n, s in guide_trace.nodes.items()
                if s["type"] == "sample"
            }
        else:
            log_q = self._log_q_fixed(guide, guide_trace, args, kwargs)
        lw: Tensor | float = 0.0
        scales = set()
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                if not any(f.name == self.data_plate for f in site["cond_indep_stack"]):
                    raise ValueError(
                        f"IWAE needs every sample site inside the {self.data_plate!r} plate; "
                        f"site {name!r} is outside it (a global latent)"
                    )
                if sign < 0 and not site["fn"].has_rsample:
                    raise ValueError(
                        f"IWAE needs reparameterizable guide sites; {name!r} is "
                        f"{type(site['fn']).__name__}"
                    )
                scales.add(float(site["scale"]))
                # Weights are unscaled: the plate's N / B multiplies the per-datapoint bound.
                lw = lw + (site["unscaled_log_prob"] if sign > 0 else -log_q[name])
        if len(scales) != 1:
            raise ValueError(
                "IWAE needs one scale for all sites (the data plate's N / B), got "
                f"{sorted(scales)}; poutine.scale on single sites does not fit the IWAE bound"
            )
        latents = [s["value"] for s in guide_trace.nodes.values() if s["type"] == "sample"]
        return lw, scales.pop(), latents

    def _log_q_fixed(
        self, guide: Callable[..., Any], guide_trace: Any, args: Any, kwargs: Any
    ) -> dict[str, Tensor]:
        """log q(z | x) with the guide's parameters held fixed but z still reparameterized."""
        owner = _owner(guide)
        if owner is None:
            raise TypeError(
                f"estimator {self.estimator!r} needs a guide that is an nn.Module or a method "
                "of one (so its parameters can be held fixed), got "
                f"{type(guide).__name__}"
            )
        fixed = {f"owner.{n}": p.detach() for n, p in owner.named_parameters()}
        call = _Call(
            owner,
            lambda *a, **k: poutine.trace(
                poutine.replay(self._particles(guide), trace=guide_trace)
            ).get_trace(*a, **k),
        )
        trace = torch.func.functional_call(call, fixed, args, kwargs, strict=False)
        return {
            name: site["fn"].log_prob(guide_trace.nodes[name]["value"])
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and name in guide_trace.nodes  # not the plate's subsample
        }

    def _iwae(self, lw: Tensor) -> Tensor:
        return lw.logsumexp(0) - math.log(self.num_particles)

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Tensor:
        """Negative IWAE bound of the minibatch, scaled to the dataset; differentiable."""
        lw, scale, latents = self._log_weights(model, guide, args, kwargs)
        loss = -scale * self._iwae(lw).sum()
        if self.estimator != "dreg":
            return loss
        w = torch.softmax(lw.detach(), dim=0)  # normalized weights per datapoint
        for z in latents:
            if z.requires_grad:
                ww = w.reshape(w.shape + (1,) * (z.dim() - w.dim()))
                z.register_hook(lambda g, ww=ww: g * ww)  # w̃ ∂lw/∂z → w̃² ∂lw/∂z
        surrogate = -scale * (w * lw).sum()
        return surrogate + (loss - surrogate).detach()

    @torch.no_grad()
    def loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """Negative IWAE bound as a float."""
        lw, scale, _ = self._log_weights(model, guide, args, kwargs)
        return float(-scale * self._iwae(lw).sum())

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """For ``pyro.infer.SVI``: backpropagate and return the loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())
