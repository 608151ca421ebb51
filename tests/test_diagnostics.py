import math

import pytest
import torch
from torch import nn

import pvae
from pvae import diagnostics as D


class Constant(nn.Module):
    """An encoder net that ignores x: q(z | x) = N(loc, scale²) for every x."""

    def __init__(self, loc, scale, latent=2):
        super().__init__()
        raw = math.log(math.expm1(scale))
        self.out = nn.Parameter(torch.tensor([loc] * latent + [raw] * latent))

    def forward(self, x):
        return self.out.expand(*x.shape[:-1], -1)


class SignOfFirst(nn.Module):
    """q(z | x) = N(±3, 0.1²): the sign of x's first coordinate picks the mode."""

    def forward(self, x):
        loc = 3.0 * torch.sign(x[..., :1]).expand(*x.shape[:-1], 2)
        raw = torch.full_like(loc, math.log(math.expm1(0.1)))
        return torch.cat([loc, raw], -1)


def vae_with(net):
    guide = pvae.guides.DiagonalNormal(net, 2, min_scale=0.0)
    return pvae.VAE(
        pvae.priors.StandardNormal(2), pvae.likelihoods.Gaussian(1.0), guide, data_shape=(3,)
    )


X = torch.randn(400, 3, generator=torch.Generator().manual_seed(0))


def test_guide_that_ignores_x_has_no_active_units_and_no_information():
    vae = vae_with(Constant(0.5, 0.7))
    with pytest.warns(UserWarning, match="posterior collapse: only 0 of 2 latent units"):
        au = D.active_units(vae, X)
    assert au.count == 0 and float(au.variance.max()) == 0.0
    mi, se = D.mutual_information(vae, X[:200], num_samples=2)
    assert mi == pytest.approx(0.0, abs=1e-9) and se == pytest.approx(0.0, abs=1e-9)


def test_exact_linear_gaussian_guide_has_active_units_and_information():
    m = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5)
    vae, x = m.vae(), m.sample(300)
    au = D.active_units(vae, x)
    assert au.count == 2
    # Cov_x E[z|x] = I - Σ for this model: the exact answer, up to sampling of x.
    torch.testing.assert_close(au.variance, 1 - m.post_var, rtol=0.2, atol=0)
    mi, se = D.mutual_information(vae, x, num_samples=4)
    assert 0.5 < mi < math.log(300) and se < 0.1
    # Per-dimension KL sums to the analytic KL of the whole latent.
    kl_d = D.kl_per_dimension(vae, x)
    total = pvae.evaluate_elbo(vae, x).kl.mean()
    assert float(kl_d.sum()) == pytest.approx(float(total), rel=1e-9)


def test_prior_equal_to_aggregate_posterior_shows_no_hole():
    vae = vae_with(Constant(0.0, 1.0))  # q(z|x) = N(0, I) = p(z) for every x
    torch.manual_seed(0)
    hole = D.prior_hole(vae, X[:100], num_samples=4000)
    assert hole.kl == pytest.approx(0.0, abs=1e-9)
    # By construction 1% of q's own draws fall below the threshold; q = p, so ≈ 1% of p's.
    assert abs(hole.hole_fraction - 0.01) < 4 * math.sqrt(0.01 * 0.99 / 4000)


def test_bimodal_aggregate_posterior_leaves_a_hole_in_the_prior():
    vae = vae_with(SignOfFirst())
    torch.manual_seed(0)
    hole = D.prior_hole(vae, X, num_samples=2000)
    assert hole.hole_fraction > 0.9 and hole.kl > 2.0


def test_kl_per_dimension_needs_factorized_parts():
    vae = pvae.VAE(pvae.priors.MixtureOfGaussians(2, 3), data_shape=(3,))
    with pytest.raises(ValueError, match="needs a factorized prior, got MixtureOfGaussians"):
        D.kl_per_dimension(vae, X)


def test_weight_diagnostics_lists_the_worst_datapoints():
    m = pvae.LinearGaussian()
    x = m.sample(30)
    est = pvae.log_px(m.vae(loc_shift=1.0, scale_factor=0.5), x, k=500)
    rep = D.weight_diagnostics(est, worst=5)
    ks = [w["khat"] for w in rep["worst"]]
    assert ks == sorted(ks, reverse=True) and len(ks) == 5
    assert ks[0] == pytest.approx(float(est.khat.max()))
    assert set(rep["khat_quantiles"]) == {"q50", "q90", "q99"}
