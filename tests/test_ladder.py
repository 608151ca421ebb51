"""The Ladder VAE (top-down inference): its sites, its merges, Pyro and pvae's estimators on it,
the per-layer KL controls, and its configs. Exact answers: tests/test_ladder_exact.py."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO
from svi_check import svi_trains_every_parameter
from torch import nn

import pvae
from pvae.config import build_vae, canonical, load_config
from pvae.ladder import MLPLadderPaths
from pvae.likelihoods import LIKELIHOODS
from pvae.objectives import IWAE
from pvae.priors import PRIORS

SHAPE = (1, 8, 8)
CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def small(prior=None, likelihood=None, dims=(4, 3), **kw):
    kw.setdefault("hidden", [[16]] * len(dims))
    return pvae.LadderVAE(dims, prior=prior, likelihood=likelihood, data_shape=SHAPE, **kw)


def binary(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) < 0.3).float()


def latents(tr):
    return [n for n, s in tr.nodes.items() if s["type"] == "sample" and n.startswith("z")]


# -- structure ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [(4, 3), (5, 4, 2), (6, 4, 3, 2)])
def test_the_guide_draws_top_down_and_every_site_is_in_the_data_plate(dims):
    m = small(dims=dims)
    x = binary(5)
    guide = pyro.poutine.trace(m.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=guide)).get_trace(x)
    top_down = [f"z{i}" for i in range(len(dims), 0, -1)]
    assert latents(guide) == top_down and latents(model) == top_down
    for tr in (guide, model):
        for name in [*top_down, *(["x"] if tr is model else [])]:
            site = tr.nodes[name]
            assert [f.name for f in site["cond_indep_stack"]] == ["data"], name
    for i, d in enumerate(dims, 1):
        assert tuple(guide.nodes[f"z{i}"]["value"].shape) == (5, d)
    assert m.sites == tuple(f"z{i}" for i in range(1, len(dims) + 1))
    assert [tuple(z.shape) for z in m.posterior_means(x)] == [(5, d) for d in dims]
    assert [tuple(z.shape) for z in m.sample_latents(7)] == [(7, d) for d in dims]
    assert m.sample(3).shape == (3, *SHAPE) and m.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("skip", [False, True])
def test_a_generative_skip_lets_x_read_every_layer(skip):
    """With the deterministic top-down path, p(x | ·) changes when only z_3 changes (z_1, z_2
    held); without it x reads z_1 alone. The decoder's input is [z_1, t_1]."""
    m = small(dims=(5, 4, 2), hidden=[[16], [8], [6]], generative_skip=skip)
    x = binary(3)
    zs = {f"z{i}": torch.randn(3, d) for i, d in enumerate((5, 4, 2), 1)}

    def x_logits(z3):
        data = {**zs, "z3": z3}
        tr = pyro.poutine.trace(pyro.poutine.condition(m.model, data=data)).get_trace(x)
        return tr.nodes["x"]["fn"].base_dist.logits

    moved = (x_logits(zs["z3"]) - x_logits(zs["z3"] + 1.0)).abs().max()
    assert (moved > 1e-4) == skip and (moved == 0) == (not skip)
    assert m.paths.decoder.trunk.in_shape == ((5 + 8,) if skip else (5,))
    assert m.paths.p_heads[0].trunk.in_shape == ((4 + 6,) if skip else (4,))
    assert [tuple(z.shape) for z in m.posterior_means(x)] == [(3, 5), (3, 4), (3, 2)]
    assert [tuple(z.shape) for z in m.sample_latents(7)] == [(7, 5), (7, 4), (7, 2)]
    assert m.sample(3).shape == (3, *SHAPE) and m.reconstruct(x).shape == x.shape
    svi_trains_every_parameter(m, binary(), Trace_ELBO())


def test_a_generative_skip_needs_paths_built_with_it():
    paths = MLPLadderPaths(SHAPE, SHAPE, (4, 3), hidden=[[16], [8]])
    with pytest.raises(ValueError, match="generative_skip needs paths built with it"):
        pvae.LadderVAE(paths=paths, generative_skip=True)
    built = MLPLadderPaths(SHAPE, SHAPE, (4, 3), hidden=[[16], [8]], generative_skip=True)
    assert pvae.LadderVAE(paths=built, data_shape=SHAPE).generative_skip


def _sites(m, x):
    """The guide's q and the model's p of every latent site, at the guide's draws."""
    guide = pyro.poutine.trace(m.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(m.model, trace=guide)).get_trace(x)
    return guide, model


