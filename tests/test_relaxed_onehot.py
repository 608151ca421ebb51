"""SemiSupervisedVAE with a relaxed one-hot class latent (Concrete / Gumbel-softmax; Jang et al.
2017, Maddison et al. 2017): the unlabelled y is a reparameterized draw on the simplex under the
matching relaxed prior, labelled datapoints stay observed, gradients reach the classifier through
the draw, the draws approach one-hot vectors at low temperature, it trains through pvae.fit with
"elbo", and the config builds it and refuses the combinations that make no sense."""

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

import pvae
from pvae.labels import partial_labels
from pvae.semisupervised import ExpRelaxedCategorical

K, P = 3, 5
LABELS = torch.tensor([0, -1, 2, -1, -1, 1])


def relaxed_m2(temperature: float = 0.5, **kw) -> pvae.SemiSupervisedVAE:
    torch.manual_seed(0)
    m = pvae.SemiSupervisedVAE(
        pvae.priors.StandardNormal(2),
        K,
        enumerate_y=False,
        relaxed_temperature=temperature,
        data_shape=(P,),
        hidden=(8,),
        class_probs=[0.5, 0.3, 0.2],
        **kw,
    )
    m.set_labels(LABELS)
    return m


def traces(m: pvae.SemiSupervisedVAE, x: torch.Tensor):
    kw = {"size": len(x), "subsample": torch.arange(len(x))}
    guide = poutine.trace(m.guide).get_trace(x, **kw)
    model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x, **kw)
    return guide, model


def x_data(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((n, P), 0.4), generator=g)


def test_unlabelled_y_is_a_reparameterized_point_of_the_simplex_under_the_relaxed_prior():
    m, x = relaxed_m2(0.75), x_data()
    guide, model = traces(m, x)
    q, p = guide.nodes["y"], model.nodes["y"]
    assert isinstance(q["fn"], ExpRelaxedCategorical) and q["fn"].has_rsample
    assert "enumerate" not in q["infer"] and not q["is_observed"]
    onehot = q["value"].exp()  # the site's value is the log of the relaxed one-hot vector
    assert onehot.shape == (3, K) and bool((onehot > 0).all())
    torch.testing.assert_close(onehot.sum(-1), torch.ones(3))
    assert isinstance(p["fn"], ExpRelaxedCategorical) and float(p["fn"].temperature) == 0.75
    torch.testing.assert_close(p["fn"].probs, torch.tensor([[0.5, 0.3, 0.2]] * 3))
    assert float(q["fn"].temperature) == 0.75 and torch.equal(p["value"], q["value"])
    # labelled datapoints: y observed at its label, a one-hot under the discrete p(y)
    lab = model.nodes["y_labelled"]
    assert lab["is_observed"] and lab["value"].tolist() == [0, 2, 1]
    assert isinstance(lab["fn"], pyro.distributions.Categorical)
    assert "y_labelled" not in guide.nodes
    # the decoder reads the relaxed vector where it read onehot(y)
    z = model.nodes["z"]["value"]
    torch.testing.assert_close(m.code(q["value"], z), torch.cat([onehot, z], -1))
    assert m.model(None, batch_size=4).shape == (4, P)  # the relaxed model generates


def test_gradients_reach_the_classifier_through_the_draw():
    m, x = relaxed_m2(), x_data()
    guide, _ = traces(m, x)
    params = list(m.classifier.parameters())
    # pathwise: the draw itself is a differentiable function of q(y | x)'s parameters
    probe = (guide.nodes["y"]["value"].exp() * torch.arange(float(K))).sum()
    grads = torch.autograd.grad(probe, params)
    assert all(float(g.abs().sum()) > 0 for g in grads)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(
        m.model, m.guide, x, size=len(x), subsample=torch.arange(len(x))
    )
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)


@pytest.mark.parametrize(("k", "temperature"), [(2, 0.05), (4, 0.05), (2, 1.0), (4, 0.01)])
def test_draws_approach_one_hot_vectors_as_the_temperature_falls(k, temperature):
    """With equal logits the top coordinate exceeds 1 − ε when the gap D between the largest and
    the second-largest of k Gumbel draws exceeds λ log(1/ε − 1) (exactly for k = 2; for k > 2 the
    third coordinate's share, below exp(−D/λ), is neglected), and P(D > d) = k / (1 + (k − 1) e^d)
    (the top draw minus the maximum of the other k − 1 is logistic)."""
    n, eps = 4000, 0.01
    torch.manual_seed(0)
    d = ExpRelaxedCategorical(torch.tensor(temperature), logits=torch.zeros(n, k))
    top = d.rsample().exp().max(-1).values
    observed = float((top > 1 - eps).double().mean())
    expected = k / (1 + (k - 1) * (1 / eps - 1) ** temperature)
    se = math.sqrt(expected * (1 - expected) / n)
    assert abs(observed - expected) < 4 * se, (observed, expected, se)
    if temperature <= 0.05:
        assert observed > 0.8  # most draws are within 0.01 of a vertex
    log_density = d.log_prob(d.rsample())
    assert bool(torch.isfinite(log_density).all())  # stable where coordinates underflow


