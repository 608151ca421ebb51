"""HierarchicalVAE: shapes, Pyro's own routes (SVI, Predictive), the example config through the
CLI, and exact answers from a two-layer linear-Gaussian chain, through pvae's program and through
the same chain written in plain Pyro."""

import itertools
import json
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO
from svi_check import svi_trains_every_parameter
from torch import nn

import pvae
from pvae.cli import main
from pvae.config import build_vae, load_config
from pvae.objectives import IWAE

EXAMPLE = Path(__file__).parents[1] / "examples" / "configs" / "iwae-2layer.toml"
SHAPE = (1, 8, 8)


def small(prior=None, likelihood=None, dims=(4, 3), **kw):
    return pvae.HierarchicalVAE(
        dims, prior=prior, likelihood=likelihood, hidden=[[16]] * len(dims), data_shape=SHAPE, **kw
    )


def binary(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) > 0.5).float()


# -- structure ------------------------------------------------------------------------------------
def test_default_architecture_is_the_iwae_papers():
    m = pvae.HierarchicalVAE(data_shape=(1, 28, 28))
    assert m.latent_dims == (100, 50) and m.sites == ("z1", "z2")

    def widths(net):
        lin = [layer for layer in net.modules() if isinstance(layer, nn.Linear)]
        assert all(
            isinstance(a, nn.Tanh) for a in net.modules() if isinstance(a, nn.ReLU | nn.Tanh)
        )
        return [lin[0].in_features] + [layer.out_features for layer in lin]

    assert widths(m.encoders[0]) == [784, 200, 200, 2 * 100]
    assert widths(m.encoders[1]) == [100, 100, 100, 2 * 50]
    assert widths(m.conditionals[0]) == [50, 100, 100, 2 * 100]
    assert widths(m.decoder) == [100, 200, 200, 784]


@pytest.mark.parametrize("dims", [(5,), (4, 3), (6, 4, 2)])
def test_sites_and_shapes(dims):
    m = small(dims=dims)
    x = binary(7)
    guide = pyro.poutine.trace(m.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=guide)).get_trace(x)
    names = [f"z{i}" for i in range(1, len(dims) + 1)]

    def sites(tr):
        return [n for n, s in tr.nodes.items() if s["type"] == "sample" and n != "data"]

    assert sites(guide) == names
    assert sites(model) == [*names[::-1], "x"]
    for name, d in zip(names, dims, strict=True):
        assert guide.nodes[name]["value"].shape == (7, d)
        assert model.nodes[name]["fn"].event_shape == (d,)
    assert model.nodes["x"]["is_observed"] and torch.equal(model.nodes["x"]["value"], x)
    assert [t.shape for t in m.posterior_means(x)] == [(7, d) for d in dims]
    assert [t.shape for t in m.sample_latents(5)] == [(5, d) for d in dims]
    assert m.sample(5).shape == (5, *SHAPE) and set(m.sample(5).unique().tolist()) <= {0.0, 1.0}
    mean = m.sample(5, mean=True)
    assert mean.shape == (5, *SHAPE) and bool(((mean > 0) & (mean < 1)).all())
    assert m.decode_mean(m.posterior_means(x)[0]).shape == x.shape
    m.check_compatible(x)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\), but the HierarchicalVAE was built"):
        m.check_compatible(torch.zeros(2, 1, 4, 4))