@pytest.mark.parametrize("merge", ["precision", "residual"])
def test_each_merge_is_its_formula_with_the_models_own_prior(merge):
    torch.manual_seed(0)
    m = small(merge=merge)
    x = binary(6)
    guide, model = _sites(m, x)
    q, p = guide.nodes["z1"]["fn"].base_dist, model.nodes["z1"]["fn"].base_dist
    h = m.paths.q_heads[0](m.paths.up[0](x))
    mu_h, s_h = h[:, 0], nn.functional.softplus(h[:, 1]) + m.min_scale
    if merge == "precision":
        var = 1 / (s_h**-2 + p.scale**-2)
        loc, scale = (mu_h * s_h**-2 + p.loc * p.scale**-2) * var, var.sqrt()
    else:
        loc, scale = p.loc + mu_h, p.scale * s_h
    torch.testing.assert_close(q.loc, loc)
    torch.testing.assert_close(q.scale, scale)
    # The top: the bottom-up estimate alone, against the top prior.
    top = m.paths.q_heads[1](m.paths.up[1](m.paths.up[0](x)))
    torch.testing.assert_close(guide.nodes["z2"]["fn"].base_dist.loc, top[:, 0])


def test_bad_arguments_name_the_argument():
    cases = [
        (dict(dims=(4,)), ValueError, "at least 2 stochastic layers"),
        (dict(merge="mean"), ValueError, "merge"),
        (dict(norm="layer"), ValueError, "norm"),
        (dict(activation="nope"), ValueError, "activation"),
        (
            dict(layer_warmup=[1, 2, 3]),
            ValueError,
            "layer_warmup must be one number or a list of 2",
        ),
        (dict(layer_free_bits=-1.0), ValueError, "layer_free_bits entries"),
        (dict(free_bits_groups=[5, 1]), ValueError, r"free_bits_groups\[0\] = 5 exceeds"),
        (dict(prior=PRIORS["standard_normal"](4)), ValueError, "latent_dim=4"),
        (dict(free_bits_groups=[1, 3], prior=PRIORS["mog"](3)), ValueError, "factorizes"),
        (dict(paths=nn.Linear(2, 2)), TypeError, "LadderPaths"),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            small(**kw)


@pytest.mark.parametrize("norm,skip", [("batch", False), ("weight", True), (None, True)])
def test_norm_and_skip_options_build_and_train(norm, skip):
    m = small(norm=norm, skip=skip, hidden=[[16, 16], [8, 8]])
    trunk = m.paths.up[0]
    assert len(trunk.skips) == (2 if skip else 0)
    kinds = {type(mod).__name__ for mod in trunk.modules()}
    assert ("BatchNorm1d" in kinds) == (norm == "batch")
    assert any("parametrizations" in n for n, _ in trunk.named_modules()) == (norm == "weight")
    svi_trains_every_parameter(m, binary(), Trace_ELBO(), steps=10)


# -- Pyro and pvae's estimators work unchanged ----------------------------------------------------
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_svi_with_trace_elbo_trains_every_parameter_for_every_top_prior(prior):
    svi_trains_every_parameter(small(PRIORS[prior](3)), binary(), Trace_ELBO())


@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_svi_trains_every_likelihood(likelihood):
    x = torch.rand(12, *SHAPE) * 0.9 + 0.05 if likelihood != "bernoulli" else binary()
    svi_trains_every_parameter(small(likelihood=LIKELIHOODS[likelihood]()), x, Trace_ELBO())


def test_svi_with_pvaes_iwae_and_residual_merge_trains_every_parameter():
    m = small(merge="residual", dims=(4, 3, 2), hidden=[[16], [8], [8]])
    svi_trains_every_parameter(m, binary(), IWAE(num_particles=5, estimator="dreg"))


def test_predictive_prior_and_posterior():
    m = small()
    post = Predictive(m.model, guide=m.guide, num_samples=4)(binary(6))
    assert {k: tuple(v.shape) for k, v in post.items()} == {
        "z1": (4, 6, 4),
        "z2": (4, 6, 3),
        "x": (4, 6, *SHAPE),
    }
    prior = Predictive(m.model, num_samples=2)(None, batch_size=3)
    assert tuple(prior["x"].shape) == (2, 3, *SHAPE)


@pytest.fixture(scope="module")
def trained():
    """A tiny ladder trained 3 epochs on digits with fit's trace path (ELBO)."""
    pyro.set_rng_seed(0)
    torch.manual_seed(0)
    data = pvae.datasets.load("digits", binarize="dynamic")
    m = pvae.LadderVAE((8, 4), hidden=[[32], [16]])
    res = pvae.fit(
        m, data, objective="elbo", epochs=3, batch_size=128, progress=False, device="cpu"
    )
    return m, res, data.test.observed()[:40]


def test_fit_with_the_elbo_trains_the_ladder(trained):
    m, res, _ = trained
    elbos = [r["train_elbo"] for r in res.history]
    assert all(math.isfinite(e) for e in elbos) and elbos[-1] > elbos[0] + 1.0, elbos
    assert (m.beta, m.free_bits, m.training) == (1.0, 0.0, False)
    steps = res.history[-1]["step"]
    assert int(m.kl_step) == steps  # one count per training step


def test_log_px_and_the_bounds_ladder_on_a_trained_ladder(trained):
    m, _, x = trained
    ladder = pvae.bounds(m, x, ks=(1, 10, 100), seed=0)
    rungs = [ladder.iwae[k] for k in (1, 10, 100)]
    for lo, hi in itertools.pairwise(rungs):
        assert hi["mean"] > lo["mean"] - 3 * math.hypot(lo["se"], hi["se"]), rungs
    # A trained guide is not exact: the bound rises beyond its noise.
    assert rungs[-1]["mean"] - rungs[0]["mean"] > 3 * math.hypot(rungs[0]["se"], rungs[-1]["se"])
    est = pvae.log_px(m, x, k=1000, seed=1)
    assert bool(torch.isfinite(est.log_px).all())
    gap = float(est.log_px.mean()) - rungs[-1]["mean"]
    assert gap > -3 * math.hypot(float(est.log_px.std() / 40**0.5), rungs[-1]["se"])
    elbo = pvae.evaluate_elbo(m, x, num_samples=50)
    assert float(elbo.elbo.mean()) < float(est.log_px.mean())
    kls = m.layer_kls(x)
    assert len(kls) == 2 and all(k > 0 for k in kls)


@pytest.mark.parametrize("objective", ["iwae", "meanfield_elbo"])
def test_fit_with_the_iwae_and_the_closed_form_kl_elbo_trains_the_ladder(objective):
    torch.manual_seed(0)
    m = small(dims=(4, 3))
    x = binary(64)
    res = pvae.fit(
        m, x, objective=objective, num_particles=3, epochs=4, batch_size=16, progress=False
    )
    elbos = [r["train_elbo"] for r in res.history]
    assert all(math.isfinite(e) for e in elbos) and elbos[-1] > elbos[0], elbos


# -- KL control per layer -------------------------------------------------------------------------
def _scale(site):
    return 0.0 if site["mask"] is False else float(site["scale"])


def test_layer_warmup_scales_each_layer_and_counts_backward_passes():
    m = small(layer_warmup=[4, 8])
    x = binary(6)
    for t in range(3):
        guide, model = _sites(m, x)
        want = {"z1": min(1, (t + 1) / 4), "z2": min(1, (t + 1) / 8)}
        for tr in (guide, model):
            assert {n: _scale(tr.nodes[n]) for n in ("z1", "z2")} == pytest.approx(want)
        # Three particles run the guide three times: still one step.
        Trace_ELBO(num_particles=3).differentiable_loss(m.model, m.guide, x).backward()
        assert m._step == int(m.kl_step) == t + 1
    # STL replays the guide with its parameters held fixed: still one step. (The IWAE bound
    # refuses a warm-up's scales, so this model has none.)
    plain = small()
    for _ in range(2):
        IWAE(num_particles=2, estimator="stl").differentiable_loss(
            plain.model, plain.guide, x
        ).backward()
    assert int(plain.kl_step) == 2
    with torch.no_grad():  # pvae's estimators: the plain model
        assert _scale(_sites(m, x)[0].nodes["z2"]) == 1.0
    m.eval()
    assert _scale(_sites(m, x)[0].nodes["z2"]) == 1.0
    # The count is saved with the model, so a resumed run continues its warm-up.
    other = small(layer_warmup=[4, 8])
    other.load_state_dict(m.state_dict())
    assert other._step == 3
    assert _scale(_sites(other, x)[0].nodes["z2"]) == pytest.approx(4 / 8)


def _collapse(m, layer, units):
    """q(z_l | ·) = N(0, 1) = p for ``units`` of the top layer ``layer``: their KL terms are 0."""
    head = m.paths.q_heads[layer].out
    d = m.latent_dims[layer]
    rows = torch.tensor(units)
    with torch.no_grad():
        head.weight[rows] = 0.0
        head.bias[rows] = 0.0
        head.weight[d + rows] = 0.0
        head.bias[d + rows] = math.log(math.expm1(1.0 - m.min_scale))


def test_free_bits_per_layer_mask_a_collapsed_layer_and_zero_its_gradient(float64):
    m = small(prior=PRIORS["learned_gaussian"](3), layer_free_bits=[1e-3, 1e-3]).double()
    _collapse(m, 1, [0, 1, 2])
    x = binary(7).double()
    kls = m.unit_kls(x)
    assert float(kls[1].abs().max()) < 1e-12 and float(kls[0].sum()) > 4e-3
    guide, model = _sites(m, x)
    for tr in (guide, model):
        assert tr.nodes["z2"]["mask"] is False and _scale(tr.nodes["z1"]) == 1.0
    prior_params = list(m.prior.parameters())
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x)
    grads = torch.autograd.grad(loss, prior_params, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    m.eval()  # outside training the per-layer floors are off: a gradient again
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x)
    grads = torch.autograd.grad(loss, prior_params, allow_unused=True)
    assert all(g is not None and g.any() for g in grads)


