import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pvae


def small_vae(d=6, latent=2):
    return pvae.VAE(pvae.priors.StandardNormal(latent), data_shape=(d,), hidden=(16,))


def test_pyro_elbo_equals_direct_log_weights_for_the_same_noise(float64):
    vae = small_vae()
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    q = vae.encode(x)
    z = q.rsample()
    log_w = vae.decode(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)
    assert -loss == pytest.approx(float(log_w.detach().sum()), rel=1e-12)


def test_plate_scales_a_minibatch_to_the_full_dataset(float64):
    vae = small_vae()
    x = torch.bernoulli(torch.full((4, 6), 0.4))
    pyro.set_rng_seed(1)
    unscaled = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    scaled = Trace_ELBO().loss(vae.model, vae.guide, x, size=1000, subsample=torch.arange(4))
    assert scaled == pytest.approx(unscaled * 1000 / 4, rel=1e-12)


def test_meanfield_and_monte_carlo_elbo_agree_in_expectation(float64):
    vae = small_vae()
    x = torch.bernoulli(torch.full((8, 6), 0.4))

    def estimates(cls):
        elbo = cls(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
        return torch.tensor([-elbo.loss(vae.model, vae.guide, x) for _ in range(100)])

    mc, mf = estimates(Trace_ELBO), estimates(TraceMeanField_ELBO)
    se = math.sqrt(mc.var() / len(mc) + mf.var() / len(mf))
    assert se > 0
    # Means agree within 4 standard errors; the analytic KL also lowers the variance.
    assert abs(float(mc.mean() - mf.mean())) < 4 * se
    assert mf.var() < mc.var()


def test_evaluate_elbo_is_unbiased_for_pyro_elbo(float64):
    vae = small_vae()
    x = torch.bernoulli(torch.full((8, 6), 0.4))
    s = 20000
    with torch.no_grad():  # spread of single-draw log weights → standard error of each estimate
        q = vae.encode(x)
        z = q.sample((s,))
        log_w = vae.decode(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)
    se_sum = float(log_w.var(0).sum().sqrt()) / math.sqrt(s)
    mc = pvae.evaluate_elbo(vae, x, num_samples=s, analytic_kl=False)
    analytic = pvae.evaluate_elbo(vae, x, num_samples=s, analytic_kl=True)
    pyro_elbo = -Trace_ELBO(num_particles=s, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x
    )
    assert analytic.analytic_kl and not mc.analytic_kl
    # Independent estimates of the same sum: differences within 4 combined standard errors.
    assert abs(float(mc.elbo.sum()) - pyro_elbo) < 4 * math.sqrt(2) * se_sum
    assert abs(float(analytic.elbo.sum()) - pyro_elbo) < 4 * math.sqrt(2) * se_sum


def test_two_models_in_one_session_do_not_share_parameters():
    a, b = small_vae(), small_vae()
    before = {k: v.clone() for k, v in b.state_dict().items()}
    pvae.fit(a, torch.bernoulli(torch.full((32, 6), 0.5)), epochs=2, progress=False, device="cpu")
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert len(pyro.get_param_store()) == 0


def test_vectorized_particles_train_with_ragged_batches():
    vae = small_vae()
    x = torch.bernoulli(torch.full((37, 6), 0.5))  # 37 = 2 × 16 + 5: a ragged last batch
    res = pvae.fit(
        vae,
        x,
        objective="elbo",
        num_particles=3,
        vectorize_particles=True,
        batch_size=16,
        epochs=2,
        progress=False,
        device="cpu",
    )
    assert res.final["step"] == 6 and math.isfinite(res.final["train_elbo"])


def test_decoder_that_does_not_fit_the_data_is_rejected():
    vae = pvae.VAE(pvae.priors.StandardNormal(2), decoder=pvae.nets.MLP(2, (5,)))
    with pytest.raises(ValueError, match=r"decoder output shape \(5,\) does not match .*\(6,\)"):
        pvae.fit(vae, torch.zeros(10, 6), epochs=1, progress=False, device="cpu")


def test_data_of_another_shape_is_rejected():
    vae = small_vae()
    with pytest.raises(ValueError, match=r"data shape \(7,\) does not match .* built for, \(6,\)"):
        pvae.fit(vae, torch.zeros(10, 7), epochs=1, progress=False, device="cpu")