def test_build_is_deferred_and_idempotent():
    m = pvae.HierarchicalVAE((4, 3), hidden=[[8], [8]])
    assert not m.is_built
    with pytest.raises(ValueError, match="not built"):
        m.model(binary(2))
    m.build(SHAPE).build(SHAPE)
    assert m.is_built and m.data_shape == SHAPE
    with pytest.raises(ValueError, match="does not match the shape"):
        m.build((1, 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"latent_dims": 4}, ValueError, "latent_dims must be a non-empty sequence"),
        ({"latent_dims": (4, 0)}, ValueError, "latent_dims entries must be a positive integer"),
        (
            {"prior": pvae.priors.StandardNormal(4)},
            ValueError,
            r"the prior is over z_L, the top layer of 3 dimensions .* has latent_dim=4",
        ),
        ({"prior": object()}, TypeError, "prior must be a pvae.priors.Prior"),
        (
            {"hidden": [[8]]},
            ValueError,
            r"one sequence of hidden widths per stochastic layer \(2\)",
        ),
        ({"hidden": [8, 8]}, ValueError, r"hidden\[0\] must be a sequence of widths"),
        ({"activation": "sigmoid"}, ValueError, "unknown activation 'sigmoid'; valid: .*tanh"),
        ({"encoders": [nn.Identity()]}, ValueError, r"encoders must hold 2 modules"),
        ({"conditionals": [lambda z: z]}, TypeError, r"conditionals\[0\] must be an nn.Module"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    kwargs = {"latent_dims": (4, 3), **kwargs}
    with pytest.raises(error, match=match):
        pvae.HierarchicalVAE(**kwargs)


def test_a_network_of_the_wrong_width_is_named():
    enc = [
        pvae.guides.DiagonalNormal(pvae.nets.MLP(SHAPE, 10, hidden=()), 5),
        pvae.guides.DiagonalNormal(nn.Linear(4, 6), 3),
    ]
    m = pvae.HierarchicalVAE((4, 3), encoders=enc, data_shape=SHAPE)
    with pytest.raises(ValueError, match=r"encoders\[0\] must return a distribution with event"):
        m.check_compatible(binary(2))


def test_guide_needs_data():
    with pytest.raises(ValueError, match="the guide q"):
        small().guide(None)


# -- Pyro's own routes ----------------------------------------------------------------------------
PRIORS = {
    "standard_normal": lambda d: pvae.priors.StandardNormal(d),
    "learned_gaussian": lambda d: pvae.priors.LearnedGaussian(d),
    "mog": lambda d: pvae.priors.MixtureOfGaussians(d, num_components=3),
    "vamp": lambda d: pvae.priors.VampPrior(d, num_pseudo_inputs=4),
    "flow": lambda d: pvae.priors.FlowPrior(d, hidden=(8,)),
    "student_t": lambda d: pvae.priors.StudentT(d, learn_df=True),
}
LIKELIHOODS = {
    "bernoulli": lambda: pvae.likelihoods.Bernoulli(),
    "continuous_bernoulli": lambda: pvae.likelihoods.ContinuousBernoulli(),
    "gaussian": lambda: pvae.likelihoods.Gaussian(scale=0.5, learn_scale=True),
}


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_svi_with_pyro_optim_trains_every_parameter_of_every_top_prior(prior):
    svi_trains_every_parameter(small(PRIORS[prior](3)), binary(), Trace_ELBO())


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_svi_trains_every_likelihood(likelihood):
    x = torch.rand(12, *SHAPE) * 0.9 + 0.05 if likelihood != "bernoulli" else binary()
    svi_trains_every_parameter(small(likelihood=LIKELIHOODS[likelihood]()), x, Trace_ELBO())


@pytest.mark.parametrize("estimator", ["reparam", "dreg"])
def test_svi_with_pvaes_iwae_trains_every_parameter(estimator):
    svi_trains_every_parameter(small(), binary(), IWAE(num_particles=5, estimator=estimator))


def test_skip_puts_residual_connections_in_every_mlp_and_trains_them():
    m = pvae.HierarchicalVAE((4, 3), hidden=[[16, 16], [8]], skip=True, data_shape=SHAPE)
    mlps = [enc.net for enc in m.encoders] + [c.net for c in m.conditionals] + [m.decoder]
    assert all(isinstance(n, pvae.nets.MLP) and len(n.skips) == len(n.blocks) for n in mlps)
    svi_trains_every_parameter(m, binary(), Trace_ELBO())
    cfg = load_config(None, ["model.latent_dim=[4, 3]", "model.skip=true", "train.objective=elbo"])
    assert len(build_vae(cfg.model, SHAPE).decoder.skips) == 2  # around each of 2 hidden layers
    with pytest.raises(ValueError, match=r"for one layer set skip in \[model.encoder\]"):
        load_config(None, ["model.skip=true"])
    with pytest.raises(TypeError, match="skip must be True or False, got 1"):
        pvae.HierarchicalVAE((4, 3), skip=1)


def test_pyros_pytorch_style_elbo_module_trains_every_parameter():
    m = small()
    x = binary()
    loss_fn = Trace_ELBO()(m.model, m.guide)
    loss_fn(x)  # the first call announces the parameters
    opt = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
    assert {id(p) for p in loss_fn.parameters()} == {id(p) for p in m.parameters()}
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(5):
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
    assert all(not torch.equal(p, before[n]) for n, p in m.named_parameters())


def test_predictive_prior_and_posterior():
    m = small()
    x = binary(6)
    post = Predictive(m.model, guide=m.guide, num_samples=4)(x)
    assert {k: tuple(v.shape) for k, v in post.items()} == {
        "z1": (4, 6, 4),
        "z2": (4, 6, 3),
        "x": (4, 6, *SHAPE),
    }
    assert not torch.equal(post["x"][0], x)  # drawn, not the observed data echoed
    prior = Predictive(m.model, num_samples=3)(None, batch_size=5)
    assert {k: tuple(v.shape) for k, v in prior.items()} == {
        "z2": (3, 5, 3),
        "z1": (3, 5, 4),
        "x": (3, 5, *SHAPE),
    }


def test_vamp_prior_at_the_top_is_the_mixture_over_the_chains_means():
    prior = pvae.priors.VampPrior(3, num_pseudo_inputs=4)
    m = small(prior)
    u = torch.sigmoid(prior.pseudo_inputs)
    q = m.encoders[1](m.posterior_means(u)[0])  # q(z2 | μ1(u_k)), batch (K,)
    z = torch.randn(10, 3)
    want = q.log_prob(z[:, None, :]).logsumexp(-1) - math.log(4)
    torch.testing.assert_close(m.prior().log_prob(z), want)
    assert "prior.pseudo_inputs" in dict(m.named_parameters())
    assert not any(k.startswith("prior._") for k in m.state_dict())  # encoders stored once


# -- the example config ---------------------------------------------------------------------------
def test_the_example_config_is_the_iwae_papers_two_layer_model():
    cfg = load_config(EXAMPLE)
    assert (cfg.train.objective, cfg.train.num_particles) == ("iwae", 5)
    assert (cfg.data.binarize, cfg.model.likelihood["name"]) == ("dynamic", "bernoulli")
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32)]:
        m = build_vae(cfg.model, shape)
        assert isinstance(m, pvae.HierarchicalVAE)
        assert m.latent_dims == (100, 50) and m.hidden == ((200, 200), (100, 100))
        m.check_compatible(torch.zeros(2, *shape))