def test_free_bits_per_group_of_units_weight_each_unit(float64):
    m = small(dims=(4, 4), layer_free_bits=1e-3, free_bits_groups=[1, 2]).double()
    _collapse(m, 1, [2, 3])  # the second group of the top layer is held, the first is not
    x = binary(7).double()
    kl = m.unit_kls(x)[1]
    assert float(kl[2:].abs().max()) < 1e-12 and float(kl[:2].sum()) > 2e-3
    pyro.set_rng_seed(3)
    guide, model = _sites(m, x)
    fn = guide.nodes["z2"]["fn"]
    assert isinstance(fn, pvae.family.UnitWeighted)
    assert fn.weight.tolist() == [1.0, 1.0, 0.0, 0.0]
    z2 = guide.nodes["z2"]["value"]
    q2, p2 = fn.base.base_dist, model.nodes["z2"]["fn"].base.base_dist
    want = ((p2.log_prob(z2) - q2.log_prob(z2))[:, :2]).sum()
    got = model.nodes["z2"]["fn"].log_prob(z2).sum() - fn.log_prob(z2).sum()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(m.model, m.guide, x)
    z1 = guide.nodes["z1"]
    expect = (
        model.nodes["x"]["fn"].log_prob(x).sum()
        + model.nodes["z1"]["fn"].log_prob(z1["value"]).sum()
        - z1["fn"].log_prob(z1["value"]).sum()
        + want
    )
    assert -float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-10)


