"""Enumerated discrete sites in log p(x), the bounds and the ELBO (issue 24, item 2), on a model
whose log p(x) is known in closed form: a class y ~ Cat(π), z ~ N(0, I), x | y, z ~
N(W z + b_y, σ² I), so p(x) = Σ_y π_y N(x; b_y, W Wᵀ + σ² I). Its exact guide is closed form too:
q(y | x) = p(y | x) ∝ π_y N(x; b_y, C) and q(z | x, y) = p(z | x, y) = N(Σ Wᵀ (x − b_y) / σ², Σ)
with Σ = (I + Wᵀ W / σ²)⁻¹. With it every importance weight is p(x) exactly; with a perturbed
guide the estimate must lie within 4 s.e. of the truth."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pvae

K, D, LATENT = 3, 4, 2


class Mixture(nn.Module):
    """The closed-form model; ``enumerate``: the guide enumerates y (else it samples it);
    ``perturb``: how far the guide is from the exact posterior (0: exact); ``flatten``: q(y | x)
    tempered towards uniform (0: exact, 1: uniform)."""

    def __init__(self, enumerate: bool = True, perturb: float = 0.0, flatten: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(D, LATENT, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(3 * torch.randn(K, D, generator=g, dtype=torch.float64))
        self.logits = nn.Parameter(torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64))
        self.sigma = 0.7
        self.enumerate = enumerate
        self.perturb = perturb
        self.flatten = flatten

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.w @ self.w.T + self.sigma**2 * torch.eye(D, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)  # batch (K,)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        log_pi = self.logits.log_softmax(-1)
        return (log_pi + self.marginal().log_prob(x.unsqueeze(-2))).logsumexp(-1)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.logits))
            z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
            loc = z @ self.w.T + self.b[y]
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        eye = torch.eye(LATENT, dtype=torch.float64)
        cov = torch.linalg.inv(eye + self.w.T @ self.w / self.sigma**2)
        a = cov @ self.w.T / self.sigma**2
        logits = self.logits.log_softmax(-1) + self.marginal().log_prob(x.unsqueeze(-2))
        shift = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) * self.perturb
        infer = {"enumerate": "parallel"} if self.enumerate else {}
        with pyro.plate("data", x.shape[0]):
            q_y = dist.Categorical(logits=(1 - self.flatten) * logits.detach() + shift)
            y = pyro.sample("y", q_y, infer=infer)
            loc = (x - self.b[y]) @ a.T * (1 + self.perturb) + 0.3 * self.perturb
            tril = torch.linalg.cholesky(cov) * (1 + self.perturb)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))


def _data(n: int = 6) -> torch.Tensor:
    m = Mixture()
    g = torch.Generator().manual_seed(1)
    y = torch.randint(K, (n,), generator=g)
    z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return z @ m.w.T + m.b[y] + m.sigma * torch.randn(n, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 2, 17])
def test_exact_guide_gives_log_px_at_every_k(k):
    m, x = Mixture(), _data()
    truth = m.exact_log_px(x).detach()
    est = pvae.log_px(m, x, k=k, seed=0)
    assert torch.allclose(est.log_px, truth, atol=1e-6, rtol=0), (est.log_px, truth)
    if k > 1:  # every weight is p(x): no Monte Carlo error, all draws effective
        assert float(est.se.max()) < 1e-6, est.se
        assert torch.allclose(est.ess, torch.full_like(est.ess, float(k)), atol=1e-6)


def test_exact_guide_elbo_and_bounds_equal_log_px():
    m, x = Mixture(), _data()
    truth = m.exact_log_px(x).detach()
    e = pvae.evaluate_elbo(m, x, num_samples=3)
    assert torch.allclose(e.elbo, truth, atol=1e-6, rtol=0), (e.elbo, truth)
    assert not e.analytic_kl
    assert float(e.se.max()) < 1e-6
    ladder = pvae.bounds(m, x, ks=(1, 4), seed=0)
    for kk in (1, 4):
        assert abs(ladder.iwae[kk]["mean"] - float(truth.mean())) < 1e-6, ladder.iwae


def test_perturbed_guide_within_four_standard_errors():
    m, x = Mixture(perturb=0.4), _data()
    truth = m.exact_log_px(x).detach()
    est = pvae.log_px(m, x, k=2000, seed=0)
    z = (est.log_px - truth) / est.se
    assert float(est.se.min()) > 0, est.se
    assert float(z.abs().max()) < 4, (est.log_px, truth, est.se)
    # The adaptive mode draws more where the s.e. is above target, on the same weights.
    first = pvae.log_px(m, x, k=100, seed=0)
    more = pvae.log_px(m, x, k=100, seed=0, target_se=0.02, max_k=1600)
    assert bool((more.se < first.se).all()), (first.se, more.se)
    assert float(((more.log_px - truth) / more.se).abs().max()) < 4, (more.log_px, truth)
    # The ELBO of a worse guide is below log p(x) by more than its Monte Carlo error.
    e = pvae.evaluate_elbo(m, x, num_samples=200)
    assert bool((e.elbo + 4 * e.se < truth).all()), (e.elbo, e.se, truth)


def test_enumerating_y_lowers_the_standard_error_at_equal_k():
    """A guide with a slightly wrong q(z | x, y) and a poor q(y | x) (tempered 90% towards
    uniform, as early in training): the same pair with y enumerated and with y sampled. At
    equal k the enumerated estimator evaluates the model K times per draw; the sampled one at
    K·k draws (equal cost) is printed beside it."""
    x = _data(20)
    k = 50
    pair = {"perturb": 0.1, "flatten": 0.9}
    enum = pvae.log_px(Mixture(enumerate=True, **pair), x, k=k, seed=0)
    sampled = pvae.log_px(Mixture(enumerate=False, **pair), x, k=k, seed=0)
    costly = pvae.log_px(Mixture(enumerate=False, **pair), x, k=K * k, seed=0)
    truth = Mixture().exact_log_px(x).detach()
    rms = lambda se: float(se.pow(2).mean().sqrt())  # noqa: E731
    msg = (
        f"k={k}: rms per-datapoint s.e. enumerated {rms(enum.se):.4f}, sampled y "
        f"{rms(sampled.se):.4f} (k={K * k}: {rms(costly.se):.4f}); mean log p(x) truth "
        f"{float(truth.mean()):.4f}, enumerated {float(enum.log_px.mean()):.4f}, sampled "
        f"{float(sampled.log_px.mean()):.4f}"
    )
    print(msg)
    assert rms(enum.se) < 0.75 * rms(sampled.se), msg  # about 1/√K expected here
    assert float(((enum.log_px - truth) / enum.se).abs().max()) < 4, msg


def test_ais_refuses_enumerated_sites_naming_the_site():
    m, x = Mixture(), _data(2)
    with pytest.raises(ValueError, match=r"ais: the guide's site 'y' is enumerated"):
        pvae.ais(m, x, steps=5)


def test_enumerated_site_in_a_nested_plate_is_refused_naming_it():
    class Inner(Mixture):
        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                with pyro.plate("parts", 2):
                    pyro.sample(
                        "y",
                        dist.Categorical(logits=x.new_zeros(K)),
                        infer={"enumerate": "parallel"},
                    )
                pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"site 'y' is enumerated inside plate 'parts'"):
        pvae.log_px(Inner(), _data(2), k=2)


def test_sequential_enumeration_is_refused_naming_the_site():
    class Sequential(Mixture):
        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample(
                    "y",
                    dist.Categorical(logits=x.new_zeros(K)),
                    infer={"enumerate": "sequential"},
                )
                pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"guide site 'y' is enumerated 'sequential'"):
        pvae.log_px(Sequential(), _data(2), k=2)


def test_site_enumerated_in_the_model_only_is_summed_out():
    """A mixture whose guide has no y: the model enumerates it; with q(z | x) = p(z | x) (the
    posterior mixture is not Gaussian, so use the prior as proposal and many draws)."""

    class ModelEnum(Mixture):
        def model(self, x):
            with pyro.plate("data", x.shape[0]):
                y = pyro.sample(
                    "y", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"}
                )
                z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))
                loc = z @ self.w.T + self.b[y]
                pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

        def guide(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x.new_zeros(LATENT), 1.0).to_event(1))

    m, x = ModelEnum(), _data()
    truth = m.exact_log_px(x).detach()
    est = pvae.log_px(m, x, k=4000, seed=0)
    z = (est.log_px - truth) / est.se
    assert float(z.abs().max()) < 4, (est.log_px, truth, est.se)
    assert math.isfinite(float(pvae.evaluate_elbo(m, x, num_samples=10).elbo.mean()))