def test_the_example_config_trains_and_evaluates_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--set", "train.epochs=1", "--set", "train.device=cpu", "--no-progress"]
    argv += ["--set", "train.batch_size=128"]  # fewer steps; the architecture is the file's
    assert main(["train", "--config", str(EXAMPLE), "--out", str(out), *argv]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "20", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert math.isfinite(res["log_px"]) and math.isfinite(res["elbo"])
    assert set(res["diagnostics"]["active_units_by_site"]) == {"z1", "z2"}
    assert res["diagnostics"]["units_by_site"] == {"z1": 100, "z2": 50}
    run = pvae.load_run(out)
    assert isinstance(run.vae, pvae.HierarchicalVAE)
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt",
        "config.toml",
        "curves.png",
        "evaluation",  # pvae evaluate's per-datapoint values, for pvae compare
        "metrics.csv",
        "metrics.json",
        "reconstructions.png",
        "samples.png",
    ]
    assert main(["sample", str(out), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["plot", str(out), "--what", "recon", "--device", "cpu"]) == 0
    assert main(["plot", str(out), "--what", "manifold", "--device", "cpu"]) == 2
    assert "one-layer pvae.VAE" in capsys.readouterr().err


# -- exact answers: a linear-Gaussian chain -------------------------------------------------------
REF = pvae.LinearGaussianChain(data_dim=6, latent_dims=(3, 2), sigma1=0.6, sigma=0.5, seed=0)
X = REF.sample(20)


def _guide_joint(m, x):
    """The Gaussian q(z1, z2 | x) that the program's linear guide implies (from its networks)."""
    with torch.no_grad():
        return _guide_joint_of(m, x)


def _guide_joint_of(m, x):
    d2 = REF.latent_dims[1]
    q1 = m.encoders[0](x)
    m1, s1 = q1.base_dist.loc, q1.base_dist.scale
    lin = m.encoders[1].net
    gain, off = lin.weight[:d2], lin.bias[:d2]
    s2 = nn.functional.softplus(lin.bias[d2:])
    assert bool((lin.weight[d2:] == 0).all())  # the scale of z2 does not depend on z1
    cov1 = torch.diag_embed(s1**2)
    cov = torch.cat(
        [
            torch.cat([cov1, cov1 @ gain.T], -1),
            torch.cat([gain @ cov1, gain @ cov1 @ gain.T + torch.diag(s2**2)], -1),
        ],
        -2,
    )
    return torch.cat([m1, m1 @ gain.T + off], -1), cov


def test_the_chain_posterior_is_held_exactly_by_the_bottom_up_guide():
    exact = REF.posterior(X)
    loc, cov = _guide_joint(REF.program(), X)
    torch.testing.assert_close(loc, exact.loc, rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, exact.covariance_matrix, rtol=0, atol=1e-10)
    # The conditions that make it exact: Σ₁ = Cov(z1 | x) and Σ₂ = Cov(z2 | z1) are diagonal.
    d1 = REF.latent_dims[0]
    post = exact.covariance_matrix[0]
    assert torch.allclose(post[:d1, :d1], torch.diag(post[:d1, :d1].diagonal()), atol=1e-12)
    # The marginal: log p(x) from the joint (z, x) Gaussian by Bayes' rule at one z.
    z = exact.loc
    prog = REF.program()
    tr = pyro.poutine.trace(
        pyro.poutine.condition(prog.model, data={"z1": z[:, :d1], "z2": z[:, d1:]})
    ).get_trace(X)
    tr.compute_log_prob()
    log_joint = sum(tr.nodes[n]["log_prob"] for n in ("z1", "z2", "x"))
    torch.testing.assert_close(log_joint - exact.log_prob(z), REF.log_px(X), rtol=0, atol=1e-10)


def test_a_wrong_guide_is_not_the_posterior():
    loc, cov = _guide_joint(REF.program(loc_shift=0.3, scale_factor=1.4), X)
    exact = REF.posterior(X)
    assert float((loc - exact.loc).abs().max()) > 0.2
    assert float((cov - exact.covariance_matrix).abs().max()) > 0.05


def test_exact_guide_gives_log_px_at_every_estimator():
    m, exact = REF.program(), REF.log_px(X)
    est = pvae.log_px(m, X, k=50)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-8)
    assert float(est.se.max()) < 1e-6
    elbo = pvae.evaluate_elbo(m, X, num_samples=7, analytic_kl=False)
    torch.testing.assert_close(elbo.elbo, exact, rtol=0, atol=1e-8)
    ladder = pvae.bounds(m, X, ks=(1, 5, 50))
    for rung in ladder.iwae.values():
        assert rung["mean"] == pytest.approx(float(exact.mean()), abs=1e-8)