def test_layer_kls_sum_to_the_kl_of_the_whole_posterior():
    m = small()
    x = binary(4)
    n = 100
    draws = torch.tensor([sum(m.layer_kls(x)) for _ in range(n)])
    mc = []
    for _ in range(n):
        with torch.no_grad():
            guide, model = _sites(m, x)
        mc.append(
            sum(
                float(
                    (
                        guide.nodes[n]["fn"].log_prob(guide.nodes[n]["value"])
                        - model.nodes[n]["fn"].log_prob(guide.nodes[n]["value"])
                    ).mean()
                )
                for n in ("z1", "z2")
            )
        )
    mc = torch.tensor(mc)
    se = math.hypot(float(draws.std()), float(mc.std())) / n**0.5
    assert abs(float(draws.mean() - mc.mean())) < 4 * se


# -- configs --------------------------------------------------------------------------------------
TOP = ["model.latent_dim=[6, 3]", "model.inference=top_down", "train.objective=elbo"]


def test_a_top_down_config_builds_a_ladder_with_its_keys_and_round_trips(tmp_path):
    over = [*TOP, "model.merge=residual", "model.norm=batch", "model.skip=true"]
    over += ["model.generative_skip=true", "model.min_scale=0.01"]
    over += ["model.layer_warmup=[10, 20]", "model.layer_free_bits=0.1", "model.free_bits_groups=3"]
    cfg = load_config(None, over)
    m = build_vae(cfg.model, SHAPE)
    assert isinstance(m, pvae.LadderVAE)
    assert (m.merge, m.norm, m.skip, m.generative_skip) == ("residual", "batch", True, True)
    assert m.min_scale == 0.01
    assert (m.layer_warmup, m.layer_free_bits, m.free_bits_groups) == ((10, 20), (0.1, 0.1), (3, 3))
    path = tmp_path / "c.toml"
    path.write_text(pvae.config.dumps_toml(cfg.to_dict()))
    assert canonical(load_config(path)) == canonical(cfg)
    full = canonical(cfg)["model"]
    assert full["layer_free_bits"] == [0.1, 0.1] and full["free_bits_groups"] == [3, 3]
    assert full["generative_skip"] is True and full["min_scale"] == 0.01
    plain = canonical(load_config(None, TOP))["model"]
    assert (plain["merge"], plain["layer_warmup"], plain["layer_free_bits"]) == (
        "precision",
        [0, 0],
        None,
    )
    assert plain["min_scale"] == 1e-4  # the ladder's own default
    bottom_up = [TOP[0], TOP[2]]
    assert isinstance(build_vae(load_config(None, bottom_up).model, SHAPE), pvae.HierarchicalVAE)
    assert canonical(load_config(None, [*bottom_up, "model.inference=bottom_up"])) == canonical(
        load_config(None, bottom_up)
    )


