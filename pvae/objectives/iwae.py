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
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from pvae._checks import one_of, positive_int
from pvae.program import as_program, owner_of, param_sites
from pvae.traces import PARTICLES, checked_particle_traces, particle_traces, site_terms

__all__ = ["ESTIMATORS", "IWAE", "iwae_loss"]

ESTIMATORS = ("reparam", "stl", "dreg")
_NOT_REGISTERED = r".* was not registered in the param store because requires_grad=False"


def iwae_loss(lw: Tensor, scale: float, estimator: str, latents: Iterable[Tensor] = ()) -> Tensor:
    """Negative IWAE bound of a minibatch from its ``(K, B)`` log weights, differentiable.

    The one place the bound's reduction is written: Pyro's trace path (:class:`IWAE`) and the
    fused fast path both call it.

    Args:
        lw: Log weights; under ``"stl"``/``"dreg"`` their log q term must have been evaluated
            with the guide's parameters held fixed.
        scale: The data plate's N / B.
        estimator: ``"reparam"``, ``"stl"`` or ``"dreg"``.
        latents: The reparameterized draws that ``lw`` depends on (DReG reweights their
            gradients by w̃ through a hook).
    """
    k = lw.shape[0]
    loss = -scale * (lw.logsumexp(0) - math.log(k)).sum()
    if estimator != "dreg":
        return loss
    w = torch.softmax(lw.detach(), dim=0)  # normalized weights per datapoint
    for z in latents:
        if z.requires_grad:
            ww = w.reshape(w.shape + (1,) * (z.dim() - w.dim()))
            z.register_hook(lambda g, ww=ww: g * ww)  # w̃ ∂lw/∂z → w̃² ∂lw/∂z
    surrogate = -scale * (w * lw).sum()
    return surrogate + (loss - surrogate).detach()


class _Call(nn.Module):
    """Module wrapper so ``torch.func.functional_call`` can swap the owner's parameters."""

    def __init__(self, owner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class IWAE(pyro.infer.ELBO):
    """Importance-weighted ELBO with K particles, per datapoint (Burda et al. 2015).

    Defined on Pyro traces (:mod:`pvae.traces`): every sample site must lie inside the data
    plate (local latents, as in a VAE), any number of them. Particles are always vectorized.
    Works with ``pyro.infer.SVI`` and Pyro's PyTorch-style ``IWAE(...)(model, guide)`` module.

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
        self.nesting = max_plate_nesting  # the pair's own plates (Pyro's count may add particles)

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        """Model and guide traces inside the particle plate (Pyro's ELBO hook)."""
        program = as_program(model, guide)
        return particle_traces(program, args, kwargs, self.num_particles, self.nesting)

    def _log_weights(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
    ) -> tuple[Tensor, float, list[Tensor]]:
        """``(K, B)`` log weights, the data plate's scale, and the guide's latent values."""
        program = as_program(model, guide)
        k, nesting = self.num_particles, self.nesting
        model_trace, guide_trace = checked_particle_traces(
            program, args, kwargs, k, nesting, self.data_plate
        )
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["fn"].has_rsample:
                raise ValueError(
                    f"IWAE needs a reparameterized draw at every guide site; {name!r} is "
                    f"{type(site['fn']).__name__}, which has no rsample (its gradient would "
                    "miss the score-function term)"
                )
        log_q = None
        if self.estimator != "reparam":
            log_q = self._log_q_fixed(program, guide_trace, args, kwargs)
        terms = site_terms(model_trace, guide_trace, k, nesting, self.data_plate, log_q)
        scale = terms.scale("IWAE")
        latents = [s["value"] for s in guide_trace.nodes.values() if s["type"] == "sample"]
        return terms.lw, scale, latents

    def _log_q_fixed(self, program: Any, guide_trace: Any, args: Any, kwargs: Any) -> dict:
        """log q of the guide's draws with the guide's parameters held fixed, z still
        reparameterized (so only the pathwise gradient through z remains)."""
        owner = owner_of(program.guide)
        if owner is None:
            raise TypeError(
                f"estimator {self.estimator!r} needs a guide that is an nn.Module or a method "
                "of one (so its parameters can be held fixed), got "
                f"{type(program.guide).__name__}"
            )
        fixed = {f"owner.{n}": p.detach() for n, p in owner.named_parameters()}
        particles = pyro.plate(PARTICLES, self.num_particles, dim=-self.nesting - 1)
        call = _Call(
            owner,
            lambda *a, **k: poutine.trace(
                poutine.replay(particles(program.guide), trace=guide_trace)
            ).get_trace(*a, **k),
        )
        with poutine.block(), param_sites(False), warnings.catch_warnings():
            # The swapped-in tensors are no parameters. A guide that calls pyro.module(name,
            # self) (Pyro's documented idiom) makes Pyro warn, per tensor, "<name> was not
            # registered in the param store because requires_grad=False": harmless, since
            # these detached copies must not be registered (the guide's own run just now
            # registered the real parameters), and only this re-scoring sees them.
            warnings.filterwarnings("ignore", _NOT_REGISTERED, UserWarning, "pyro.primitives")
            trace = torch.func.functional_call(call, fixed, args, kwargs, strict=False)
        return {
            name: site["fn"].log_prob(guide_trace.nodes[name]["value"])
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and name in guide_trace.nodes
        }

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Tensor:
        """Negative IWAE bound of the minibatch, scaled to the dataset; differentiable."""
        lw, scale, latents = self._log_weights(model, guide, args, kwargs)
        return iwae_loss(lw, scale, self.estimator, latents)

    @torch.no_grad()
    def loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """Negative IWAE bound as a float."""
        lw, scale, _ = self._log_weights(model, guide, args, kwargs)
        return float(iwae_loss(lw, scale, "reparam"))

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """For ``pyro.infer.SVI``: backpropagate and return the loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())
