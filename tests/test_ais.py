"""AIS and BDMC against exact answers: the HMC kernel's invariance, exact log p(x) with the exact
posterior as the guide, forward ≤ exact ≤ reverse on linear-Gaussian models (one and two layers,
a plain-Pyro pair), the fused energy against the trace energy, and argument checks.

Tolerances: a per-datapoint estimate's error is independent across datapoints, so the Monte Carlo
error of the mean error over N datapoints is estimated by ``_se`` (the sample standard deviation
of the per-datapoint errors over √N; valid for reverse AIS too, whose chains share a start and
whose within-datapoint s.e. is therefore optimistic). Bounds are checked to 3 such s.e. (a
one-sided 3σ test fails by chance ~0.1% of the time; seeds are fixed, so a pass is reproducible).
"""

import importlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.evaluation.energy import FusedEnergy, TraceEnergy, evaluate
from pvae.evaluation.hmc import Noise

# The module, whatever pvae.evaluation re-exports under the name `ais` (the function).
A = importlib.import_module("pvae.evaluation.ais")

ONE = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5, seed=0)
TWO = pvae.LinearGaussianChain(data_dim=6, latent_dims=(3, 2), seed=0)


def _se(err: torch.Tensor) -> float:
    return float(err.std() / math.sqrt(err.numel()))


# -- 1. the kernel ---------------------------------------------------------------------------------
def test_hmc_step_leaves_a_correlated_gaussian_invariant():
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=torch.float64)
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    p = torch.distributions.MultivariateNormal(mean, cov)
    prec = torch.linalg.inv(cov)

    def log_f_and_grad(z):
        return p.log_prob(z), -(z - mean) @ prec

    n = 4000
    z = p.sample((n,))
    probs = []
    for _ in range(5):
        z, prob = A.hmc_step(z, log_f_and_grad, 0.4, 5)
        probs.append(prob)
    prob = torch.stack(probs)
    assert bool(((prob >= 0) & (prob <= 1)).all()) and 0 < float(prob.mean()) <= 1
    assert float(prob.mean()) < 1  # real Metropolis corrections happened
    # Chains are independent and exactly distributed: s.e. of the mean √(Σ_ii / n); of the
    # covariance entry (i, j) √((Σ_ii Σ_jj + Σ_ij²) / n) (Gaussian fourth moments). 4 s.e. each.
    se_mean = (cov.diagonal() / n).sqrt()
    assert bool(((z.mean(0) - mean).abs() < 4 * se_mean).all())
    emp = torch.cov(z.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
    assert bool(((emp - cov).abs() < 4 * se_cov).all()), (emp, cov)


def test_seeded_draws_are_standard_normal_and_uniform_whatever_the_block():
    noise = Noise(7, torch.arange(40), 0)
    like = torch.zeros(50, 40, 25, dtype=torch.float64)
    m = torch.cat([noise.momentum(t, like).flatten() for t in range(1, 11)])
    u = torch.cat([noise.uniform(t, like, 1).flatten() for t in range(1, 101)])
    n, k = m.numel(), u.numel()
    # 4 s.e. each: mean 1/√n, variance √(2/n), fourth moment √(96/n); uniform mean √(1/(12k)).
    assert abs(float(m.mean())) < 4 / math.sqrt(n)
    assert abs(float(m.var()) - 1) < 4 * math.sqrt(2 / n)
    assert abs(float((m**4).mean()) - 3) < 4 * math.sqrt(96 / n)
    assert abs(float(u.mean()) - 0.5) < 4 / math.sqrt(12 * k) and float(u.min()) >= 0
    assert float(u.max()) < 1
    # A datapoint's draws do not depend on the block it is in.
    alone = Noise(7, torch.arange(5, 6), 0).momentum(3, like[:, :1])
    assert torch.equal(noise.momentum(3, like)[:, 5:6], alone)


def test_hmc_step_checks_leapfrog():
    with pytest.raises(ValueError, match="num_leapfrog must be a positive integer, got 0"):
        A.hmc_step(torch.zeros(3, 2), lambda z: (z.sum(-1), torch.ones_like(z)), 0.1, 0)


# -- 2. the exact posterior as the guide -----------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_exact_guide_gives_exact_log_px_at_any_number_of_steps(steps):
    x = ONE.sample(8)
    exact = ONE.log_px(x)
    for start_from_guide in (True, False):
        if start_from_guide:
            est = A.ais(ONE.vae(), x, steps=steps, chains=4)
        else:
            _, latents = A.simulate(ONE.vae(), 8, seed=1)
            est = A.reverse_ais(ONE.vae(), x, latents=latents, steps=steps, chains=4)
        # Every weight is p(x, z) / q(z | x) = p(x) exactly: only rounding error remains.
        torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-8)
        assert est.log_w.shape == (8, 4) and est.log_px.dtype == torch.float64
    s = est.summary()
    assert s["steps"] == steps and s["chains"] == 4 and "reverse" in str(est)


