"""The relaxed sigmoid belief net (Binary Concrete, Maddison et al. 2017; Jang et al. 2017): its
draws approach binary values as the temperature falls, at the rate the distribution implies; its
sites are reparameterized; it trains through pvae.fit; the discrete model with the same
parameters is then evaluated with the discrete guide."""

import math

import pyro.poutine as poutine
import pytest
import torch
from binary_toy import trained_sbn

import pvae
from pvae.sbn import SigmoidBeliefNet

N, UNITS = 4000, 10


def relaxed_draws(temperature: float) -> torch.Tensor:
    """σ of the guide's draws at logits 0 (encoder zeroed): ``N × UNITS`` values in (0, 1)."""
    sbn = SigmoidBeliefNet(latent_sizes=(UNITS,), relaxed=True, temperature=temperature)
    sbn.build((4,))
    with torch.no_grad():
        for p in sbn.encoders.parameters():
            p.zero_()
    torch.manual_seed(0)
    x = torch.zeros(N, 4, dtype=torch.float64)
    sbn.double()
    with torch.no_grad():
        trace = poutine.trace(sbn.guide).get_trace(x)
    site = trace.nodes["h1"]
    assert site["fn"].has_rsample
    return torch.sigmoid(site["value"]).reshape(-1)


@pytest.mark.parametrize(
    "temperature, expected",
    [
        # σ(logistic noise) is uniform on (0, 1): E min(s, 1 − s) = 1/4 exactly
        (1.0, 0.25),
        # small λ: E min(s, 1 − s) = 2λ ∫₀^∞ σ(−u) p(λu) du = λ log(2) / 2 · (1 + O(λ²)), p the
        # logistic density (p(0) = 1/4)
        (0.01, 0.01 * math.log(2) / 2),
    ],
)
def test_draws_approach_binary_values_as_the_temperature_falls(temperature, expected):
    s = relaxed_draws(temperature)
    dist_to_binary = torch.minimum(s, 1 - s)
    se = float(dist_to_binary.std() / math.sqrt(dist_to_binary.numel()))
    assert abs(float(dist_to_binary.mean()) - expected) < 4 * se, (
        float(dist_to_binary.mean()),
        expected,
        se,
    )
    if temperature < 0.1:
        assert float((dist_to_binary < 1e-3).double().mean()) > 0.9


def test_temperatures_are_checked():
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0.0"):
        SigmoidBeliefNet(relaxed=True, temperature=0)
    with pytest.raises(ValueError, match="prior_temperature"):
        SigmoidBeliefNet(relaxed=True, prior_temperature=-1)
    with pytest.raises(ValueError, match="latent_sizes must be a non-empty sequence"):
        SigmoidBeliefNet(latent_sizes=())


def test_relaxed_sbn_trains_and_the_discrete_model_is_evaluated_with_the_discrete_guide(digits):
    sbn, _res = trained_sbn(digits, "elbo", relaxed=True, temperature=0.5)
    sbn.relaxed = False
    x = digits.test.observed()[:40]
    trace = poutine.trace(sbn.guide).get_trace(x)
    assert not trace.nodes["h1"]["fn"].has_rsample
    assert set(trace.nodes["h1"]["value"].unique().tolist()) <= {0.0, 1.0}
    est = pvae.log_px(sbn, x, k=100, seed=0)
    assert est.log_px.shape == (40,) and bool(torch.isfinite(est.log_px).all())