def test_closed_form_kl_elbo_is_unbiased_for_the_chain():
    # z2 ~ q(z2 | z1) is drawn after z1 but conditions z1 in the model: z1's KL must be the
    # Monte Carlo term (the closed form at the drawn z2 was 1.9 nats off); z2's may be closed.
    m, exact = REF.program(), REF.log_px(X)
    elbo = pvae.evaluate_elbo(m, X, num_samples=400)
    z = (elbo.elbo - exact) / elbo.se
    assert float(z.abs().max()) < 4.5, z


def test_wrong_guide_the_ladder_rises_to_log_px_within_its_se():
    m = REF.program(loc_shift=0.4, scale_factor=1.4)
    exact = float(REF.log_px(X).mean())
    ks = (1, 5, 50, 500, 5000)
    ladder = pvae.bounds(m, X, ks=ks, seed=0)
    rungs = [ladder.iwae[k] for k in ks]
    for lo, hi in itertools.pairwise(rungs):
        assert hi["mean"] > lo["mean"] - 3 * math.hypot(lo["se"], hi["se"])
    assert rungs[1]["mean"] - rungs[0]["mean"] > 0.5  # the wrong guide costs nats at k = 1
    for r in rungs:
        assert r["mean"] <= exact + 3 * r["se"]
    assert abs(rungs[-1]["mean"] - exact) < 4 * rungs[-1]["se"]
    est = pvae.log_px(m, X, k=5000, seed=1)
    z = (est.log_px - REF.log_px(X)) / est.se
    assert float(z.abs().max()) < 4.5, z


def test_reported_se_matches_the_spread_over_seeds():
    m = REF.program(loc_shift=0.3, scale_factor=1.3)
    x = X[:4]
    runs, reported = [], []
    for seed in range(60):
        est = pvae.log_px(m, x, k=300, khat=False, seed=seed)
        runs.append(est.log_px)
        reported.append(est.se)
    ratio = torch.stack(reported).mean(0) / torch.stack(runs).std(0)
    # 60 repeats estimate a standard deviation to about ±9%; allow ±35%.
    assert bool(((ratio > 0.65) & (ratio < 1.35)).all()), ratio


