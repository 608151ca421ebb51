"""Property tests over every component of the zoo (zuko-style): shapes, normalization, gradients,
save/load, device, and every prior × likelihood × guide combination end to end."""

import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pvae
from pvae.config import Config, build_vae
from pvae.guides import GUIDES
from pvae.likelihoods import LIKELIHOODS
from pvae.priors import PRIORS
from pvae.training import kl_weight

PRIOR_KW = {
    "standard_normal": {},
    "learned_gaussian": {},
    "mog": {"num_components": 3},
    "vamp": {"num_pseudo_inputs": 4},
    "flow": {"num_flows": 2, "hidden": [8]},
    "student_t": {"df": 3.0, "learn_df": True},
}
LIK_KW = {
    "bernoulli": {},
    "continuous_bernoulli": {},
    "gaussian": {"learn_scale": "per_dim"},
    "laplace": {"learn_scale": True},
    "discretized_logistic": {},
    "discretized_logistic_mixture": {"n_mix": 2},
    "categorical": {},
}
GUIDE_KW = {"diagonal": {}, "low_rank": {"rank": 1}, "iaf": {"num_flows": 1, "hidden": [8]}}
SHAPE = (1, 3, 3)


def make(prior="standard_normal", lik="bernoulli", guide="diagonal", latent=2):
    cfg = Config.from_dict(
        {
            # Only the model is built here; [data] says the data stay in [0, 1] so that every
            # likelihood is accepted (continuous_bernoulli is refused with binarized data).
            "data": {"binarize": "none"},
            "model": {
                "latent_dim": latent,
                "prior": {"name": prior, **PRIOR_KW[prior]},
                "likelihood": {"name": lik, **LIK_KW[lik]},
                "guide": {"name": guide, **GUIDE_KW[guide]},
                "encoder": {"hidden": [16]},
                "decoder": {"hidden": [16]},
            },
        }
    )
    return build_vae(cfg.model, SHAPE)


def tiny_data(n=12):
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=g)  # binary: valid for all


def test_registries_hold_the_documented_names():
    assert set(PRIORS) == set(PRIOR_KW) and set(LIKELIHOODS) == set(LIK_KW)
    assert set(GUIDES) == set(GUIDE_KW)


# -- priors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRIOR_KW))
def test_prior_is_a_normalized_density_with_the_right_shapes(name):
    prior = make(prior=name).prior
    with torch.no_grad():
        d = prior()
        assert d.event_shape == (2,) and d.batch_shape == ()
        z = d.sample((5,))
        assert z.shape == (5, 2) and d.log_prob(z).shape == (5,)
        side = torch.linspace(-30, 30, 1201)
        grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
        mass = float(d.log_prob(grid).exp().sum() * (side[1] - side[0]) ** 2)
    assert mass == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("name", sorted(PRIOR_KW))
def test_gradients_reach_every_prior_parameter(name):
    prior = make(prior=name).prior
    params = list(prior.parameters())
    if not params:
        pytest.skip(f"{name} has no parameters")
    d = prior()
    z = torch.randn(7, 2) * 0.5
    d.log_prob(z).sum().backward()
    for p in params:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
        assert float(p.grad.abs().sum()) > 0


# -- likelihoods ----------------------------------------------------------------------------------
def test_continuous_bernoulli_normalizes_near_half_and_at_the_edges(float64):
    lik = pvae.likelihoods.ContinuousBernoulli()
    x = torch.linspace(0, 1, 200_001)
    for logit in (-20.0, -3.0, -1e-4, 0.0, 1e-4, 2.0, 20.0):
        d = lik(torch.full((1,), logit), event_dim=0)
        mass = torch.trapezoid(d.log_prob(x[:, None]).exp().squeeze(-1), x)
        assert float(mass) == pytest.approx(1.0, abs=1e-4), logit
    # The constant C(λ) = 2 artanh(1 - 2λ) / (1 - 2λ), with C(1/2) = 2.
    for lam in (0.5, 0.5 + 1e-6, 0.1, 1e-6):
        d = torch.distributions.ContinuousBernoulli(probs=torch.tensor(lam))
        c = 2.0 if lam == 0.5 else 2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam)
        # log p(x=0) = log C + log(1-λ)
        assert float(d.log_prob(torch.tensor(0.0))) == pytest.approx(
            math.log(c) + math.log1p(-lam), abs=1e-6
        )


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_location_scale_likelihoods_integrate_to_one(name, float64):
    lik = LIKELIHOODS[name](scale=0.7, learn_scale=LIK_KW[name].get("learn_scale", False))
    lik.build((1,))
    x = torch.linspace(-15, 15, 30_001)[:, None]
    with torch.no_grad():
        dens = lik(torch.full((1,), 0.3), event_dim=1).log_prob(x).exp()
    assert float(torch.trapezoid(dens, x.squeeze(-1))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name", ["discretized_logistic", "categorical"])
def test_eight_bit_likelihoods_sum_to_one_over_the_levels(name, float64):
    lik = LIKELIHOODS[name]()
    levels = (torch.arange(256, dtype=torch.float64) / 255)[:, None]
    shape = lik.param_shape((1,))
    g = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 5.0):
        params = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
        if name == "discretized_logistic":
            params[1] = math.log(scale) - 3  # include very sharp and very flat logistics
        total = lik(params, event_dim=1).log_prob(levels).exp().sum()
        assert float(total) == pytest.approx(1.0, abs=1e-9)


