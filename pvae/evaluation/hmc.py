r"""Hamiltonian Monte Carlo transitions for annealed importance sampling: the kernel
(:func:`hmc_step`, :func:`hmc_transition`), the per-datapoint step-size adaptation and its jitter,
and the counter-based random numbers (:class:`Noise`) that make a datapoint's draws independent
of the block it runs in.

**Transitions.** Identity mass, ``leapfrog`` steps, one Metropolis accept per chain. The step size
is per datapoint, shared by its chains, and adapted after every transition toward
``target_accept`` (× 1.02 when the chains' mean acceptance probability is above it, ÷ 1.02
otherwise; Wu et al. 2017), kept within [1e-5, 10] (:func:`adapt_step_size`); each chain's step of
each transition is that size times a random factor in [0.8, 1.2] (:func:`jittered`), so a fixed
trajectory length cannot resonate with the period of a Gaussian direction (Neal 2011,
sec. 5.4.2.2).

.. warning:: Adapting the step size from the chains' own acceptance makes the transitions
   depend on the past, as in Wu et al. (2017); the effect on the bounds is small in practice but
   the guarantees of AIS hold exactly only for a fixed schedule of step sizes.

**Random numbers.** With an integer ``seed``, every momentum and accept draw is a counter-based
hash (SplitMix64's finalizer) of (seed, datapoint, step, chain, coordinate): the numbers of a
datapoint do not depend on how the data are split into blocks, nor on the device's generator.
``seed=None`` uses the global generator.

References:
    Neal, R. M. (2011). MCMC using Hamiltonian dynamics. *Handbook of Markov Chain Monte
    Carlo*, ch. 5.

    Wu, Y., Burda, Y., Salakhutdinov, R., & Grosse, R. (2017). On the quantitative analysis of
    decoder-based generative models. *ICLR*.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pvae._checks import positive_int

__all__ = ["Noise", "adapt_step_size", "hmc_step", "hmc_transition", "jittered"]

STEP_RANGE = (1e-5, 10.0)
ADAPT = 1.02
# Each transition's step size is jittered by a factor in [1 - J, 1 + J] per chain: without it a
# fixed trajectory length can resonate with a Gaussian direction and return the chain to where it
# started (Neal 2011, sec. 5.4.2.2); jitter drawn independently of the state keeps f invariant.
JITTER = 0.2


# -- the kernel -----------------------------------------------------------------------------------
def hmc_transition(
    z: Tensor,
    logf: Tensor,
    grad: Tensor,
    extras: tuple[Tensor, ...],
    fn: Callable[[Tensor], tuple[Tensor, Tensor, tuple[Tensor, ...]]],
    eps: Tensor,
    num_leapfrog: int,
    momentum: Tensor,
    uniform: Tensor,
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...], Tensor]:
    """One HMC transition from (z, log f(z), ∇ log f(z)) with the given momentum and uniform
    draws. ``fn(z)`` returns ``(log f, ∇ log f, extras)``; the extras of the accepted state are
    returned with it, so a caller never evaluates the energy twice at one state."""
    e = eps.unsqueeze(-1)
    p = momentum + 0.5 * e * grad
    q = z
    lf, g, ex = logf, grad, extras
    for i in range(num_leapfrog):
        q = q + e * p
        lf, g, ex = fn(q)
        p = p + (e if i < num_leapfrog - 1 else 0.5 * e) * g
    log_a = lf - logf - 0.5 * (p * p).sum(-1) + 0.5 * (momentum * momentum).sum(-1)
    log_a = torch.where(torch.isnan(log_a), -math.inf, log_a)
    prob = log_a.clamp(max=0.0).exp()
    acc = uniform < prob

    def pick(new: Tensor, old: Tensor) -> Tensor:
        return torch.where(acc.reshape(acc.shape + (1,) * (new.dim() - acc.dim())), new, old)

    return (
        pick(q, z),
        pick(lf, logf),
        pick(g, grad),
        tuple(pick(a, b) for a, b in zip(ex, extras, strict=True)),
        prob,
    )


def hmc_step(
    z: Tensor,
    log_f_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
    step_size: float | Tensor,
    num_leapfrog: int,
) -> tuple[Tensor, Tensor]:
    r"""One Hamiltonian Monte Carlo transition per chain, leaving :math:`f` invariant.

    Identity mass matrix, ``num_leapfrog`` leapfrog steps of size ε, then a Metropolis accept
    with probability :math:`\min(1, e^{-H(z', p') + H(z, p)})`,
    :math:`H = -\log f(z) + \tfrac12\lVert p\rVert^2` (Neal 2011). A proposal whose log density
    is NaN is rejected. Momentum and accept draws come from torch's global generator.

    Args:
        z: ``(..., D)`` current states (every leading dimension is a batch of chains).
        log_f_and_grad: ``z ↦ (log f(z), ∇_z log f(z))`` with shapes ``(...)`` and ``(..., D)``.
        step_size: ε, a number or a tensor broadcastable to ``z.shape[:-1]``.
        num_leapfrog: Leapfrog steps L ≥ 1.

    Returns:
        The new states ``(..., D)`` and the acceptance probabilities ``(...)``.

    Example:
        >>> import torch
        >>> from pvae.evaluation.hmc import hmc_step
        >>> z = torch.randn(100, 2)
        >>> z, prob = hmc_step(z, lambda z: (-0.5 * (z**2).sum(-1), -z), 0.5, 5)
        >>> z.shape, bool(((prob >= 0) & (prob <= 1)).all())
        (torch.Size([100, 2]), True)
    """
    num_leapfrog = positive_int("num_leapfrog", num_leapfrog)
    eps = torch.as_tensor(step_size, dtype=z.dtype, device=z.device)
    eps = eps.expand(z.shape[:-1])
    logf, grad = log_f_and_grad(z)
    momentum = torch.randn_like(z)
    uniform = torch.rand(z.shape[:-1], dtype=z.dtype, device=z.device)

    def fn(q: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        lf, g = log_f_and_grad(q)
        return lf, g, ()

    new, _, _, _, prob = hmc_transition(z, logf, grad, (), fn, eps, num_leapfrog, momentum, uniform)
    return new, prob


# -- step-size adaptation -------------------------------------------------------------------------
def jittered(step_size: Tensor, noise: Noise, step: int, like: Tensor) -> Tensor:
    """``(C, B)`` steps of transition ``step``: each datapoint's size times a factor in
    [1 − J, 1 + J] per chain, drawn independently of the state (so f stays invariant)."""
    return step_size * (1 + JITTER * (2 * noise.uniform(step, like, 2) - 1))


def adapt_step_size(step_size: Tensor, accept: Tensor, target_accept: float) -> Tensor:
    """``(B,)`` step sizes after a transition whose chains' mean acceptance was ``accept``:
    × 1.02 above ``target_accept``, ÷ 1.02 otherwise, kept within :data:`STEP_RANGE`."""
    return torch.where(accept > target_accept, step_size * ADAPT, step_size / ADAPT).clamp(
        *STEP_RANGE
    )


# -- counter-based random numbers -----------------------------------------------------------------
def _signed(v: int) -> int:
    """A Python integer as the int64 with the same low 64 bits."""
    v %= 1 << 64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _mix(x: Tensor) -> Tensor:
    """SplitMix64's finalizer on int64 tensors (logical shifts by masking; products wrap)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class Noise:
    """Momentum and accept draws of a block: a hash of (seed, datapoint, step, chain, coordinate)
    when seeded, so the draws of a datapoint do not depend on its block; else torch's global
    generator."""

    def __init__(self, seed: int | None, index: Tensor, stream: int) -> None:
        self.seed = seed
        self.stream = stream
        if seed is not None:
            # (index on the block's device, so no draw copies anything between devices)
            self.key = _mix(_mix(index.to(torch.int64) + _signed(seed * _GOLDEN)))

    def _uniform(
        self, step: int, kind: int, shape: tuple[int, ...], device: torch.device
    ) -> Tensor:
        c, b, rest = shape[0], shape[1], shape[2:]
        key = _mix(self.key + _signed((8 * step + 4 * self.stream + kind + 1) * _GOLDEN))
        inner = math.prod(rest)
        j = torch.arange(c * inner, device=device, dtype=torch.int64).reshape(c, 1, inner)
        bits = _mix(key.reshape(1, b, 1) + (j + 1) * _GOLDEN)
        u = ((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) * 2.0**-53
        return u.reshape(c, b, *rest)

    def momentum(self, step: int, like: Tensor) -> Tensor:
        if self.seed is None:
            return torch.randn_like(like)
        c, b, d = like.shape
        u = self._uniform(step, 0, (c, b, d, 2), like.device)
        r = torch.sqrt(-2 * torch.log1p(-u[..., 0]))
        return (r * torch.cos(2 * math.pi * u[..., 1])).to(like.dtype)

    def uniform(self, step: int, like: Tensor, kind: int) -> Tensor:
        if self.seed is None:
            return torch.rand(like.shape[:2], dtype=like.dtype, device=like.device)
        c, b, _ = like.shape
        return self._uniform(step, kind, (c, b), like.device).to(like.dtype)
