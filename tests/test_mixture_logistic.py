"""The discretized logistic mixture (PixelCNN++) likelihood and bits/dim: exact normalization over
every 8-bit level (joint over a pixel's coupled channels), agreement with the single discretized
logistic, bin masses against a numeric integral of the mixture density, stable extreme tails,
sampling frequencies against the mass function, and the bits/dim convention."""

import functools
import itertools
import math

import mpmath
import pytest
import torch
from scipy import integrate

import pvae
from pvae.config import Config, build_vae
from pvae.evaluation.bits import bits_per_dim, eight_bit
from pvae.likelihoods import LIKELIHOODS, DiscretizedLogistic, DiscretizedLogisticMixture

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def pixel_params(lik, channels, gen, spread=1.0, log_scale=(-5.0, 0.0)):
    """Parameters of one pixel, ``(P, 1, 1)``, log-scales uniform in ``log_scale``."""
    k = lik.n_mix
    params = spread * torch.randn(lik.param_shape((channels, 1, 1)), generator=gen)
    rest = params[k:].view(k, -1)  # per component: C locs, C log-scales, coefficients
    lo, hi = log_scale
    rest[:, channels : 2 * channels] = lo + (hi - lo) * torch.rand(k, channels, generator=gen)
    return params


def grid(channels):
    axes = torch.meshgrid(*[LEVELS] * channels, indexing="ij")
    return torch.stack(axes, -1).reshape(-1, channels, 1, 1)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("coupled", [True, False])
def test_mass_over_all_levels_sums_to_one(channels, coupled, float64):
    lik = DiscretizedLogisticMixture(n_mix=4, coupled=coupled)
    gen = torch.Generator().manual_seed(channels)
    x = grid(channels)
    for spread, scales in [(1.0, (-7.0, 0.0)), (4.0, (-3.0, 2.0)), (0.1, (-7.0, -6.0))]:
        params = pixel_params(lik, channels, gen, spread, scales)
        total = lik(params, 3).log_prob(x).exp().sum()
        assert float(total) == pytest.approx(1.0, abs=1e-9)


def ref_log_mass(x, loc, log_scale):
    """log P(level x) written plainly: a CDF difference taken in the tail it lies in."""
    s, half = log_scale.clamp_min(-7.0).exp(), 0.5 / 255
    up, lo = (x - loc + half) / s, (x - loc - half) / s
    mid = torch.where(
        x > loc, torch.sigmoid(-lo) - torch.sigmoid(-up), torch.sigmoid(up) - torch.sigmoid(lo)
    )
    mass = torch.where(x == 0, torch.sigmoid(up), torch.where(x == 1, torch.sigmoid(-lo), mid))
    return mass.log()


def test_rgb_coupling_is_pixelcnn_plus_plus(float64):
    """Three coupled channels against PixelCNN++'s formula written out with the single
    discretized logistic: μ_G + a·x_R and μ_B + b·x_R + c·x_G within each component."""
    lik = DiscretizedLogisticMixture(n_mix=3)
    gen = torch.Generator().manual_seed(7)
    params = 2 * torch.randn(5, *lik.param_shape((3, 2, 2)), generator=gen)
    x = torch.randint(0, 256, (5, 3, 2, 2), generator=gen) / 255
    x[0, :, 0, 0], x[1, :, 1, 1] = 0.0, 1.0
    rest = params[:, 3:].unflatten(1, (3, 9))  # (5, K, 9, 2, 2): 3 locs, 3 log-scales, a, b, c
    a, b, c = torch.tanh(rest[:, :, 6:]).unbind(2)
    r, g, bl = (x[:, None, i] for i in range(3))
    locs = torch.stack(
        [
            torch.sigmoid(rest[:, :, 0]),
            torch.sigmoid(rest[:, :, 1]) + a * r,
            torch.sigmoid(rest[:, :, 2]) + b * r + c * g,
        ],
        2,
    )
    per_channel = [
        ref_log_mass(v, locs[:, :, i], rest[:, :, 3 + i]) for i, v in enumerate((r, g, bl))
    ]
    log_pi = torch.log_softmax(params[:, :3], 1)
    want = torch.logsumexp(log_pi + sum(per_channel), 1).sum((-2, -1))
    torch.testing.assert_close(lik(params, 3).log_prob(x), want, rtol=0, atol=1e-10)


def test_vector_data_is_one_channel_and_sums_to_one(float64):
    lik = DiscretizedLogisticMixture(n_mix=5)
    assert lik.param_shape((4,)) == (15, 4)
    params = torch.randn(15, 4, generator=torch.Generator().manual_seed(3))
    d = lik(params, 1)
    assert d.event_shape == (4,) and d.batch_shape == ()
    per_dim = d.log_prob(LEVELS[:, None].expand(256, 4).contiguous())  # sums the 4 dims' logs
    one = lik(params[:, :1], 1).log_prob(LEVELS[:, None]).exp().sum()
    assert float(one) == pytest.approx(1.0, abs=1e-9) and per_dim.shape == (256,)