# -- the same chain in plain Pyro (no pvae classes) -----------------------------------------------
def plain_model(x):
    d2 = REF.latent_dims[1]
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Normal(torch.zeros(d2, dtype=x.dtype), 1.0).to_event(1))
        z1 = pyro.sample("z1", dist.Normal(z2 @ REF.A.T + REF.a, REF.sigma1).to_event(1))
        pyro.sample("x", dist.Normal(z1 @ REF.W.T + REF.b, REF.sigma).to_event(1), obs=x)


def plain_guide(x, shift=0.0, scale=1.0):
    """q(z1 | x) q(z2 | z1, x) from the exact joint posterior: its z1 marginal (full covariance)
    and the Gaussian conditional of z2 given z1."""
    d1 = REF.latent_dims[0]
    post = REF.posterior(x)
    m, S = post.loc, post.covariance_matrix[0]
    gain = S[d1:, :d1] @ torch.linalg.inv(S[:d1, :d1])
    cond = S[d1:, d1:] - gain @ S[:d1, d1:]
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.MultivariateNormal(m[:, :d1] + shift, scale**2 * S[:d1, :d1]))
        mean = m[:, d1:] + (z1 - m[:, :d1]) @ gain.T
        pyro.sample("z2", dist.MultivariateNormal(mean + shift, scale**2 * cond))


def wrong_plain_guide(x):
    plain_guide(x, shift=0.4, scale=1.4)


def test_plain_pyro_chain_has_the_programs_joint_density():
    d1 = REF.latent_dims[0]
    z = REF.posterior(X).sample()
    values = {"z1": z[:, :d1], "z2": z[:, d1:]}

    def log_joint(model):
        tr = pyro.poutine.trace(pyro.poutine.condition(model, data=values)).get_trace(X)
        return tr.log_prob_sum()

    torch.testing.assert_close(log_joint(plain_model), log_joint(REF.program().model))


def test_plain_pyro_exact_guide_gives_log_px():
    exact = REF.log_px(X)
    est = pvae.log_px(plain_model, plain_guide, X, k=50)
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=1e-8)
    elbo = pvae.evaluate_elbo(plain_model, plain_guide, X, num_samples=7, analytic_kl=False)
    torch.testing.assert_close(elbo.elbo, exact, rtol=0, atol=1e-8)
    ladder = pvae.bounds(plain_model, plain_guide, X, ks=(1, 5, 50))
    for rung in ladder.iwae.values():
        assert rung["mean"] == pytest.approx(float(exact.mean()), abs=1e-8)


def test_plain_pyro_wrong_guide_converges_within_its_se():
    exact = float(REF.log_px(X).mean())
    ks = (1, 50, 5000)
    ladder = pvae.bounds(plain_model, wrong_plain_guide, X, ks=ks, seed=0)
    rungs = [ladder.iwae[k] for k in ks]
    for lo, hi in itertools.pairwise(rungs):
        assert hi["mean"] > lo["mean"] - 3 * math.hypot(lo["se"], hi["se"])
    assert rungs[1]["mean"] - rungs[0]["mean"] > 0.5
    assert abs(rungs[-1]["mean"] - exact) < 4 * rungs[-1]["se"]


def test_fit_refuses_the_biased_mean_field_elbo_for_a_bottom_up_guide():
    m = pvae.HierarchicalVAE((3, 2), data_shape=(4,), likelihood=pvae.likelihoods.Gaussian())
    with pytest.raises(ValueError, match="'meanfield_elbo' .*draws 'z2' after 'z1'"):
        pvae.fit(m, torch.randn(10, 4), objective="meanfield_elbo", epochs=1, progress=False)
    pvae.fit(m, torch.randn(10, 4), objective="elbo", epochs=1, progress=False, device="cpu")


# -- β, warm-up and free bits: Pyro scales on each layer's sites ---------------------------------
def _traces(m, x):
    guide = pyro.poutine.trace(m.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=guide)).get_trace(x)
    return model, guide


def _latent_log_prob(m, tr):
    return sum(tr.nodes[n]["fn"].log_prob(tr.nodes[n]["value"]).sum() for n in m.sites)