# -- 3. a wrong guide on the one-layer model -------------------------------------------------------
def test_forward_and_reverse_sandwich_exact_log_px_and_converge():
    # The guide's mean is 2-4 posterior s.d. off and its scale 0.6 of the posterior's.
    vae = ONE.vae(loc_shift=1.0, scale_factor=0.6)
    # 100 datapoints at 150 steps: the s.e. of 40 datapoints at 300 steps (0.025 and 0.027 nats
    # here, 0.029 and 0.026 there) for two thirds of the time, which goes to steps, not to data.
    x, latents = A.simulate(vae, 100, seed=0)
    exact = ONE.log_px(x)
    kw = {"chains": 8, "leapfrog": 5, "step_size": 0.25}
    errs = {}
    for steps in (10, 150):
        fwd = A.ais(vae, x, steps=steps, **kw)
        rev = A.reverse_ais(vae, x, latents=latents, steps=steps, **kw)
        lo, hi = fwd.log_px - exact, rev.log_px - exact
        assert float(lo.mean()) < 3 * _se(lo)  # lower bound
        assert float(hi.mean()) > -3 * _se(hi)  # upper bound
        errs[steps] = (lo, hi)
        assert 0 < float(fwd.accept.mean()) < 1 and fwd.step_size.shape == (100,)
    (lo10, hi10), (lo150, hi150) = errs[10], errs[150]
    # The error shrinks: at 10 steps both bounds are off by far more than their errors ...
    assert float(-lo10.mean()) > float(-lo150.mean()) + 3 * math.hypot(_se(lo10), _se(lo150))
    assert float(hi10.mean()) > float(hi150.mean()) + 3 * math.hypot(_se(hi10), _se(hi150))
    # ... and at 150 steps the estimates match log p(x) within 3 of their s.e.
    assert abs(float(lo150.mean())) < 3 * _se(lo150)
    assert abs(float(hi150.mean())) < 3 * _se(hi150)


def test_prior_start_converges_too():
    vae = ONE.vae(loc_shift=1.5, scale_factor=0.5)
    x = ONE.sample(40, seed=2)
    exact = ONE.log_px(x)
    est = A.ais(
        vae, x, steps=200, chains=8, leapfrog=5, step_size=0.25, start="prior", schedule="linear"
    )
    err = est.log_px - exact
    assert abs(float(err.mean())) < 3 * _se(err)
    assert est.start == "prior" and est.schedule == "linear"