def test_eight_bit_likelihoods_reject_data_off_the_levels():
    with pytest.raises(ValueError, match="must be 8-bit levels k/255 .*not multiples of 1/255"):
        pvae.likelihoods.DiscretizedLogistic().check_data(torch.tensor([[0.5001]]))
    with pytest.raises(ValueError, match=r"categorical likelihood, got values in \[-1"):
        pvae.likelihoods.Categorical256().check_data(torch.tensor([[-1.0]]))


@pytest.mark.parametrize("name", sorted(LIK_KW))
def test_likelihood_shapes_means_and_gradients(name):
    vae = make(lik=name)
    z = torch.randn(4, 5, 2)  # (draws, batch, D)
    x = tiny_data(5)
    params = vae.decoder(z)
    assert params.shape == (4, 5, *vae.likelihood.param_shape(SHAPE))
    d = vae.likelihood(params, 3)
    assert d.batch_shape == (4, 5) and d.event_shape == SHAPE
    lp = d.log_prob(x)
    torch.testing.assert_close(lp, vae.log_likelihood(z, x))
    assert vae.decode_mean(z).shape == (4, 5, *SHAPE)
    lp.sum().backward()
    for n, p in itertools.chain(vae.decoder.named_parameters(), vae.likelihood.named_parameters()):
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), n


# -- guides ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GUIDE_KW))
def test_guide_shapes_and_gradients(name):
    vae = make(guide=name)
    q = vae.encode(tiny_data(5))
    assert q.event_shape == (2,) and q.batch_shape == (5,)
    z = q.rsample((3,))
    assert z.shape == (3, 5, 2)
    (q.log_prob(z).sum() + z.sum()).backward()
    for n, p in vae.encoder.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), n


# -- whole models ---------------------------------------------------------------------------------
def _pairwise(*factors):
    """Every pair of levels of the factors ``(first, second, third)``, each first × second pair
    once, with the third's level (i + j) mod its size: for fixed i the j run over at least as many
    consecutive residues as the third has levels, as the i do for fixed j (checked below). The
    components meet in pairs (the prior and the guide decide the analytic KL, the likelihood alone
    its data and parameters, the objective its estimator with the guide and the prior): the full
    product adds no code path that a pair does not."""
    first, second, third = (list(f) for f in factors)
    rows = [
        (a, b, third[(i + j) % len(third)])
        for i, a in enumerate(first)
        for j, b in enumerate(second)
    ]
    for x, y in itertools.combinations(range(3), 2):  # strength 2, checked
        want = {(u, v) for u in (first, second, third)[x] for v in (first, second, third)[y]}
        assert {(r[x], r[y]) for r in rows} == want
    return rows


@pytest.mark.parametrize(
    ("prior", "lik", "guide"), _pairwise(sorted(PRIOR_KW), sorted(LIK_KW), sorted(GUIDE_KW))
)
def test_every_combination_trains_and_evaluates(prior, lik, guide, capsys):
    vae = make(prior, lik, guide)
    x = tiny_data()
    res = pvae.fit(vae, x, epochs=1, batch_size=4, progress=False, device="cpu")
    assert math.isfinite(res.final["train_elbo"])
    for n, p in vae.named_parameters():
        assert bool(torch.isfinite(p).all()), n
    est = pvae.log_px(vae, x[:3], k=20)
    assert bool(torch.isfinite(est.log_px).all())
    ladder = pvae.bounds(vae, x[:3], ks=(1, 20))
    assert ladder.iwae[20]["mean"] > ladder.iwae[1]["mean"] - 4 * ladder.iwae[1]["se"] - 1e-6