@torch.no_grad()
def test_beta_scales_each_latent_sites_log_density(float64):
    m = small(dims=(4, 3, 2)).double()
    x = binary(7).double()
    pyro.set_rng_seed(0)
    plain_model, plain_guide = _traces(m, x)
    m.beta = 0.3
    pyro.set_rng_seed(0)
    model, guide = _traces(m, x)
    recon = model.nodes["x"]["fn"].log_prob(x).sum()
    for tr, plain in ((model, plain_model), (guide, plain_guide)):
        for name in m.sites:
            assert plain.nodes[name]["scale"] == 1.0 and tr.nodes[name]["scale"] == 0.3
            assert torch.equal(tr.nodes[name]["value"], plain.nodes[name]["value"])
    # β = 1 is the plain model, number for number; β weights the latent sites' log densities.
    assert float(plain_model.log_prob_sum()) == pytest.approx(
        float(recon + _latent_log_prob(m, plain_model)), rel=1e-12
    )
    assert float(model.log_prob_sum()) == pytest.approx(
        float(recon + 0.3 * _latent_log_prob(m, model)), rel=1e-12
    )
    assert float(guide.log_prob_sum()) == pytest.approx(
        0.3 * float(_latent_log_prob(m, guide)), rel=1e-12
    )
    pyro.set_rng_seed(0)
    loss = Trace_ELBO().loss(m.model, m.guide, x)
    kl = _latent_log_prob(m, guide) - _latent_log_prob(m, model)
    assert -loss == pytest.approx(float(recon - 0.3 * kl), rel=1e-10)


def _fit(data, **kwargs):
    torch.manual_seed(0)
    m = pvae.HierarchicalVAE((4, 3), hidden=[[16], [16]])
    res = pvae.fit(
        m, data, objective="elbo", epochs=2, batch_size=8, progress=False, device="cpu", **kwargs
    )
    return m, [r["train_elbo"] for r in res.history]


def test_warmup_through_fit_changes_training_and_beta_one_changes_nothing():
    data = binary(32)
    plain, plain_elbo = _fit(data)
    same, same_elbo = _fit(data, beta=1.0, warmup_steps=0, free_bits=0.0)
    assert same_elbo == plain_elbo
    for (n, p), q in zip(plain.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    warm, warm_elbo = _fit(data, beta=0.5, warmup_steps=4)
    _, flat_elbo = _fit(data, beta=0.5)
    assert (warm.beta, warm.free_bits) == (1.0, 0.0)  # the plain model again after training
    assert warm_elbo != plain_elbo and warm_elbo != flat_elbo
    changed = [
        not torch.equal(p, q) for p, q in zip(warm.parameters(), plain.parameters(), strict=True)
    ]
    assert all(changed)


def _collapsed_top(m):
    """q(z_2 | z_1) = N(0, I) = p(z_2) whatever z_1: the top layer's KL term is 0."""
    enc = m.encoders[1]
    last = [layer for layer in enc.modules() if isinstance(layer, nn.Linear)][-1]
    d = enc.latent_dim
    with torch.no_grad():
        last.weight.zero_()
        last.bias[:d] = 0.0
        last.bias[d:] = math.log(math.expm1(1.0 - enc.min_scale))  # sd = softplus(raw) + floor


def test_free_bits_zero_the_gradient_of_a_collapsed_layer(float64):
    m = small(prior=pvae.priors.LearnedGaussian(3)).double()
    _collapsed_top(m)
    x = binary(7).double()
    prior_params = list(m.prior.parameters())
    m.free_bits = 1e-3  # floors of 4e-3 and 3e-3 nats for z1 and z2
    pyro.set_rng_seed(0)
    kls = m.layer_kls(x)
    assert abs(kls[1]) < 1e-12 and kls[0] > 4e-3
    pyro.set_rng_seed(0)
    model, guide = _traces(m, x)
    assert m._scales == (1.0, 0.0)
    for tr in (model, guide):
        assert tr.nodes["z2"]["mask"] is False and tr.nodes["z1"]["scale"] == 1.0
    pyro.set_rng_seed(0)
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x)
    grads = torch.autograd.grad(loss, prior_params, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    z1 = guide.nodes["z1"]
    expect = (
        model.nodes["x"]["fn"].log_prob(x).sum()
        + model.nodes["z1"]["fn"].log_prob(z1["value"]).sum()
        - z1["fn"].log_prob(z1["value"]).sum()
    )
    assert -float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-10)
    m.free_bits = 0.0  # no floor: the top layer's KL term has a gradient again
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x)
    grads = torch.autograd.grad(loss, prior_params, allow_unused=True)
    assert all(g is not None and g.any() for g in grads)


def test_a_hierarchical_config_takes_the_kl_options():
    over = ["model.latent_dim=[6, 3]", "train.objective=elbo", "train.beta=0.5"]
    cfg = load_config(None, [*over, "train.warmup_steps=10", "train.free_bits=0.1"])
    assert (cfg.train.beta, cfg.train.warmup_steps, cfg.train.free_bits) == (0.5, 10, 0.1)