@pytest.mark.parametrize(
    "over,match",
    [
        ([TOP[0], "model.inference=sideways"], "valid: bottom_up, top_down"),
        ([*TOP, "model.merge=mean"], "valid: precision, residual"),
        ([*TOP, "model.norm=layer"], "valid: batch, weight"),
        ([*TOP, "model.layer_warmup=[1, 2, 3]"], "model.layer_warmup must be one number or a list"),
        ([*TOP, "model.free_bits_groups=[7, 1]"], r"free_bits_groups\[0\] = 7 exceeds"),
        ([*TOP, "model.layer_warmup=5", "train.objective=iwae"], "use train.objective = 'elbo'"),
        ([TOP[0], TOP[2], "model.merge=residual"], "set model.inference = 'top_down'"),
        (["model.inference=top_down"], "applies to a hierarchical model"),
        ([*TOP, "model.ladder=1"], "valid: .*free_bits_groups.*inference.*merge"),
        ([*TOP, "model.generative_skip=1"], "model.generative_skip must be true or false"),
        ([*TOP, "model.min_scale=-1"], "model.min_scale"),
        (
            [*TOP, "model.generative_skip=true", "model.paths={name='conv'}"],
            "generative_skip applies to the MLP paths; model.paths names 'conv'",
        ),
    ],
)
def test_top_down_config_errors_name_the_valid_values(over, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, over)


def test_mean_field_elbo_is_allowed_top_down_and_refused_bottom_up():
    load_config(None, [*TOP[:2], "train.objective=meanfield_elbo"])
    with pytest.raises(ValueError, match="biased"):
        load_config(None, [TOP[0], "train.objective=meanfield_elbo"])


@pytest.mark.parametrize("name", ["ladder-2layer", "ladder-3layer"])
def test_each_ladder_config_loads_and_trains_an_epoch_on_digits(name, tmp_path, digits):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert cfg.model.inference == "top_down" and len(cfg.model.layers) == int(name[7])
    m = build_vae(cfg.model, digits.train.x.shape[1:])
    assert isinstance(m, pvae.LadderVAE) and m.latent_dims == tuple(cfg.model.layers)
    assert m.min_scale == 0.01  # shipped above the code's 1e-4: the 50-epoch spikes (README)
    opts = cfg.options.replace(epochs=1, batch_size=256, device="cpu", progress=False)
    res = pvae.fit(m, digits, opts)
    assert math.isfinite(res.history[-1]["train_elbo"]) and math.isfinite(
        res.history[-1]["val_elbo"]
    )


@pytest.mark.parametrize(
    "merge,skip", [("precision", False), ("residual", False), ("precision", True)]
)
def test_the_model_reuses_the_guides_priors_with_the_same_loss_and_gradients(
    merge, skip, monkeypatch
):
    """Under replay the model takes p(z_l | z_{l+1}) from the guide's pass (one p-head pass
    per layer and step, as a hand-written step); loss and gradients equal a model that runs
    the p-heads again, in float64."""
    torch.set_default_dtype(torch.float64)
    try:
        pyro.set_rng_seed(0)
        vae = small(dims=(4, 3, 2), merge=merge, generative_skip=skip)
        x = binary().double()
        calls = []
        for head in vae.paths.p_heads:
            head.trunk.register_forward_hook(lambda *_: calls.append(1))

        def loss_and_grads(seed):
            vae.zero_grad()
            pyro.set_rng_seed(seed)
            elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
            loss = elbo.differentiable_loss(
                vae.model, vae.guide, x, size=len(x), subsample=torch.arange(len(x))
            )
            loss.backward()
            return loss.detach(), [p.grad.clone() for p in vae.parameters() if p.grad is not None]

        calls.clear()
        loss, grads = loss_and_grads(1)
        assert len(calls) == 2  # two p-heads, each once
        plain = pvae.LadderVAE.model

        def uncached(self, *args, **kwargs):
            self._priors = {}
            return plain(self, *args, **kwargs)

        monkeypatch.setattr(pvae.LadderVAE, "model", uncached)
        calls.clear()
        ref_loss, ref_grads = loss_and_grads(1)
        assert len(calls) == 4  # the model runs them again
        assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-12)
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)