# -- 4. the two-layer chain, through the trace path ------------------------------------------------
def test_two_layer_chain_through_traces():
    program = TWO.program(loc_shift=0.5, scale_factor=0.7)
    x, latents = A.simulate(program, 30, seed=0)
    assert set(latents) == {"z1", "z2"} and latents["z1"].shape == (30, 3)
    exact = TWO.log_px(x)
    exact_guide = A.ais(TWO.program(), x, steps=3, chains=2, leapfrog=2)
    torch.testing.assert_close(exact_guide.log_px, exact, rtol=0, atol=1e-8)
    kw = {"steps": 150, "chains": 8, "leapfrog": 5}
    lo = A.ais(program, x, **kw).log_px - exact
    hi = A.reverse_ais(program, x, latents=latents, **kw).log_px - exact
    iwae = pvae.log_px(program, x, k=8, seed=0).log_px - exact  # AIS with 1 step, in effect
    assert float(lo.mean()) < 3 * _se(lo) and float(hi.mean()) > -3 * _se(hi)
    assert abs(float(lo.mean())) < 3 * _se(lo) and abs(float(hi.mean())) < 3 * _se(hi)
    assert float(lo.mean()) > float(iwae.mean()) + 3 * math.hypot(_se(lo), _se(iwae))
    # Fewer steps: both bounds further out, so the BDMC gap shrinks toward 0 as steps grow.
    short = A.bdmc(program, n=30, steps=5, chains=8, leapfrog=5, seed=0)
    torch.testing.assert_close(short.x, x)  # the same simulated data (seeded)
    lo5, gap5, gap150 = short.forward.log_px - exact, short.gap, hi - lo
    assert float(-lo5.mean()) > float(-lo.mean()) + 3 * math.hypot(_se(lo5), _se(lo))
    assert float(gap5.mean()) > float(gap150.mean()) + 3 * math.hypot(_se(gap5), _se(gap150))
    assert float(gap150.mean()) > -3 * _se(gap150)


# -- 5. BDMC ---------------------------------------------------------------------------------------
def test_bdmc_gap_is_positive_and_shrinks():
    vae = ONE.vae(loc_shift=1.5, scale_factor=0.5)
    gaps = {}
    for steps in (5, 100):
        res = A.bdmc(vae, n=30, steps=steps, chains=8, leapfrog=5, seed=4)
        exact = ONE.log_px(res.x)
        gap = res.gap
        assert float(gap.mean()) > -3 * _se(gap)
        lo, hi = res.forward.log_px - exact, res.reverse.log_px - exact
        assert float(lo.mean()) < 3 * _se(lo) and float(hi.mean()) > -3 * _se(hi)
        gaps[steps] = gap
        s = res.summary()
        assert s["lower"] <= s["upper"] and s["gap"] == pytest.approx(float(gap.mean()))
        assert "BDMC" in str(res) and res.latents["z"].shape == (30, 2)
    assert float(gaps[5].mean()) > float(gaps[100].mean()) + 3 * math.hypot(
        _se(gaps[5]), _se(gaps[100])
    )


# -- 6. fused == trace, chunking, errors -----------------------------------------------------------
from test_zoo import make, tiny_data  # noqa: E402

ZOO = [
    {"prior": "standard_normal"},
    {"prior": "vamp"},
    {"prior": "mog"},
    {"prior": "flow"},
    {"prior": "learned_gaussian", "lik": "gaussian"},
    {"guide": "low_rank"},
]


def _energies(vae, x, start):
    out = []
    torch.manual_seed(1)
    u = torch.randn(3, x.shape[0], 2, dtype=torch.float64)
    for fast in (True, False):
        _, layout, energy = A._setup(vae, x, None, None, fast)
        assert isinstance(energy, FusedEnergy if fast else TraceEnergy)
        with pyro.validation_enabled(False):
            state = energy.prepare(x, {})
            out.append(evaluate(energy, layout, state, u, start))
    return out


@pytest.mark.parametrize("component", ZOO, ids=lambda c: "-".join(c.values()))
def test_fused_energy_equals_the_trace_energy(component, float64):
    vae = make(**component)
    x = tiny_data(5).double()
    for start in A.STARTS:
        fused, trace = _energies(vae, x, start)
        for a, b in zip(fused, trace, strict=True):  # log f₀, ℓ and both gradients
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    before = [p.grad for p in vae.parameters()]
    assert all(g is None for g in before)  # only the latents were differentiated
    fast = A.ais(vae, x, steps=4, chains=3, leapfrog=2, seed=5)
    slow = A.ais(vae, x, steps=4, chains=3, leapfrog=2, seed=5, fast=False)
    for f in ("log_px", "se", "accept", "step_size", "log_w"):
        torch.testing.assert_close(getattr(fast, f), getattr(slow, f), rtol=1e-9, atol=1e-9)
    assert all(p.grad is None for p in vae.parameters())


