import itertools
import math

import pyro
import pytest
import torch

import pvae
from pvae import nets


def test_standard_normal_is_normalized_standard_gaussian():
    p = pvae.priors.StandardNormal(3)()
    z = torch.randn(5, 3)
    ref = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z))
    assert p.event_shape == (3,) and p.batch_shape == ()


def test_bernoulli_sums_to_one_over_all_binary_images():
    logits = torch.randn(2, 2, 3)  # 6 pixels → 64 binary images
    p = pvae.likelihoods.Bernoulli()(logits, event_dim=2)
    xs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6))).reshape(64, 1, 2, 3)
    total = p.log_prob(xs.unsqueeze(1)).logsumexp(0)  # (64, 2) → per batch entry
    torch.testing.assert_close(total.squeeze(), torch.zeros(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("learn", [False, True])
def test_gaussian_matches_torch_reference(learn):
    lik = pvae.likelihoods.Gaussian(scale=0.3, learn_scale=learn)
    mean = torch.randn(4, 5)
    x = torch.randn(4, 5)
    ref = torch.distributions.Normal(mean, 0.3).log_prob(x).sum(-1)
    torch.testing.assert_close(lik(mean, event_dim=1).log_prob(x), ref)
    if learn:
        assert [n for n, _ in lik.named_parameters()] == ["raw_scale"]


def test_bernoulli_rejects_out_of_range_and_warns_on_non_binary():
    lik = pvae.likelihoods.Bernoulli()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*got values in \[-0.5"):
        lik.check_data(torch.tensor([[-0.5, 0.2]]))
    with pytest.warns(UserWarning, match="not binary.*binarize.*continuous Bernoulli"):
        lik.check_data(torch.tensor([[0.5, 0.2]]))
    lik.check_data(torch.tensor([[0.0, 1.0]]))  # binary: silent


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 13, 10)])
def test_conv_pair_round_trips_any_image_shape(shape):
    enc = nets.ConvEncoder(shape, 6)
    dec = nets.ConvDecoder(3, shape)
    x = torch.rand(4, 2, *shape)  # two leading batch dims
    assert enc(x).shape == (4, 2, 6)
    assert dec(torch.randn(5, 4, 3)).shape == (5, 4, *shape)


