"""Exact answers for top-down inference (issue 23, item 4): the linear-Gaussian chain
z_2 -> z_1 -> x as a Ladder VAE whose precision-weighted merge holds the exact posterior
(pvae.LinearGaussianChain.ladder; the derivation is in its class docstring). Float64 throughout."""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch

import pvae

REF = pvae.LinearGaussianChain(data_dim=6, latent_dims=(3, 2), sigma1=0.6, sigma=0.5, seed=0)
X = REF.sample(20)


def _guide_joint(m, x):
    """The Gaussian q(z1, z2 | x) = q(z2 | x) q(z1 | z2, x) that the ladder's linear paths imply,
    over (z1, z2): z2 ~ N(m2, S2); z1 | z2 ~ N(K z2 + k, V1) with K, k read off the merge at
    z2 = 0 and z2 = the unit vectors (q's mean is affine in z2, its scale does not depend on z2)."""
    d2 = REF.latent_dims[1]
    with torch.no_grad():
        est = m.estimates(m.bottom_up(x))
        q2, _, _ = m.pair(1, est[1], None)
        m2, S2 = q2.base_dist.loc, torch.diag_embed(q2.base_dist.scale**2)
        basis = torch.cat([torch.zeros(1, d2), torch.eye(d2)]).double()
        cols = []
        for e in basis:
            q1, _, _ = m.pair(0, est[0], e.expand(x.shape[0], d2))
            cols.append(q1.base_dist.loc)
        k = cols[0]
        K = torch.stack([c - k for c in cols[1:]], -1)  # (N, d1, d2)
        V1 = torch.diag_embed(q1.base_dist.scale**2)
        loc = torch.cat([(K @ m2.unsqueeze(-1)).squeeze(-1) + k, m2], -1)
        cov = torch.cat(
            [
                torch.cat([K @ S2 @ K.mT + V1, K @ S2], -1),
                torch.cat([S2 @ K.mT, S2], -1),
            ],
            -2,
        )
    return loc, cov


def test_the_top_down_guide_holds_the_exact_posterior():
    exact = REF.posterior(X)
    loc, cov = _guide_joint(REF.ladder(), X)
    torch.testing.assert_close(loc, exact.loc, rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, exact.covariance_matrix, rtol=0, atol=1e-10)
    # Made wrong, it is not.
    loc, cov = _guide_joint(REF.ladder(loc_shift=0.3, scale_factor=1.4), X)
    assert float((loc - exact.loc).abs().max()) > 0.2
    assert float((cov - exact.covariance_matrix).abs().max()) > 0.05


def test_elbo_and_every_iwae_bound_equal_log_px_at_the_exact_parameters():
    m, exact = REF.ladder(), REF.log_px(X)
    # Every draw's log weight is log p(x) (the Monte Carlo ELBO; the closed-form KL's is only so
    # in expectation, tested below).
    elbo = pvae.evaluate_elbo(m, X, num_samples=7, analytic_kl=False)
    torch.testing.assert_close(elbo.elbo, exact, rtol=0, atol=1e-6)
    est = pvae.log_px(m, X, k=50)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-6)
    assert float(est.se.max()) < 1e-6
    ladder = pvae.bounds(m, X, ks=(1, 5, 50))
    for rung in ladder.iwae.values():
        assert rung["mean"] == pytest.approx(float(exact.mean()), abs=1e-6)
    # Pyro's own ELBO, one draw per datapoint: every draw's weight is log p(x).
    loss = pyro.infer.Trace_ELBO().loss(m.model, m.guide, X)
    assert -loss == pytest.approx(float(exact.sum()), abs=1e-6)


def _residual_ladder():
    """The chain under NVAE's residual merge, q(z1 | z2, x) = N(A z2 + a + f(x), v): with f(x) =
    E[z1 | x] − A E[z2 | x] − a and v the exact conditional variance it is right at z2 = E[z2 | x]
    but has slope A in z2 where the posterior's is v A / σ₁²: a close guide, not the posterior
    (the residual merge cannot scale μ_p, so no setting of its heads is)."""
    m = REF.ladder()
    m.merge = "residual"
    d1 = REF.latent_dims[0]
    pts = torch.cat([torch.zeros(1, REF.data_dim), torch.eye(REF.data_dim)]).double()
    loc = REF.posterior(pts).loc
    f = loc[:, :d1] - loc[:, d1:] @ REF.A.T - REF.a  # affine in x: f(0), f(e_i)
    ww = (REF.W * REF.W).sum(0)
    var1 = 1 / (ww / REF.sigma**2 + 1 / REF.sigma1**2)
    head = m.paths.q_heads[0].out
    with torch.no_grad():
        head.weight[:d1] = (f[1:] - f[0]).T
        head.bias[:d1] = f[0]
        head.bias[d1:] = torch.log(torch.expm1(var1.sqrt() / REF.sigma1))  # Δσ = sd / σ₁
    return m


@pytest.mark.parametrize("wrong", [dict(loc_shift=0.4, scale_factor=1.4), dict(merge="residual")])
def test_a_wrong_guide_the_ladder_rises_to_log_px_within_its_se(wrong):
    m = _residual_ladder() if "merge" in wrong else REF.ladder(**wrong)
    exact = float(REF.log_px(X).mean())
    ks = (1, 5, 50, 500, 5000)
    ladder = pvae.bounds(m, X, ks=ks, seed=0)
    rungs = [ladder.iwae[k] for k in ks]
    for lo, hi in itertools.pairwise(rungs):
        assert hi["mean"] > lo["mean"] - 3 * math.hypot(lo["se"], hi["se"]), rungs
    assert exact - rungs[0]["mean"] > 0.2  # ELBO < log p(x): the wrong guide costs nats
    assert rungs[1]["mean"] - rungs[0]["mean"] > 3 * math.hypot(rungs[0]["se"], rungs[1]["se"])
    for r in rungs:
        assert r["mean"] <= exact + 3 * r["se"]
    assert abs(rungs[-1]["mean"] - exact) < 4 * rungs[-1]["se"]
    est = pvae.log_px(m, X, k=5000, seed=1)
    z = (est.log_px - REF.log_px(X)) / est.se
    assert float(z.abs().max()) < 4.5, z


def test_the_closed_form_kl_elbo_is_unbiased_top_down():
    # q(z1 | z2, x) and p(z1 | z2) are conditioned on the same draw of z2: the closed-form KL
    # at z1 is the ELBO's term (it is not for a bottom-up guide, tests/test_hierarchical.py).
    m = REF.ladder(loc_shift=0.3, scale_factor=1.3)
    exact = REF.log_px(X)
    mc = pvae.evaluate_elbo(m, X, num_samples=400, analytic_kl=False)
    closed = pvae.evaluate_elbo(m, X, num_samples=400)
    assert float((exact - closed.elbo).min()) > 0  # a wrong guide: below log p(x)
    z = (closed.elbo - mc.elbo) / torch.hypot(closed.se, mc.se)
    assert float(z.abs().max()) < 4.5, z
    assert float((closed.elbo - mc.elbo).abs().min()) > 1e-6  # two estimators, not one


def test_posterior_means_are_the_exact_posterior_means_of_the_top_layer():
    means = REF.ladder().posterior_means(X)
    torch.testing.assert_close(means[1], REF.posterior(X).loc[:, 3:], rtol=0, atol=1e-10)