def test_results_do_not_depend_on_the_memory_budget():
    vae = ONE.vae(loc_shift=0.5)
    x = ONE.sample(7)
    target, layout, _ = A._setup(vae, x, None, None, None)
    with pytest.raises(ValueError, match="too small") as info:
        A._block_size(target, layout, 4, 1)
    small = int(str(info.value).split("at least ")[1].split(" bytes")[0])  # one datapoint
    assert A._block_size(target, layout, 4, small) == 1
    kw = {"steps": 6, "chains": 4, "leapfrog": 3, "seed": 2}
    state = torch.get_rng_state()
    for start in A.STARTS:
        a = A.ais(vae, x, memory_budget=small, start=start, **kw)
        b = A.ais(vae, x, start=start, **kw)
        torch.testing.assert_close(a.log_w, b.log_w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.step_size, b.step_size, rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded run leaves the global RNG alone
    with pytest.raises(ValueError, match=f"memory_budget={small - 1} bytes is too small"):
        A.ais(vae, x, memory_budget=small - 1, **kw)
    # seed=None draws from (and advances) the global generator.
    torch.manual_seed(3)
    c = A.ais(vae, x, seed=None, **{k: v for k, v in kw.items() if k != "seed"})
    torch.manual_seed(3)
    d = A.ais(vae, x, seed=None, **{k: v for k, v in kw.items() if k != "seed"})
    torch.testing.assert_close(c.log_w, d.log_w)


def _discrete_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c[:, None], 1.0).to_event(1), obs=x)


def _discrete_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("c", dist.Bernoulli(0.3))


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"steps": 0}, ValueError, "steps must be a positive integer, got 0"),
        ({"steps": 2.5}, TypeError, r"steps must be a positive integer, got 2.5 \(float\)"),
        ({"chains": -1}, ValueError, "chains must be a positive integer, got -1"),
        ({"leapfrog": True}, TypeError, "leapfrog must be a positive integer, got True"),
        ({"step_size": 0.0}, ValueError, "step_size must be a finite number > 0, got 0.0"),
        ({"target_accept": 1.0}, ValueError, r"target_accept must be in \(0, 1\), got 1.0"),
        ({"schedule": "cosine"}, ValueError, "unknown schedule 'cosine'; valid: linear, sigmoid"),
        ({"start": "posterior"}, ValueError, "unknown start 'posterior'; valid: guide, prior"),
        ({"schedule": 3}, TypeError, "schedule must be a string, got 3"),
        ({"seed": 1.5}, TypeError, "seed must be an integer or None, got 1.5"),
        ({"memory_budget": 1.5}, TypeError, "memory_budget must be an integer"),
        ({"distributed": "yes"}, TypeError, "distributed must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        A.ais(ONE.vae(), ONE.sample(3), **kwargs)


def test_discrete_latents_and_bad_latents_are_named():
    x = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="AIS needs continuous latents; site 'c' is discrete"):
        A.ais(_discrete_model, _discrete_guide, x, steps=2, chains=2)
    x = ONE.sample(3)
    with pytest.raises(ValueError, match="latents has no tensor for latent site 'z'"):
        A.reverse_ais(ONE.vae(), x, latents={}, steps=2, chains=2)
    with pytest.raises(ValueError, match=r"latents\['z'\] has shape \(5, 2\): expected one value"):
        A.reverse_ais(ONE.vae(), x, latents={"z": torch.zeros(5, 2)}, steps=2, chains=2)
    with pytest.raises(TypeError, match="latents must be a mapping"):
        A.reverse_ais(ONE.vae(), x, latents=[1], steps=2, chains=2)
    with pytest.raises(ValueError, match="must draw and return n=3 datapoints, got"):
        A.simulate(plain_model, 3, guide=make_guide(0, 1, 0, 0.5), kwargs={"n": 2})


