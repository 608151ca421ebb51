"""The training tests' data (:func:`small_digits`) and a tiny model with three binary latents
whose K-sample bound is computed exactly by enumerating all 8^K tuples of latent configurations;
shared by test_vimco.py, test_rws.py and test_relaxed.py.

.. math::
    h \\in \\{0,1\\}^3,\\ h_j \\sim \\mathrm{Bernoulli}(\\sigma(a_j)),\\quad
    x \\mid h \\sim \\mathcal N(W h + c, I_2),\\qquad q(h \\mid x) = \\prod_j
    \\mathrm{Bernoulli}\\big(\\sigma((U x + d)_j)\\big).

The parameters carry a leading row dimension R: row r serves datapoint r only, so the gradient of
a minibatch loss with respect to row r is datapoint r's own gradient, and R copies of one x give R
independent gradient estimates in one vectorized pass.
"""

import itertools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pvae
from pvae.datasets import DataSplits, Split
from pvae.sbn import SigmoidBeliefNet

NAMES = ("a", "W", "c", "U", "d")  # a, W, c: the model (θ); U, d: the guide (φ)
MODEL, GUIDE = ("a", "W", "c"), ("U", "d")
X = torch.tensor([1.0, -0.5], dtype=torch.float64)


def base_params() -> dict[str, torch.Tensor]:
    """Fixed parameters (float64, no row dimension): a guide well away from the posterior."""
    g = torch.Generator().manual_seed(3)
    shapes = {"a": (3,), "W": (2, 3), "c": (2,), "U": (3, 2), "d": (3,)}
    return {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}


class Toy(nn.Module):
    """The model with parameters of shape ``(R, ...)``, each row a copy of ``base``."""

    def __init__(self, base: dict[str, torch.Tensor], rows: int) -> None:
        super().__init__()
        for n in NAMES:
            p = base[n].detach().expand(rows, *base[n].shape).clone()
            self.register_parameter(n, nn.Parameter(p))

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            h = pyro.sample("h", dist.Bernoulli(logits=self.a).to_event(1))
            mean = (self.W * h.unsqueeze(-2)).sum(-1) + self.c
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        logits = (self.U * x.unsqueeze(-2)).sum(-1) + self.d
        with pyro.plate("data", x.shape[0]):
            pyro.sample("h", dist.Bernoulli(logits=logits).to_event(1))

    def row_grads(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(R, P_name)`` per-row gradients of ``loss`` for each parameter (zeros where the loss
        does not depend on it)."""
        params = [getattr(self, n) for n in NAMES]
        grads = torch.autograd.grad(
            loss, params, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        return {n: g.reshape(g.shape[0], -1) for n, g in zip(NAMES, grads, strict=True)}


CONFIGS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)


def config_terms(p: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(8,)`` log w(h) and ``(8,)`` log q(h | x) at every configuration h."""
    log_prior = dist.Bernoulli(logits=p["a"]).log_prob(CONFIGS).sum(-1)
    mean = CONFIGS @ p["W"].T + p["c"]
    log_lik = dist.Normal(mean, 1.0).log_prob(x).sum(-1)
    logits = p["U"] @ x + p["d"]
    log_q = dist.Bernoulli(logits=logits).log_prob(CONFIGS).sum(-1)
    return log_prior + log_lik - log_q, log_q


def tuples(k: int) -> torch.Tensor:
    """``(8^k, k)`` every k-tuple of configuration indices."""
    return torch.tensor(list(itertools.product(range(8), repeat=k)))


def exact(p: dict[str, torch.Tensor], x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Exact expectations over all k-tuples: ``bound`` E[log (1/k) Σ w_i] (differentiable in
    every parameter; its θ-gradient is also wake-θ's expected gradient, since the draws do not
    depend on θ) and ``wake_phi`` E[Σ w̃_i log q(h_i)] with the probabilities and the normalized
    weights held constant (its φ-gradient is wake-φ's expected gradient)."""
    lw, lq = config_terms(p, x)
    idx = tuples(k)
    lw_t, lq_t = lw[idx], lq[idx]  # (8^k, k)
    prob = lq_t.sum(-1).exp()
    bound_t = lw_t.logsumexp(-1) - math.log(k)
    snis = torch.softmax(lw_t.detach(), -1)
    return {
        "bound": (prob * bound_t).sum(),
        "wake_phi": (prob.detach() * (snis * lq_t).sum(-1)).sum(),
    }


def exact_grads(value: torch.Tensor, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flattened gradients of ``value`` for each parameter (zeros where it does not depend)."""
    grads = torch.autograd.grad(value, [p[n] for n in NAMES], retain_graph=True, allow_unused=True)
    return {
        n: (torch.zeros_like(p[n]) if g is None else g).reshape(-1)
        for n, g in zip(NAMES, grads, strict=True)
    }


def within(
    rows: dict[str, torch.Tensor], target: dict[str, torch.Tensor], names=NAMES, z: float = 4.0
):
    """Per parameter element: (the largest |mean − target| / s.e., its name) over ``names``."""
    worst = (0.0, "")
    for n in names:
        g = rows[n]
        se = g.std(0) / math.sqrt(g.shape[0])
        ratio = float(((g.mean(0) - target[n]).abs() / se).max())
        worst = max(worst, (ratio, n))
    return worst


def small_digits(digits: DataSplits) -> DataSplits:
    """400 training digits (dynamically binarized) and the validation and test splits: a few
    seconds' training of a small sigmoid belief net."""
    return DataSplits(
        "digits", Split(digits.train.x[:400], None, "dynamic"), digits.val, digits.test
    )


def trained_sbn(digits: DataSplits, objective: str, **sbn_kw: Any) -> Any:
    """A 30-unit sigmoid belief net trained 3 epochs on :func:`small_digits` with ``objective``
    (4 particles where it takes them); asserts its validation ELBO rose by more than 4 s.e."""
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet(latent_sizes=(30,), **sbn_kw)
    particles = {} if objective == "elbo" else {"num_particles": 4}
    res = pvae.fit(
        sbn,
        small_digits(digits),
        objective=objective,
        **particles,
        epochs=3,
        batch_size=32,
        lr=1e-2,
        curve_ks=(2,),
        curve_every=100,
        progress=False,
        device="cpu",
    )
    first, last = res.history[0]["val_elbo"], res.history[-1]["val_elbo"]
    se = res.history[-1]["val_elbo_se"]
    assert last > first + 4 * se, (first, last, se)
    return sbn, res
