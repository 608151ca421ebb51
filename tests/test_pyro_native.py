"""Pyro's own routes train and sample pvae models, as a Pyro user would call them: SVI with a
pyro.optim optimizer, Pyro's PyTorch-style ELBO module with a torch optimizer, Predictive."""

import pyro
import pytest
import torch
from pyro.infer import (
    SVI,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from test_zoo import GUIDE_KW, LIK_KW, PRIOR_KW, make, tiny_data

import pvae
from pvae.objectives import IWAE

ELBOS = {
    "Trace_ELBO": lambda: Trace_ELBO(),
    "TraceMeanField_ELBO": lambda: TraceMeanField_ELBO(),
    "TraceGraph_ELBO": lambda: TraceGraph_ELBO(),
    "RenyiELBO": lambda: RenyiELBO(alpha=0.5, num_particles=2),
    "IWAE": lambda: IWAE(num_particles=3),
}
# Every component of the zoo, one varied at a time around the default VAE.
COMPONENTS = (
    [{"prior": p} for p in sorted(PRIOR_KW)]
    + [{"lik": name} for name in sorted(LIK_KW) if name != "bernoulli"]
    + [{"guide": g} for g in sorted(GUIDE_KW) if g != "diagonal"]
)
STEPS = 40


def _ids(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _assert_trained(before, module, losses):
    unchanged = [n for n, p in module.named_parameters() if torch.equal(before[n], p.detach())]
    assert not unchanged, f"parameters the optimizer never moved: {unchanged}"
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, (first, last)


@pytest.mark.parametrize("elbo", sorted(ELBOS))
@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_svi_with_pyro_optim_trains_every_parameter(elbo, component):
    vae = make(**component)
    x = tiny_data()
    before = _snapshot(vae)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), ELBOS[elbo]())
    losses = [svi.step(x) for _ in range(STEPS)]
    _assert_trained(before, vae, losses)
    # Every parameter is in Pyro's param store under this model's own name.
    names = set(pyro.get_param_store().keys())
    assert {f"{vae.pyro_name}.{n}" for n, _ in vae.named_parameters()} <= names


# Pyro's ELBO module calls ``differentiable_loss``, which TraceGraph_ELBO and RenyiELBO do not
# implement (pyro-ppl 1.9); they train through SVI above.
MODULE_ELBOS = sorted(n for n in ELBOS if hasattr(type(ELBOS[n]()), "differentiable_loss"))


def test_the_module_route_covers_every_elbo_that_pyro_lets_it():
    assert MODULE_ELBOS == ["IWAE", "TraceMeanField_ELBO", "Trace_ELBO"]


@pytest.mark.parametrize("elbo", MODULE_ELBOS)
@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_pyro_pytorch_style_elbo_module_trains_every_parameter(elbo, component):
    vae = make(**component)
    x = tiny_data()
    loss_fn = ELBOS[elbo]()(vae.model, vae.guide)
    params = list(loss_fn.parameters())
    assert {id(p) for p in params} == {id(p) for p in vae.parameters()}
    opt = torch.optim.Adam(params, lr=1e-2)
    before = _snapshot(vae)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    _assert_trained(before, vae, losses)


def test_two_vaes_in_one_process_stay_independent():
    x = tiny_data()
    a, b = make(), make()
    assert a.pyro_name != b.pyro_name
    b_before = _snapshot(b)
    svi = SVI(a.model, a.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step(x)
    assert all(torch.equal(b_before[n], p) for n, p in b.named_parameters())
    # Training b afterwards moves b's tensors, not a's.
    a_before = _snapshot(a)
    svi_b = SVI(b.model, b.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi_b.step(x)
    assert all(torch.equal(a_before[n], p) for n, p in a.named_parameters())
    assert not any(torch.equal(b_before[n], p) for n, p in b.named_parameters())


def test_a_replaced_component_or_a_cleared_store_is_what_svi_trains():
    x = tiny_data()
    vae = make()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)
    # A new decoder under the same parameter names: the stale store entries must not win.
    vae.decoder = pvae.nets.MLP(2, (1, 3, 3), (16,))
    new = _snapshot(vae.decoder)
    for _ in range(3):
        svi.step(x)
    assert not any(torch.equal(new[n], p) for n, p in vae.decoder.named_parameters())
    pyro.clear_param_store()
    before = _snapshot(vae)
    for _ in range(3):
        svi.step(x)
    assert not any(torch.equal(before[n], p) for n, p in vae.named_parameters())


def test_predictive_gives_prior_and_posterior_predictive_draws(float64):
    ref = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5)
    vae = ref.vae()  # exact posterior
    x = ref.sample(4)
    s = 4000
    post = Predictive(vae.model, guide=vae.guide, num_samples=s)(x)["x"]
    assert post.shape == (s, 4, 6)
    # x_rep = W z + b + σ ε with z ~ p(z | x): mean W E[z|x] + b, variance W Σ Wᵀ + σ² I.
    want = ref.posterior_mean(x) @ ref.W.T + ref.b
    var = (ref.W * ref.post_var) @ ref.W.T + ref.sigma**2 * torch.eye(6, dtype=torch.float64)
    se = (torch.diagonal(var) / s).sqrt()
    assert bool(((post.mean(0) - want).abs() < 4.5 * se).all())
    assert not torch.equal(post[0], x)  # drawn, not the data echoed back
    prior = Predictive(vae.model, num_samples=s)(None, batch_size=3)["x"]
    assert prior.shape == (s, 3, 6)
    cov = ref.marginal().covariance_matrix
    se = (torch.diagonal(cov) / (3 * s)).sqrt()
    assert bool(((prior.reshape(-1, 6).mean(0) - ref.b).abs() < 4.5 * se).all())
    assert vae.model(None).shape == (1, 6)
    assert vae.model(None, batch_size=5).shape == (5, 6)


def test_model_and_guide_explain_what_they_need():
    vae = make()
    with pytest.raises(ValueError, match="the guide q\\(z \\| x\\) needs data x"):
        vae.guide(None)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        vae.model(None, batch_size=0)
    unbuilt = pvae.VAE(pvae.priors.StandardNormal(2))
    with pytest.raises(ValueError, match="the VAE is not built"):
        unbuilt.model(None)