@pytest.mark.parametrize("shape", [(3, 4, 5), (6,)])
def test_one_component_uncoupled_is_the_discretized_logistic(shape, float64):
    lik = DiscretizedLogisticMixture(n_mix=1, coupled=False)
    gen = torch.Generator().manual_seed(1)
    params = 3 * torch.randn(7, *lik.param_shape(shape), generator=gen)
    x = torch.randint(0, 256, (7, *shape), generator=gen) / 255
    x.view(-1)[:10], x.view(-1)[10:20] = 0.0, 1.0  # the edge bins
    single = params[:, 1:].reshape(7, 2, *shape)  # drop the one logit: (loc, log-scale) channels
    ours, theirs = lik(params, len(shape)), DiscretizedLogistic()(single, len(shape))
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.mean, theirs.mean, rtol=0, atol=1e-12)


def logistic_pdf(y, loc, scale):
    t = math.exp(-abs(y - loc) / scale)
    return t / (scale * (1 + t) ** 2)


def bin_integral(f, level, locs):
    """∫ f over the bin of ``level`` (the edge bins out to ±∞) by adaptive quadrature, split at
    the components' locations inside it so that no peak is missed."""
    half = 0.5 / 255
    lo = -math.inf if level == 0 else level / 255 - half
    hi = math.inf if level == 255 else level / 255 + half
    cuts = [lo, *sorted(m for m in locs if lo < m < hi), hi]
    return sum(
        integrate.quad(f, a, b, epsabs=1e-15, epsrel=1e-11, limit=200)[0]
        for a, b in itertools.pairwise(cuts)
    )


def test_bin_masses_match_a_numeric_integral_of_the_mixture_density(float64):
    lik = DiscretizedLogisticMixture(n_mix=3, coupled=False)
    params = pixel_params(lik, 1, torch.Generator().manual_seed(2), 1.5, (-4.0, -1.5))
    d = lik(params, 3)
    weights = torch.softmax(params[:3, 0, 0], 0).tolist()
    rest = params[3:, 0, 0].view(3, 2)
    comps = [(float(torch.sigmoid(m)), float(s.exp())) for m, s in rest]

    def density(y):
        return sum(w * logistic_pdf(y, m, s) for w, (m, s) in zip(weights, comps, strict=True))

    levels = [0, 1, 2, 50, 100, 128, 200, 254, 255]
    got = d.log_prob(torch.tensor(levels, dtype=torch.float64)[:, None, None, None] / 255).exp()
    for level, p in zip(levels, got.tolist(), strict=True):
        want = bin_integral(density, level, [m for m, _ in comps])
        assert p == pytest.approx(want, rel=1e-7, abs=1e-14), level


def test_coupled_channels_match_the_conditional_integrals(float64):
    """P(x1, x2) = Σ_k π_k ∫_{bin x1} f(·; μ_k1, s_k1) ∫_{bin x2} f(·; μ_k2 + a_k x1, s_k2)."""
    lik = DiscretizedLogisticMixture(n_mix=2)
    params = pixel_params(lik, 2, torch.Generator().manual_seed(4), 1.5, (-4.0, -1.5))
    weights = torch.softmax(params[:2, 0, 0], 0).tolist()
    rest = params[2:, 0, 0].view(2, 5)  # loc1, loc2, log-scale1, log-scale2, coefficient
    d = lik(params, 3)
    for l1, l2 in [(0, 0), (30, 200), (128, 127), (255, 3), (77, 255)]:
        want = 0.0
        for w, (m1, m2, s1, s2, a) in zip(weights, rest.tolist(), strict=True):
            m1, m2 = 1 / (1 + math.exp(-m1)), 1 / (1 + math.exp(-m2)) + math.tanh(a) * l1 / 255
            s1, s2 = math.exp(s1), math.exp(s2)
            p1 = bin_integral(lambda y, m=m1, s=s1: logistic_pdf(y, m, s), l1, [m1])
            p2 = bin_integral(lambda y, m=m2, s=s2: logistic_pdf(y, m, s), l2, [m2])
            want += w * p1 * p2
        x = torch.tensor([l1, l2], dtype=torch.float64).view(1, 2, 1, 1) / 255
        assert float(d.log_prob(x).exp()) == pytest.approx(want, rel=1e-7, abs=1e-14), (l1, l2)