@pytest.mark.parametrize(
    ("prior", "guide", "objective"),
    _pairwise(sorted(PRIOR_KW), sorted(GUIDE_KW), ["elbo", "iwae"]),
)
def test_every_prior_and_guide_trains_with_the_other_objectives(prior, guide, objective):
    vae = make(prior, "bernoulli", guide)
    kw = {"num_particles": 3, "estimator": "dreg"} if objective == "iwae" else {}
    res = pvae.fit(
        vae,
        tiny_data(),
        objective=objective,
        epochs=1,
        batch_size=4,
        progress=False,
        device="cpu",
        **kw,
    )
    assert math.isfinite(res.final["train_elbo"])


def test_save_load_round_trip_rebuilds_the_same_model(tmp_path):
    for prior, lik, guide in [
        ("vamp", "gaussian", "iaf"),
        ("flow", "discretized_logistic", "low_rank"),
        ("mog", "categorical", "diagonal"),
    ]:
        a = make(prior, lik, guide)
        torch.save(a.state_dict(), tmp_path / "m.pt")
        torch.manual_seed(123)
        b = make(prior, lik, guide)
        b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
        x = tiny_data(4)
        pyro.set_rng_seed(0)
        la = pvae.log_px(a, x, k=10).log_px
        pyro.set_rng_seed(0)
        lb = pvae.log_px(b, x, k=10).log_px
        torch.testing.assert_close(la, lb)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("prior", sorted(PRIOR_KW))
def test_components_run_on_cuda(prior):
    vae = make(prior, "discretized_logistic", "iaf").to("cuda")
    x = tiny_data().cuda()
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    loss.backward()
    assert loss.device.type == "cuda" and math.isfinite(float(loss))
    assert bool(torch.isfinite(pvae.log_px(vae, x, k=10).log_px).all())


# -- KL regularizers and the analytic-KL notice ---------------------------------------------------
def test_meanfield_without_closed_form_kl_gives_one_notice(capsys):
    pvae.fit(make("mog"), tiny_data(), epochs=2, batch_size=4, progress=False, device="cpu")
    err = capsys.readouterr().err
    assert err.count("no closed-form KL") == 1 and "MixtureOfGaussians" in err
    pvae.fit(make("standard_normal"), tiny_data(), epochs=1, progress=False, device="cpu")
    assert "no closed-form KL" not in capsys.readouterr().err


def test_beta_scales_the_kl_term_exactly(float64):
    vae = make().double()
    x = tiny_data().double()
    vae.beta = 0.3
    pyro.set_rng_seed(0)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        q = vae.encode(x)
        z = q.rsample()
        expect = vae.log_likelihood(z, x) + 0.3 * (vae.prior().log_prob(z) - q.log_prob(z))
    assert -loss == pytest.approx(float(expect.sum()), rel=1e-10)


def test_free_bits_switch_the_kl_gradient_off_below_the_floor(float64):
    vae = make().double()
    x = tiny_data().double()
    vae.free_bits = 1e6  # far above any KL: the KL term is masked
    pyro.set_rng_seed(0)
    masked = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        q = vae.encode(x)
        recon = vae.log_likelihood(q.rsample(), x)
    assert -masked == pytest.approx(float(recon.sum()), rel=1e-10)
    vae.free_bits = 1e-9  # below: the full ELBO
    pyro.set_rng_seed(0)
    full = Trace_ELBO().loss(vae.model, vae.guide, x)
    vae.free_bits = 0.0
    pyro.set_rng_seed(0)
    assert full == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x), rel=1e-12)


def test_warmup_schedule_and_config():
    assert [kl_weight(s, 0.5, 4) for s in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert kl_weight(10, 2.0, 0) == 2.0
    cfg = pvae.load_config(
        None, ["train.beta=0.5", "train.warmup_steps=100", "train.free_bits=0.1"]
    )
    assert (cfg.train.beta, cfg.train.warmup_steps, cfg.train.free_bits) == (0.5, 100, 0.1)
    with pytest.raises(ValueError, match="IWAE bound has no separate KL term"):
        pvae.load_config(None, ["train.objective=iwae", "train.beta=0.5"])
    with pytest.raises(ValueError, match="train.warmup_steps must be an integer >= 0"):
        pvae.load_config(None, ["train.warmup_steps=-1"])
    with pytest.raises(ValueError, match="unknown keyword argument 'ranks' for model.guide"):
        build_vae(
            pvae.load_config(None, ["model.guide.name=low_rank", "model.guide.ranks=2"]).model,
            SHAPE,
        )