# -- 7. a plain-Pyro pair with two latents, one of them positive -----------------------------------
W = torch.tensor([[1.0, 0.0], [0.5, 1.5], [0.0, -1.0]], dtype=torch.float64)
B = torch.tensor([0.2, -0.3, 1.0], dtype=torch.float64)
SIGMA = 0.5


def plain_model(x=None, n=None):
    n = x.shape[0] if x is not None else n
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        # s does not enter x: p(x) stays the linear-Gaussian marginal, and AIS must integrate the
        # positive latent out through its log-Jacobian exactly.
        pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5))
        return pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)


def make_guide(shift, scale_factor, s_loc, s_scale):
    post_prec = torch.eye(2, dtype=torch.float64) + W.T @ W / SIGMA**2
    post_cov = torch.linalg.inv(post_prec)

    def guide(x=None, n=None):
        with pyro.plate("data", x.shape[0]):
            loc = (x - B) @ W @ post_cov.T / SIGMA**2 + shift
            chol = torch.linalg.cholesky(post_cov) * scale_factor
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=chol))
            pyro.sample("s", dist.LogNormal(torch.tensor(s_loc, dtype=torch.float64), s_scale))

    return guide


def plain_log_px(x):
    cov = W @ W.T + SIGMA**2 * torch.eye(3, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(B, cov).log_prob(x)


def test_a_plain_pyro_pair_with_two_latents():
    x, latents = A.simulate(plain_model, 30, guide=make_guide(0, 1, 0, 0.5), kwargs={"n": 30})
    assert set(latents) == {"z", "s"} and bool((latents["s"] > 0).all())
    exact = plain_log_px(x)
    est = A.ais(plain_model, make_guide(0.0, 1.0, 0.0, 0.5), x, steps=3, chains=2, leapfrog=2)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-8)  # the exact posterior
    wrong = make_guide(0.8, 0.6, 0.6, 0.3)
    kw = {"chains": 8, "leapfrog": 5, "step_size": 0.2}
    short = A.ais(plain_model, wrong, x, steps=3, **kw).log_px - exact
    lo = A.ais(plain_model, wrong, x, steps=150, **kw).log_px - exact
    hi = A.reverse_ais(plain_model, wrong, x, latents=latents, steps=150, **kw).log_px - exact
    assert float(short.mean()) < float(lo.mean()) - 3 * math.hypot(_se(short), _se(lo))
    assert abs(float(lo.mean())) < 3 * _se(lo) and abs(float(hi.mean())) < 3 * _se(hi)


def test_the_bound_ladder_gains_ais_and_a_bdmc_sandwich():
    model = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5, seed=0)
    x = model.sample(30)
    exact = float(model.log_px(x).mean())
    vae = model.vae(loc_shift=0.5, scale_factor=0.7)
    ladder = pvae.bounds(vae, x, ks=(1, 100), seed=0, ais_steps=100, ais_chains=8, bdmc_n=30)
    a, b, top = ladder.ais, ladder.bdmc, ladder.iwae[100]
    # AIS is a lower bound far tighter than IWAE_100 under this narrow guide: within 4 of its
    # s.e. of exact, while IWAE_100 sits many of its own s.e. below.
    assert abs(a["log_px"] - exact) < 4 * a["log_px_se"] and a["steps"] == 100
    assert exact - top["mean"] > 4 * top["se"]
    # The sandwich on simulated data: lower ≤ upper within the gap's s.e.
    assert (
        b["n"] == 30 and b["gap"] > -3 * b["gap_se"] and b["lower"] <= b["upper"] + 3 * b["gap_se"]
    )
    table = ladder.table()
    assert "AIS T=100 C=8" in table and "BDMC on 30 datapoints simulated" in table
    assert ladder.to_dict()["ais"] == a
    fig = ladder.plot()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "AIS (T=100)" in labels
    with pytest.raises(ValueError, match="bdmc_n=5 needs ais_steps"):
        pvae.bounds(vae, x, ks=(1, 10), bdmc_n=5)
