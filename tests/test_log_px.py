import itertools
import math
import sys
import types
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.evaluation import _psis
from pvae.evaluation._weights import bytes_per_draw, plan, resolve

MODEL = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5, seed=0)


@pytest.fixture
def x():
    return MODEL.sample(20)


def test_exact_posterior_gives_log_px_for_every_draw(x):
    vae = MODEL.vae()
    exact = MODEL.log_px(x)
    est = pvae.log_px(vae, x, k=50)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-10)
    assert float(est.se.max()) < 1e-6 and torch.allclose(est.ess, torch.full_like(est.ess, 50.0))
    assert bool((est.khat == -math.inf).all())  # bounded weights
    elbo = pvae.evaluate_elbo(vae, x, num_samples=7, analytic_kl=False)
    torch.testing.assert_close(elbo.elbo, exact, rtol=0, atol=1e-10)
    assert float(elbo.se.max()) < 1e-6  # zero variance
    ladder = pvae.bounds(vae, x, ks=(1, 10, 100))
    for rung in ladder.iwae.values():
        assert rung["mean"] == pytest.approx(float(exact.mean()), abs=1e-9)
    # Only the analytic-KL ELBO's reconstruction term is Monte Carlo here.
    assert abs(ladder.gap["mean"]) < 4 * ladder.gap["se"]


def test_bound_ladder_orders_and_converges_with_a_wrong_guide(x):
    vae = MODEL.vae(loc_shift=0.5, scale_factor=1.5)
    exact = float(MODEL.log_px(x).mean())
    ladder = pvae.bounds(vae, x, ks=(1, 5, 50, 500, 5000))
    rungs = [ladder.iwae[k] for k in (1, 5, 50, 500, 5000)]
    for lo, hi in itertools.pairwise(rungs):
        assert hi["mean"] > lo["mean"] - 3 * math.hypot(lo["se"], hi["se"])  # increasing in k
    assert rungs[1]["mean"] - rungs[0]["mean"] > 1.0  # strictly, by a lot, for this guide
    for r in rungs:
        assert r["mean"] <= exact + 3 * r["se"]  # lower bounds
    top = rungs[-1]
    assert abs(top["mean"] - exact) < 4 * top["se"]  # converged within its own error
    assert ladder.elbo_analytic["mean"] == pytest.approx(
        rungs[0]["mean"], abs=4 * ladder.elbo_analytic["se"]
    )
    # The gap is KL(q(z|x) || p(z|x)) > 0, and recon - KL is the ELBO.
    assert ladder.gap["mean"] > 1.0
    assert ladder.recon["mean"] - ladder.kl["mean"] == pytest.approx(
        ladder.elbo_analytic["mean"], abs=1e-9
    )
    assert "IWAE k=5000" in ladder.table()


def test_reported_standard_error_matches_the_spread_over_repeats():
    vae = MODEL.vae(loc_shift=0.3, scale_factor=1.3)
    x = MODEL.sample(4)
    runs = []
    reported = []
    for seed in range(60):
        pyro.set_rng_seed(seed)
        est = pvae.log_px(vae, x, k=300, khat=False)
        runs.append(est.log_px)
        reported.append(est.se)
    empirical = torch.stack(runs).std(0)
    ratio = torch.stack(reported).mean(0) / empirical
    # 60 repeats estimate a standard deviation to about ±9%; allow ±35%.
    assert bool(((ratio > 0.65) & (ratio < 1.35)).all()), ratio


def test_pareto_khat_flags_a_mismatched_guide(x):
    good = pvae.log_px(MODEL.vae(scale_factor=1.2), x[:5], k=2000)
    bad = pvae.log_px(MODEL.vae(loc_shift=2.0, scale_factor=0.3), x[:5], k=2000)
    assert float(good.khat.max()) < 0.5
    assert float(bad.khat.min()) > 0.7
    assert bad.summary()["khat_frac_above_0.7"] == 1.0


def test_a_number_with_untrustworthy_weights_carries_its_warning(x):
    good = pvae.log_px(MODEL.vae(scale_factor=1.2), x[:5], k=2000)
    bad = pvae.log_px(MODEL.vae(loc_shift=2.0, scale_factor=0.3), x[:5], k=2000)
    assert good.warning is None and good.summary()["warning"] is None
    assert "WARNING" not in str(good) and "WARNING" not in repr(good)
    assert bad.unreliable_fraction == 1.0
    for text in (bad.warning, bad.summary()["warning"]):
        assert "100% of datapoints" in text and "unreliable" in text and "AIS" in text
    # Where a user looks at the number: print(est), the notebook's repr.
    for shown in (str(bad), repr(bad)):
        first, warning = shown.split("\n")
        assert f"{float(bad.log_px.mean()):.4f}" in first and warning.startswith("WARNING: PSIS")
    # No k̂ (k < 10 or khat=False): no warning either way.
    assert pvae.log_px(MODEL.vae(loc_shift=2.0), x[:5], k=5).warning is None