def logistic_cdf(y, loc, scale):
    return 1 / (1 + mpmath.exp(-(y - loc) / scale))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_tails_are_exact_in_log_space(dtype):
    """Masses far below the smallest float (a sharp logistic, a level far away) keep an accurate
    log, checked against 50-digit arithmetic; gradients stay finite."""
    lik = DiscretizedLogisticMixture(n_mix=1, coupled=False)
    mpmath.mp.dps = 50
    for loc_raw, log_s, level in [
        (-3.0, -7.0, 200),
        (2.0, -7.0, 1),
        (0.0, -6.0, 255),
        (0.0, -7.0, 0),
    ]:
        params = torch.tensor([0.0, loc_raw, log_s], dtype=dtype).view(3, 1, 1).requires_grad_()
        x = torch.tensor(level / 255, dtype=dtype).view(1, 1, 1)
        lp = lik(params, 3).log_prob(x)
        lp.backward()
        m, s = 1 / (1 + mpmath.exp(-loc_raw)), mpmath.exp(log_s)
        lo = mpmath.mpf(level) / 255 - mpmath.mpf(1) / 510
        hi = mpmath.mpf(level) / 255 + mpmath.mpf(1) / 510
        cdf = functools.partial(logistic_cdf, loc=m, scale=s)
        sf = functools.partial(logistic_cdf, loc=m, scale=-s)  # 1 - cdf, with no cancellation
        if level in (0, 255):
            mass = cdf(hi) if level == 0 else sf(lo)
        else:
            mass = sf(lo) - sf(hi) if lo > m else cdf(hi) - cdf(lo)
        want = float(mpmath.log(mass))
        tol = 1e-4 if dtype == torch.float32 else 1e-9
        assert float(lp.detach()) == pytest.approx(want, rel=tol, abs=tol), (loc_raw, log_s, level)
        assert bool(torch.isfinite(params.grad).all())


def test_samples_follow_the_mass_function(float64):
    """Joint frequencies of a coupled two-channel pixel's samples against the exact masses, within
    5 binomial standard errors."""
    lik = DiscretizedLogisticMixture(n_mix=3)
    params = pixel_params(lik, 2, torch.Generator().manual_seed(5), 1.5, (-3.0, -1.0))
    d = lik(params, 3)
    torch.manual_seed(0)
    n = 40_000
    s = d.sample((n,))
    assert s.shape == (n, 2, 1, 1) and bool(((s * 255 - (s * 255).round()).abs() < 1e-9).all())
    mass = d.log_prob(grid(2)).exp().view(256, 256)
    for a, b in [(64, 64), (128, 128), (128, 200), (200, 100)]:
        p = float(mass[:a, :b].sum())  # P(x1 < a/255, x2 < b/255)
        freq = float(((s[:, 0] < a / 255 - 1e-9) & (s[:, 1] < b / 255 - 1e-9)).double().mean())
        assert freq == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / n) + 1e-12), (a, b)


def test_mean_is_the_mixture_mean_away_from_the_edges(float64):
    lik = DiscretizedLogisticMixture(n_mix=2)
    params = pixel_params(lik, 2, torch.Generator().manual_seed(6), 0.3, (-4.5, -3.5))
    d = lik(params, 3)
    mass = d.log_prob(grid(2)).exp()
    exact = (mass[:, None] * grid(2)[..., 0, 0]).sum(0)  # E[x1], E[x2] over the 256² levels
    torch.testing.assert_close(d.mean[:, 0, 0], exact, rtol=0, atol=1e-6)


def test_registered_trains_and_is_reported_in_bits():
    assert LIKELIHOODS["discretized_logistic_mixture"] is DiscretizedLogisticMixture
    cfg = Config.from_dict(
        {
            "data": {"binarize": "none"},
            "model": {
                "latent_dim": 2,
                "likelihood": {"name": "discretized_logistic_mixture", "n_mix": 2},
                "encoder": {"name": "conv", "channels": [4]},
                "decoder": {"name": "conv", "channels": [4]},
            },
        }
    )
    vae = build_vae(cfg.model, (3, 4, 4))
    assert eight_bit(vae.likelihood) and not eight_bit(pvae.likelihoods.Bernoulli())
    x = torch.randint(0, 256, (8, 3, 4, 4), generator=torch.Generator().manual_seed(0)) / 255
    res = pvae.fit(vae, x, epochs=1, batch_size=4, progress=False, device="cpu")
    assert math.isfinite(res.final["train_elbo"])
    est = pvae.log_px(vae, x[:3], k=8)
    bpd = bits_per_dim(est.log_px, (3, 4, 4))
    torch.testing.assert_close(bpd, est.bits_per_dim)
    assert bool((bpd > 0).all())  # a mass function: log P(x) < 0


def test_bits_per_dim_convention():
    d = (3, 32, 32)
    # A uniform mass over the 256 levels is 8 bits per dimension.
    assert bits_per_dim(-math.prod(d) * math.log(256), d) == pytest.approx(8.0, rel=1e-12)
    # A density on (x + u)/256 ∈ [0, 1) (uniform dequantization): + log2(256) = 8 bits per dim.
    assert bits_per_dim(0.0, d, dequantization_scale=256) == pytest.approx(8.0, rel=1e-12)
    with pytest.raises(ValueError, match="dequantization_scale must be a number > 0"):
        bits_per_dim(0.0, d, dequantization_scale=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DiscretizedLogisticMixture(n_mix=0), "n_mix must be a positive integer, got 0"),
        (
            lambda: DiscretizedLogisticMixture(n_mix=2)(torch.zeros(7, 4, 4), 3),
            r"params must have n_mix·\(1 \+ 2C \+ C\(C-1\)/2\) entries on axis -3 .*got shape "
            r"\(7, 4, 4\)",
        ),
        (
            lambda: DiscretizedLogisticMixture().check_data(torch.tensor([[0.5001]])),
            "8-bit levels k/255 in \\[0, 1\\] for a discretized logistic mixture likelihood",
        ),
    ],
)
def test_bad_input_is_named(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