def test_relaxed_temperature_is_checked():
    prior = pvae.priors.StandardNormal(2)
    with pytest.raises(ValueError, match=r"relaxed_temperature=0.5 .*pass enumerate_y=False"):
        pvae.SemiSupervisedVAE(prior, K, relaxed_temperature=0.5)
    with pytest.raises(ValueError, match="relaxed_temperature must be a finite number > 0, got"):
        pvae.SemiSupervisedVAE(prior, K, enumerate_y=False, relaxed_temperature=0.0)
    with pytest.raises(TypeError, match="relaxed_temperature must be a number, got 'hot'"):
        pvae.SemiSupervisedVAE(prior, K, enumerate_y=False, relaxed_temperature="hot")


def test_fit_trains_a_relaxed_m2_on_digits_and_both_models_evaluate(digits):
    torch.manual_seed(0)
    m = pvae.SemiSupervisedVAE(
        pvae.priors.StandardNormal(4),
        10,
        enumerate_y=False,
        relaxed_temperature=0.5,
        hidden=(32,),
    )
    m.set_labels(partial_labels(digits.train.y, 5, seed=0))
    fit = pvae.fit(m, digits, objective="elbo", epochs=4, batch_size=100, lr=0.01, curve_ks=())
    elbos = [r["train_elbo"] for r in fit.history]
    assert all(math.isfinite(e) for e in elbos), elbos
    assert all(b > a for a, b in itertools.pairwise(elbos)), elbos  # the loss falls each epoch
    x = digits.test.observed()[:30]
    relaxed = pvae.log_px(m, x, k=20, seed=0).log_px  # the relaxed model's log p(x)
    m.relaxed_temperature, m.enumerate_y = None, True  # the discrete M2, y summed out
    discrete = pvae.log_px(m, x, k=20, seed=0).log_px
    assert bool(torch.isfinite(relaxed).all()) and bool(torch.isfinite(discrete).all())
    assert bool((relaxed < 0).all()) and bool((discrete < 0).all())  # log masses of binary x


# -- the config --------------------------------------------------------------------------------
def config(semi: dict, objective: str = "elbo"):
    from pvae.config import Config

    return Config.from_dict(
        {
            "data": {"name": "digits", "labels_per_class": 5},
            "model": {"latent_dim": 4, "encoder": {"hidden": [16]}, "semisupervised": semi},
            "train": {"objective": objective},
        }
    )


def test_config_builds_the_relaxed_m2():
    from pvae.config import build_vae, canonical

    cfg = config({"enumerate": False, "relaxed_temperature": 1})
    m = build_vae(cfg.model, (1, 8, 8))
    assert m.relaxed_temperature == 1.0 and not m.enumerate_y
    assert canonical(cfg)["model"]["semisupervised"]["relaxed_temperature"] == 1.0
    assert "relaxed_temperature = 1" in pvae.config.dumps_toml(cfg.to_dict())


@pytest.mark.parametrize(
    ("semi", "objective", "error", "match"),
    [
        (
            {"relaxed_temperature": 0.5},
            "enum_elbo",
            ValueError,
            r"relaxed_temperature = 0.5 draws y .*set model.semisupervised.enumerate = false "
            r"and train.objective = 'elbo'",
        ),
        (
            {"enumerate": False, "relaxed_temperature": 0.5},
            "iwae",
            ValueError,
            r"samples a relaxed y \(relaxed_temperature = 0.5\): train.objective must be "
            r"'elbo', got 'iwae'",
        ),
        (
            {"enumerate": False, "relaxed_temperature": -1},
            "elbo",
            ValueError,
            "model.semisupervised.relaxed_temperature must be a finite number > 0, got -1",
        ),
        (
            {"enumerate": False, "relaxed_temperature": "0.5"},
            "elbo",
            TypeError,
            "model.semisupervised.relaxed_temperature must be a number, got '0.5'",
        ),
        (
            {"enumerate": False, "temperature": 0.5},
            "elbo",
            ValueError,
            r"unknown key 'temperature' .*relaxed_temperature",
        ),
    ],
)
def test_config_refuses_what_makes_no_sense(semi, objective, error, match):
    with pytest.raises(error, match=match):
        config(semi, objective)