def test_adaptive_mode_draws_until_each_datapoint_meets_the_se_target(x):
    # An over-dispersed guide: k̂ < 0.5 everywhere, so the s.e. target alone decides the draws.
    exact = MODEL.log_px(x)
    est = pvae.log_px(MODEL.vae(scale_factor=1.2), x, k=100, seed=0, max_k=6400, target_se=0.01)
    rep = est.adaptive
    assert bool(rep.settled.all()) and float(est.se.max()) <= 0.01
    assert set(rep.k_used.tolist()) <= {100 * 2**j for j in range(7)}
    assert int(rep.k_used.max()) > 100 and rep.rounds > 1
    # Draws pooled over rounds are one importance sample: each datapoint within 4.5 of its
    # s.e. of the exact value (bias ~ se²/2 is negligible at se ≤ 0.01; 20 points, two-sided).
    assert float(((est.log_px - exact) / est.se).abs().max()) < 4.5
    assert "20/20 datapoints reached k̂ < 0.7 and s.e. ≤ 0.01" in str(est)
    assert est.summary()["adaptive"]["n_capped"] == 0


def test_adaptive_mode_reports_the_datapoints_that_stay_heavy_tailed(x):
    # k̂ is a property of the guide: more draws sharpen its estimate but cannot lower it, so
    # under a shifted, too narrow guide the datapoints run to the cap, and the report says so.
    est = pvae.log_px(MODEL.vae(loc_shift=1.0, scale_factor=0.5), x, k=100, seed=0, max_k=1600)
    rep = est.adaptive
    capped = ~rep.settled
    assert int(capped.sum()) >= 15 and bool((rep.k_used[capped] == 1600).all())
    assert f"{int(capped.sum())} stopped unsettled at the cap k = 1600" in str(est)
    assert est.warning is not None and est.summary()["adaptive"]["n_capped"] == int(capped.sum())
    # More draws never hurt: the mean estimate moves up toward log p(x) (it is a lower bound).
    fixed = pvae.log_px(MODEL.vae(loc_shift=1.0, scale_factor=0.5), x, k=100, seed=0)
    assert float(est.log_px.mean()) > float(fixed.log_px.mean())


def test_adaptive_mode_with_the_exact_posterior_stops_after_one_round(x):
    est = pvae.log_px(MODEL.vae(), x, k=50, max_k=800)
    assert est.adaptive.rounds == 1 and bool((est.adaptive.k_used == 50).all())
    torch.testing.assert_close(est.log_px, MODEL.log_px(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"k": 5, "max_k": 100}, "needs k ≥ 10"),
        ({"k": 100, "max_k": 50}, "max_k must be at least k=100"),
        ({"k": 100, "target_se": -1.0}, "target_se must be a positive number"),
        ({"k": 100, "max_k": 200, "khat": False}, "needs khat=True"),
    ],
)
def test_adaptive_mode_rejects_what_it_cannot_do(x, kw, message):
    with pytest.raises(ValueError, match=message):
        pvae.log_px(MODEL.vae(), x, **kw)


def test_stable_for_log_weights_far_below_minus_ten_thousand():
    far = MODEL.sample(3) + 150.0  # ~ -4e4 nats under the model
    exact = MODEL.log_px(far)
    assert float(exact.max()) < -1e4
    vae = MODEL.vae(loc_shift=0.2, scale_factor=1.2)
    est = pvae.log_px(vae, far, k=2000)
    assert bool(torch.isfinite(est.log_px).all())
    assert bool((est.log_px - exact).abs().lt(4 * est.se + 1e-6).all())
    # float32 model, float64 accumulation: still finite and close.
    est32 = pvae.log_px(MODEL.vae().float(), far.float(), k=100)
    torch.testing.assert_close(est32.log_px, exact, rtol=1e-5, atol=0)


def test_chunking_keeps_memory_under_budget_and_does_not_change_the_answer(x):
    vae = MODEL.vae(loc_shift=0.3)
    for budget in (200_000, 2_000_000, 1 << 30):
        target = resolve(vae, x, None, None)
        block, chunk = plan(target, 5000, budget, torch.float64, keep=True)
        per = bytes_per_draw(target, torch.float64)
        assert block * 5000 * 8 + block * chunk * per <= budget
    small = pvae.log_px(vae, x, k=5000, memory_budget=200_000)
    large = pvae.log_px(vae, x, k=5000)
    diff = (small.log_px - large.log_px).abs()
    assert bool((diff < 4 * torch.hypot(small.se, large.se)).all())


def test_mnist_sized_plan_at_k_5000_fits_a_small_budget():
    vae = pvae.VAE(pvae.priors.StandardNormal(50), data_shape=(1, 28, 28), hidden=(200, 200))
    x = torch.zeros(10_000, 1, 28, 28)
    budget = 256 << 20
    target = resolve(vae, x, None, None)
    block, chunk = plan(target, 5000, budget, torch.float64, keep=True)
    per = bytes_per_draw(target, torch.float64)
    assert block * 5000 * 8 + block * chunk * per <= budget and chunk >= 1