def test_mlp_keeps_leading_dims_and_rejects_bad_sizes():
    m = nets.MLP((1, 8, 8), (1, 8, 8), hidden=(7,), activation="tanh")
    assert m(torch.zeros(3, 2, 1, 8, 8)).shape == (3, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown activation 'swish'; valid: .*relu"):
        nets.MLP(4, 4, activation="swish")
    with pytest.raises(ValueError, match="hidden must be a positive integer, got 0"):
        nets.MLP(4, 4, hidden=(0,))


def test_mlp_skip_adds_each_hidden_layers_input_and_keeps_plain_parameter_names():
    torch.manual_seed(0)
    plain = nets.MLP(6, 3, hidden=(5, 5), activation="tanh")
    assert next(n for n, _ in plain.named_parameters()) == "net.0.weight"  # old checkpoints load
    m = nets.MLP((2, 3), 3, hidden=(5, 5), activation="tanh", skip=True)
    x = torch.randn(4, 2, 3)
    h0 = x.reshape(4, 6)
    h1 = torch.tanh(m.blocks[0][0](h0)) + m.skips[0](h0)  # 6 -> 5: a projection
    h2 = torch.tanh(m.blocks[1][0](h1)) + h1  # 5 -> 5: the identity
    torch.testing.assert_close(m(x), m.out(h2))
    assert isinstance(m.skips[1], torch.nn.Identity) and m.skips[0].bias is None
    with pytest.raises(TypeError, match="skip must be True or False, got 'yes'"):
        nets.MLP(4, 4, skip="yes")


def test_diagonal_guide_scale_has_floor():
    net = torch.nn.Linear(3, 4)
    with torch.no_grad():
        net.bias.fill_(-1e4)
        net.weight.zero_()
    q = pvae.guides.DiagonalNormal(net, latent_dim=2, min_scale=1e-3)(torch.zeros(1, 3))
    assert torch.all(q.base_dist.scale >= 1e-3)
    assert torch.isfinite(q.log_prob(q.sample())).all()


@pytest.mark.parametrize("bad", [0, -3])
def test_latent_dim_must_be_positive(bad):
    with pytest.raises(ValueError, match=f"latent_dim must be a positive integer, got {bad}"):
        pvae.priors.StandardNormal(bad)
    with pytest.raises(TypeError, match="latent_dim must be a positive integer, got 2.5"):
        pvae.priors.StandardNormal(2.5)


def test_bits_per_dim_of_fair_coin_is_one():
    vae = pvae.VAE(pvae.priors.StandardNormal(1), data_shape=(4,))
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.zero_()
    est = pvae.evaluate_elbo(vae, torch.ones(3, 4))
    # Zero logits: log p(x|z) = 4 log(1/2) for every z; ELBO = that minus KL.
    torch.testing.assert_close(est.recon, torch.full((3,), 4 * math.log(0.5)))
    s = est.summary()
    assert s["bits_per_dim"] == pytest.approx(1 + s["kl"] / (4 * math.log(2)), rel=1e-5)


@pytest.mark.parametrize(
    "lik", [pvae.likelihoods.Bernoulli(), pvae.likelihoods.Gaussian(0.3, learn_scale=True)]
)
def test_fused_log_prob_equals_the_distribution(lik, float64):
    params = torch.randn(7, 5, 1, 3, 4)  # (draws, batch, C, H, W)
    x = torch.bernoulli(torch.full((5, 1, 3, 4), 0.5))
    torch.testing.assert_close(lik.log_prob(params, x, 3), lik(params, 3).log_prob(x))


# -- the guides' scale map -------------------------------------------------------------------------
def _exp_guide_vae(kind: str) -> pvae.VAE:
    """A small VAE built from the config with ``[model.guide] scale = "exp"``."""
    from pvae.config import Config, build_vae

    guide = {"diagonal": {}, "low_rank": {"rank": 1}, "iaf": {"num_flows": 1, "hidden": [8]}}[kind]
    cfg = Config.from_dict(
        {
            "model": {
                "latent_dim": 2,
                "encoder": {"name": "mlp", "hidden": [8]},
                "decoder": {"name": "mlp", "hidden": [8]},
                "guide": {"name": kind, "scale": "exp", **guide},
            }
        }
    )
    return build_vae(cfg.model, (1, 3, 3))


@pytest.mark.parametrize("kind", ["diagonal", "low_rank", "iaf"])
def test_exp_scale_is_exp_of_the_raw_output_plus_the_floor(kind):
    torch.manual_seed(0)
    vae = _exp_guide_vae(kind)
    assert vae.encoder.scale == "exp"
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    d = vae.latent_dim
    raw = vae.encoder.net(x)[..., d : 2 * d]
    q = vae.encoder(x)
    if kind == "diagonal":
        sd = q.base_dist.scale
    elif kind == "low_rank":
        sd = q.cov_diag.sqrt()
    else:
        sd = q.base_dist.base_dist.scale
    torch.testing.assert_close(sd, raw.exp() + vae.encoder.min_scale)


@pytest.mark.parametrize("cls", [pvae.guides.DiagonalNormal, pvae.guides.LowRankNormal])
def test_unknown_scale_lists_the_valid_ones(cls):
    with pytest.raises(ValueError, match=r"unknown scale 'relu'; valid: exp, softplus"):
        cls(torch.nn.Linear(3, 8), latent_dim=2, scale="relu")
    with pytest.raises(TypeError, match=r"scale name must be a string"):
        pvae.guides.IAF(torch.nn.Linear(3, 20), latent_dim=2, scale=1)


def test_exp_guide_fused_path_equals_pyros_trace_path(float64):
    from pyro.infer import Trace_ELBO

    from pvae.objectives.fused import FusedObjective

    torch.manual_seed(0)
    vae = _exp_guide_vae("diagonal").double()
    x = torch.bernoulli(torch.full((6, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(0))
    x = x.double()
    params = list(vae.parameters())

    def loss_and_grads(fn):
        pyro.set_rng_seed(0)
        loss = fn()
        return loss, torch.autograd.grad(loss, params)

    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    a, ga = loss_and_grads(
        lambda: elbo.differentiable_loss(
            vae.model, vae.guide, x, size=60, subsample=torch.arange(6)
        )
    )
    b, gb = loss_and_grads(lambda: FusedObjective("elbo", 3, True).loss(vae, x, 60))
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-12)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def test_exp_guide_trains(digits):
    from pvae.config import Config, build_vae

    small = {"name": "mlp", "hidden": [32]}
    model = {"latent_dim": 4, "guide": {"scale": "exp"}, "encoder": small, "decoder": small}
    cfg = Config.from_dict({"model": model})
    torch.manual_seed(0)
    vae = build_vae(cfg.model, digits.data_shape)
    x = digits.val.observed()
    before = pvae.evaluate_elbo(vae, x).summary()
    res = pvae.fit(vae, digits, epochs=4, batch_size=64, lr=1e-2, quiet=True, device="cpu")
    after = res.final
    # Untrained: about 64 log 2 = 44 nats; the s.e. over 144 datapoints is about 0.3 nats.
    gain = after["val_elbo"] - before["elbo"]
    assert gain > 10 * math.hypot(after["val_elbo_se"], before["elbo_se"])
