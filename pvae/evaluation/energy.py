r"""The densities AIS anneals between, per (chain, datapoint), on the flat latent vector u of
:class:`~pvae.evaluation.latents.Layout`: :math:`\log f_0(u)` and :math:`\ell(u)` with their
gradients (:func:`evaluate`), and draws from :math:`f_0` (:func:`start_values`).

.. math::

    \log f_\beta = \log f_0 + \beta\,\ell, \qquad
    \begin{cases}
        f_0 = q(z \mid x),\ \ \ell = \log p(x, z) - \log q(z \mid x) & \text{start = "guide"}\\
        f_0 = p(z),\ \ \ \ \ \ \ \ \ell = \log p(x \mid z) & \text{start = "prior"}
    \end{cases}

plus, in :math:`f_0`, the log-Jacobian of the map from u to the latents.

By definition, :math:`\log p(x, z)` and :math:`\log q(z \mid x)` are read from Pyro traces of the
model and the guide conditioned on the latents' values (:class:`TraceEnergy`, through
:mod:`pvae.traces`), so a second latent can never be left out. For a standard :class:`~pvae.VAE`
a fused energy (:class:`FusedEnergy`) computes the same numbers, q(z | x) encoded once per block
of datapoints; tests prove them equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pvae.evaluation._weights import FusedWeights, Target, seeded
from pvae.evaluation.latents import Layout
from pvae.program import Program
from pvae.traces import PARTICLES, site_terms

__all__ = ["FusedEnergy", "TraceEnergy", "evaluate", "make_energy", "start_values"]


class TraceEnergy:
    """The definition: model and guide traced under the particle plate, conditioned on the
    latents' values, reduced per site by :func:`pvae.traces.site_terms`."""

    def __init__(self, program: Program, nesting: int, latents: Sequence[str]) -> None:
        self.program = program
        self.nesting = nesting
        self.latents = set(latents)

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> Any:
        return xb, kwargs

    def terms(
        self, state: Any, guide_values: dict[str, Tensor], model_values: dict[str, Tensor], c: int
    ) -> tuple[Tensor, ...]:
        xb, kw = state
        particles = pyro.plate(PARTICLES, c, dim=-self.nesting - 1)
        traces = [
            prune_subsample_sites(
                poutine.trace(particles(poutine.condition(fn, data=values))).get_trace(xb, **kw)
            )
            for fn, values in (
                (self.program.model, model_values),
                (self.program.guide, guide_values),
            )
        ]
        st = site_terms(*traces, c, self.nesting)
        log_q = sum(st.guide.values())
        log_prior = sum(v for n, v in st.model.items() if n in self.latents)
        log_lik = sum(v for n, v in st.model.items() if n not in self.latents)
        return log_q, log_prior, log_lik


class FusedEnergy:
    """A standard :class:`~pvae.VAE`: q(z | x) and p(z) built once per block, log p(x | z) by
    ``vae.log_likelihood`` (the same numbers as :class:`TraceEnergy`, tested)."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def prepare(self, xb: Tensor, kwargs: Mapping[str, Any]) -> Any:
        return xb, self.vae.encode(xb), self.vae.prior()

    def terms(
        self, state: Any, guide_values: dict[str, Tensor], model_values: dict[str, Tensor], c: int
    ) -> tuple[Tensor, ...]:
        xb, q, prior = state
        z = model_values["z"]
        return q.log_prob(guide_values["z"]), prior.log_prob(z), self.vae.log_likelihood(z, xb)


def evaluate(
    energy: Any, layout: Layout, state: Any, u: Tensor, start: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log f₀(u) and ℓ(u) (see the module docstring) with their gradients, all detached; only
    u is differentiated (no parameter receives a gradient).

    Start ``"guide"``: the guide's terms, the model's and the log-Jacobian read u through three
    separate leaves, so one backward pass gives each term's gradient (∇f₀ = ∇_q + ∇_J,
    ∇ℓ = ∇_model − ∇_q). Start ``"prior"``: f₀ and ℓ share the model's trace, two passes."""
    c = u.shape[0]
    u = u.detach()
    with torch.enable_grad():
        if start == "guide":
            leaves = [u.clone().requires_grad_(True) for _ in range(3)]
            guide_values, _ = layout.unflatten(leaves[0], jacobian=False)
            model_values, _ = layout.unflatten(leaves[1], jacobian=False)
            ldj = layout.unflatten(leaves[2])[1] if layout.constrained else u.new_zeros(())
            log_q, log_prior, log_lik = energy.terms(state, guide_values, model_values, c)
            a, ell = log_q + ldj, log_prior + log_lik - log_q
            total = (log_q + log_prior + log_lik + ldj).sum()
            g_q, g_m, g_j = (
                torch.zeros_like(u) if g is None else g
                for g in torch.autograd.grad(total, leaves, allow_unused=True)
            )
            return a.detach(), ell.detach(), g_q + g_j, g_m - g_q
        leaf = u.clone().requires_grad_(True)
        values, ldj = layout.unflatten(leaf)
        _, log_prior, log_lik = energy.terms(state, values, values, c)
        a, ell = log_prior + ldj, log_lik
        grads = []
        for i, out in enumerate((a, ell)):
            g = None
            if out.requires_grad:
                (g,) = torch.autograd.grad(out.sum(), leaf, retain_graph=i == 0, allow_unused=True)
            grads.append(torch.zeros_like(u) if g is None else g)
    return a.detach(), ell.detach(), grads[0], grads[1]


def make_energy(target: Target, layout: Layout) -> TraceEnergy | FusedEnergy:
    """The fused energy where the target's log weights come from the fused path (a standard
    VAE, no keyword arguments), else the trace energy."""
    if isinstance(target.source, FusedWeights):
        return FusedEnergy(target.program.owner)
    return TraceEnergy(target.program, target.nesting, layout.names)


def start_values(
    target: Target,
    layout: Layout,
    start: int,
    stop: int,
    chains: int,
    how: str,
    seed: int | None,
) -> Tensor:
    """``(C, B, D)`` draws from f₀ (the guide, or the model's prior given x) for datapoints
    ``start:stop``; with a seed, each datapoint under its own generator."""
    program, x = target.program, target.x
    fn = program.guide if how == "guide" else program.model
    particles = pyro.plate(PARTICLES, chains, dim=-target.nesting - 1)

    def draw(i: int, j: int) -> Tensor:
        tr = poutine.trace(particles(fn)).get_trace(x[i:j], **target.kwargs_for(i, j))
        tr = prune_subsample_sites(tr)
        return layout.flatten({n: tr.nodes[n]["value"] for n in layout.names}, chains, j - i)

    if seed is None:
        return draw(start, stop)
    parts = []
    for i in range(start, stop):
        with seeded(seed, i, x.device):
            parts.append(draw(i, i + 1))
    return torch.cat(parts, 1)