class LogNormalGuide(torch.nn.Module):
    def forward(self, x):
        return dist.LogNormal(torch.zeros(x.shape[0], 2), 1.0).to_event(1)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"k": 0}, ValueError, "k must be a positive integer, got 0"),
        ({"k": -5}, ValueError, "k must be a positive integer, got -5"),
        ({"k": 2.5}, TypeError, r"k must be a positive integer, got 2.5 \(float\)"),
        ({"k": "10"}, TypeError, "k must be a positive integer, got '10'"),
        ({"k": True}, TypeError, "k must be a positive integer, got True"),
        (
            {"k": 10, "memory_budget": 100},
            ValueError,
            "memory_budget=100 bytes is too small for one datapoint with k=10",
        ),
        ({"k": 10, "memory_budget": 1.5}, TypeError, "memory_budget must be an integer"),
    ],
)
def test_bad_arguments(kwargs, err, match, x):
    with pytest.raises(err, match=match):
        pvae.log_px(MODEL.vae(), x, **kwargs)


def test_empty_batch_and_mismatched_support(x):
    with pytest.raises(ValueError, match="x is empty"):
        pvae.log_px(MODEL.vae(), x[:0], k=10)
    vae = pvae.VAE(pvae.priors.StandardNormal(2), encoder=LogNormalGuide(), data_shape=(6,))
    with pytest.raises(ValueError, match="guide's distribution .*does not match the prior's"):
        pvae.log_px(vae, x.float(), k=10)
    with pytest.raises(ValueError, match="ks must be a non-empty sequence"):
        pvae.bounds(MODEL.vae(), x, ks=())


def test_khat_uses_arviz_stats_when_present(monkeypatch):
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.x announces its refactor
        import arviz

    def psislw(ary, r_eff=1.0, axis=-1):
        calls.append(ary.shape)
        return arviz.psislw(ary, reff=r_eff)

    fake = types.ModuleType("arviz_stats")
    fake.base = types.SimpleNamespace(array_stats=types.SimpleNamespace(psislw=psislw))
    monkeypatch.setitem(sys.modules, "arviz_stats", fake)
    monkeypatch.setitem(sys.modules, "arviz_stats.base", fake.base)
    lw = np.random.default_rng(0).normal(size=(3, 500))
    khat = _psis.pareto_khat(lw)
    assert calls == [(3, 500)] and khat.shape == (3,) and np.isfinite(khat).all()


def test_bf16_decoder_moves_log_px_by_less_than_its_standard_error():
    """The same draws (same seed) through a bfloat16 decoder: a systematic change, measured
    against the Monte Carlo s.e. of the float32 estimate (and not zero: bf16 was applied)."""
    torch.manual_seed(0)
    digits = pvae.datasets.load("digits", binarize="static").test.x[:100]
    vae = pvae.VAE(pvae.priors.StandardNormal(8), data_shape=digits.shape[1:])
    f32 = pvae.log_px(vae, digits, k=200, seed=0)
    bf16 = pvae.log_px(vae, digits, k=200, seed=0, precision="bf16")
    diff = abs(bf16.summary()["log_px"] - f32.summary()["log_px"])
    assert 0 < diff < f32.summary()["log_px_se"]


def test_progress_reports_every_chunk(monkeypatch, x):
    monkeypatch.setattr(sys.modules["pvae.evaluation.log_px"], "plan", lambda *a, **k: (8, 30))
    calls = []
    pvae.log_px(MODEL.vae(), x, k=70, progress=lambda done, total: calls.append((done, total)))
    # Blocks of 8, 8, 4 datapoints, chunks of 30, 30, 10 draws.
    assert [d for d, _ in calls] == list(
        itertools.accumulate(b * c for b in (8, 8, 4) for c in (30, 30, 10))
    )
    assert {t for _, t in calls} == {20 * 70}
    calls.clear()
    pvae.log_px(MODEL.vae(), x, k=10, max_k=40, progress=lambda d, t: calls.append((d, t)))
    assert len(calls) == 1 and calls[0][0] == calls[0][1] >= 20 * 10


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (
            {"precision": "fp8"},
            ValueError,
            "precision must be one of None, 'bf16', 'tf32', got 'fp8'",
        ),
        ({"precision": "tf32"}, ValueError, "precision='tf32' selects CUDA's TF32"),
        ({"compile": "yes"}, TypeError, "compile must be True or False, got 'yes'"),
        ({"progress": 3}, TypeError, "progress must be a callable"),
    ],
)
def test_bad_acceleration_arguments(kwargs, err, match, x):
    with pytest.raises(err, match=match):
        pvae.log_px(MODEL.vae(), x, k=10, **kwargs)


def test_precision_off_the_fused_path_says_so_and_changes_nothing(x, capsys):
    vae = MODEL.vae()
    a = pvae.log_px(vae, x, k=20, seed=1, fast=False)
    b = pvae.log_px(vae, x, k=20, seed=1, fast=False, precision="bf16")
    torch.testing.assert_close(a.log_px, b.log_px, rtol=0, atol=0)
    assert "apply to the fused path" in capsys.readouterr().err
