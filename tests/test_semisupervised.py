"""SemiSupervisedVAE (Kingma et al. 2014, M2): exact objectives on a model whose bound has no
Monte Carlo error, labels through the data plate, log p(x) with sampled y, and training."""

import importlib.util
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pvae
from pvae.labels import partial_labels
from pvae.objectives.elbo import OBJECTIVES

K, D, P = 3, 2, 5  # classes, latent width, pixels
PROBS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


class PriorGuide(nn.Module):
    """q(z | x, y) = N(0, I) = p(z): log p(z) − log q(z | x, y) is 0 at every draw."""

    def forward(self, f: torch.Tensor) -> dist.TorchDistribution:
        zero = f.new_zeros(*f.shape[:-1], D)
        return dist.Normal(zero, 1.0).to_event(1)


def exact_model(alpha: float | None = None, **kw) -> pvae.SemiSupervisedVAE:
    """A decoder that reads y only, and q(z | x, y) = p(z): every bound is exact, so
    L(x, y) = log p(y) + log p(x | y) and U(x) = Σ_y q(y|x) [L(x, y) − log q(y|x)]."""
    torch.manual_seed(0)
    dec = nn.Linear(K + D, P)
    with torch.no_grad():
        dec.weight[:, K:] = 0
        dec.weight[:, :K] *= 4
    m = pvae.SemiSupervisedVAE(
        pvae.priors.StandardNormal(D),
        K,
        classifier=nn.Linear(P, K),
        encoder=PriorGuide(),
        decoder=dec,
        class_probs=PROBS.tolist(),
        alpha=alpha,
        data_shape=(P,),
        **kw,
    )
    return m.double()


def by_hand(m, x, y, n_total, n_labelled, alpha):
    """Per-datapoint J^α terms (eq. 9): U(x) for y = −1, L(x, y) + α/N_l log q(y|x) else."""
    dec = m.decoder.weight[:, :K].T + m.decoder.bias  # (K, P) logits of p(x | y)
    log_px_y = dist.Bernoulli(logits=dec).log_prob(x[:, None, :]).sum(-1)  # (B, K)
    log_joint = dist.Categorical(probs=m.class_probs).logits + log_px_y  # log p(x, y)
    log_q = torch.log_softmax(m.classifier(x), -1)
    u = (log_q.exp() * (log_joint - log_q)).sum(-1)
    lab = y >= 0
    yl = y.clamp(min=0)
    ll = (
        log_joint.gather(1, yl[:, None])[:, 0]
        + alpha / max(n_labelled, 1) * log_q.gather(1, yl[:, None])[:, 0]
    )
    return torch.where(lab, ll, u), torch.logsumexp(log_joint, -1)


def data(n=12):
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((n, P), 0.4, dtype=torch.float64), generator=g)
    y = torch.tensor([0, -1, 2, -1, -1, 1] * (n // 6))
    return x, y


def enum_loss(m, *args, **kw):
    return pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        m.model, m.guide, *args, **kw
    )


@pytest.mark.parametrize("alpha", [None, 0.0, 3.0])
def test_enumerated_minibatch_loss_is_eq9_exactly(alpha):
    m = exact_model(alpha)
    x, y = data()
    m.set_labels(y)
    n, nl = len(y), int((y >= 0).sum())
    a = 0.1 * n if alpha is None else alpha
    assert m.alpha_value == pytest.approx(a)
    idx = torch.tensor([0, 1, 3, 5, 8])  # labelled 0, 5, 8; unlabelled 1, 3
    loss = enum_loss(m, x[idx], size=n, subsample=idx)
    terms, _ = by_hand(m, x[idx], y[idx], n, nl, a)
    want = -(n / len(idx)) * terms.sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-12)
    # and its gradient, classifier included (through U's weights and the α term)
    g = torch.autograd.grad(loss, list(m.classifier.parameters()))
    h = torch.autograd.grad(want, list(m.classifier.parameters()))
    for a_, b_ in zip(g, h, strict=True):
        torch.testing.assert_close(a_, b_, rtol=1e-10, atol=1e-12)


def test_labelled_minibatches_are_a_stratified_sample_with_the_full_loss_as_mean():
    """With labelled_per_batch = B_l, a minibatch of B_l labelled and B_u unlabelled datapoints
    weighs them N_l / B_l and N_u / B_u: averaged over every such minibatch the loss is exactly
    −J^α. The uniform shuffle's weights (N / B each) average to another number on them."""
    from itertools import combinations

    x, y = data()
    n, lab, unl = len(y), (y >= 0).nonzero().squeeze(-1), (y < 0).nonzero().squeeze(-1)
    batches = [
        torch.tensor(a + b)
        for a in combinations(lab.tolist(), 2)
        for b in combinations(unl.tolist(), 3)
    ]
    mean = {}
    for b_l in (2, 0):
        m = exact_model(3.0, labelled_per_batch=b_l)
        m.set_labels(y)
        losses = [enum_loss(m, x[i], size=n, subsample=i).item() for i in batches]
        mean[b_l] = sum(losses) / len(losses)
    terms, _ = by_hand(m, x, y, n, len(lab), 3.0)
    assert mean[2] == pytest.approx(-terms.sum().item(), rel=1e-12)
    t_lab, t_unl = terms[lab].mean().item(), terms[unl].mean().item()
    assert mean[0] == pytest.approx(-n / 5 * (2 * t_lab + 3 * t_unl), rel=1e-12)
    assert abs(mean[0] - mean[2]) > 1e-2 * abs(mean[2])
    one = batches[7]
    terms, _ = by_hand(m, x[one], y[one], n, len(lab), 3.0)
    m.labelled_per_batch = 2
    want = -(len(lab) / 2 * terms[:2].sum() + len(unl) / 3 * terms[2:].sum())
    assert enum_loss(m, x[one], size=n, subsample=one).item() == pytest.approx(
        want.item(), rel=1e-12
    )


def test_fit_trains_on_the_modules_labelled_minibatches():
    from pvae.datasets import Split
    from pvae.distributed import DistInfo
    from pvae.training.step import minibatches, steps_per_epoch

    x, y = blobs(100, 0)
    m = pvae.SemiSupervisedVAE(
        pvae.priors.StandardNormal(2), 2, data_shape=(8,), hidden=(8,), labelled_per_batch=3
    )
    train, g = Split(x, y), torch.Generator().manual_seed(0)
    plain = list(minibatches(m, train, 16, g, None))  # no labels set: a uniform shuffle
    assert [len(i) for i, _ in plain] == [16] * 6 + [4]
    m.set_labels(partial_labels(y, 5, seed=0))
    got = list(minibatches(m, train, 16, g, None))
    assert len(got) == -(-90 // 13)
    assert all(int((m.labels[i] >= 0).sum()) == 3 and torch.equal(xb, x[i]) for i, xb in got)
    assert steps_per_epoch(m, 100, 16, None) == len(got)
    with pytest.raises(ValueError, match="batch_order gives its own minibatches, which a distr"):
        next(minibatches(m, train, 16, g, DistInfo(0, 2, 0)))
    with pytest.raises(ValueError, match="labelled_per_batch must be a positive integer, got -1"):
        pvae.SemiSupervisedVAE(pvae.priors.StandardNormal(2), 2, labelled_per_batch=-1)


def test_without_subsample_every_datapoint_is_unlabelled():
    m = exact_model()
    x, y = data()
    m.set_labels(y)
    terms, _ = by_hand(m, x, torch.full_like(y, -1), len(y), 0, 0.0)
    assert enum_loss(m, x).item() == pytest.approx(-terms.sum().item(), rel=1e-12)
    m.set_labels(None)
    idx = torch.arange(6)
    loss = enum_loss(m, x[idx], size=len(y), subsample=idx)
    terms, _ = by_hand(m, x[idx], torch.full((6,), -1), len(y), 0, 0.0)
    assert loss.item() == pytest.approx(-2 * terms.sum().item(), rel=1e-12)


def test_sampled_y_log_px_is_within_its_se_of_the_exact_marginal():
    m = exact_model(enumerate_y=False)
    x, _ = data()
    _, exact = by_hand(m, x, torch.full((len(x),), -1), len(x), 0, 0.0)
    est = pvae.log_px(m, x, k=400, seed=0)
    z = (est.log_px - exact) / est.se
    assert bool((z.abs() < 4).all()), z
    assert bool((est.se > 0).all())  # sampling y has Monte Carlo error; enumeration has none


def test_labels_are_checked():
    m = exact_model()
    x, _ = data()
    with pytest.raises(ValueError, match=r"labels must lie in \{-1, 0, ..., 2\}"):
        m.set_labels(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        m.set_labels(torch.rand(4))
    m.set_labels(torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="was given 7 labels, but the data plate has size 12"):
        enum_loss(m, x[:2], size=12, subsample=torch.arange(2))
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        pvae.SemiSupervisedVAE(pvae.priors.StandardNormal(2), 1)
    with pytest.raises(ValueError, match="class_probs must be 3 positive probabilities"):
        pvae.SemiSupervisedVAE(pvae.priors.StandardNormal(2), 3, class_probs=[0.5, 0.5, 0])
    with pytest.raises(ValueError, match="accuracy|one label per datapoint"):
        m.accuracy(x, torch.zeros(3))


def test_sites_and_generation():
    m = exact_model()
    x, y = data()
    m.set_labels(y)
    idx = torch.tensor([0, 1, 2])
    tr = pyro.poutine.trace(m.model).get_trace(x[idx], size=12, subsample=idx)
    sites = {n: s for n, s in tr.nodes.items() if s["type"] == "sample"}
    assert {"y", "z", "x", "y_labelled", "z_labelled", "x_labelled", "y_aux"} <= set(sites)
    assert sites["y"]["value"].shape == (1,) and sites["y_labelled"]["value"].tolist() == [0, 2]
    assert sites["x"]["scale"] == pytest.approx(12 / 3)  # N / B for every datapoint
    assert sites["x_labelled"]["scale"] == pytest.approx(12 / 3)
    drawn = pyro.infer.Predictive(m.model, num_samples=2)(None, batch_size=4)
    assert drawn["x"].shape == (2, 4, P) and drawn["y"].shape == (2, 4)
    assert m.sample(3).shape == (3, P) and m.reconstruct(x).shape == x.shape
    assert m.metrics(x, None) == {}
    assert m.metrics(x, y.clamp(min=0))["accuracy"] == m.accuracy(x, y.clamp(min=0))


def blobs(n, seed):
    """Two classes of 8 binary pixels: class 0 lights the first half, class 1 the second."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    p = torch.where(torch.arange(8) < 4, 0.9, 0.1)
    p = torch.where(y[:, None] == 0, p, 1 - p)
    return torch.bernoulli(p, generator=g), y


def test_trains_with_enumeration_from_few_labels():
    torch.manual_seed(0)
    x, y = blobs(300, 0)
    xt, yt = blobs(300, 1)
    m = pvae.SemiSupervisedVAE(pvae.priors.StandardNormal(2), 2, data_shape=(8,), hidden=(16,))
    m.set_labels(partial_labels(y, 3, seed=0))
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for idx in torch.randperm(300, generator=g).split(50):
            loss = enum_loss(m, x[idx], size=300, subsample=idx) / 300
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert m.accuracy(xt, yt) > 0.9
    assert math.isfinite(enum_loss(m, xt).item())


@pytest.mark.skipif("enum_elbo" not in OBJECTIVES, reason="needs fit's enum_elbo (issue 24 item 1)")
@pytest.mark.parametrize("labelled_per_batch", [0, 5])
def test_fit_with_enum_elbo_and_partial_labels(tmp_path, labelled_per_batch):
    from pvae.training.step import steps_per_epoch

    x, y = blobs(300, 0)
    xt, yt = blobs(300, 1)
    np.savez(tmp_path / "blobs.npz", x=x.numpy(), y=y.numpy())
    data = pvae.datasets.load(str(tmp_path / "blobs.npz"), val_fraction=0.1, test_fraction=0.1)
    torch.manual_seed(0)
    m = pvae.SemiSupervisedVAE(
        pvae.priors.StandardNormal(2),
        2,
        data_shape=(8,),
        hidden=(16,),
        labelled_per_batch=labelled_per_batch,
    )
    m.set_labels(partial_labels(data.train.y, 3, seed=0))
    fit = pvae.fit(m, data, objective="enum_elbo", epochs=4, batch_size=50, lr=0.02, curve_ks=())
    assert all(math.isfinite(r["train_elbo"]) for r in fit.history)
    n_u = len(data.train) - 6  # 3 labelled per class
    per_epoch = math.ceil(n_u / 45) if labelled_per_batch else math.ceil(len(data.train) / 50)
    assert fit.final["step"] == 4 * per_epoch == 4 * steps_per_epoch(m, len(data.train), 50, None)
    assert m.accuracy(xt, yt) > 0.9
    est = pvae.log_px(m, xt[:20], k=10)  # y summed out: needs log_px's enumeration too
    assert bool(torch.isfinite(est.log_px).all())


# -- the config: [model.semisupervised] and [data] labels_per_class ------------------------------
def m2_config(**semi):
    from pvae.config import Config

    return Config.from_dict(
        {
            "data": {"labels_per_class": 5},
            "model": {
                "latent_dim": 4,
                "encoder": {"hidden": [32]},
                "semisupervised": {"enumerate": False, **semi},
            },
            "train": {"objective": "elbo"},
        }
    )


def test_config_builds_m2_with_a_classifier_of_the_encoders_size():
    from pvae.config import build_vae, canonical, load_config
    from pvae.config.semisupervised import attach_labels

    cfg = m2_config(alpha=2)
    m = build_vae(cfg.model, (1, 8, 8))
    assert type(m) is pvae.SemiSupervisedVAE and m.num_classes == 10 and not m.enumerate_y
    assert m.alpha == 2.0
    widths = [(p.shape[1], p.shape[0]) for p in m.classifier.parameters() if p.dim() == 2]
    assert widths == [(64, 32), (32, 10)]  # model.encoder's MLP, to K logits
    enc = [(p.shape[1], p.shape[0]) for p in m.encoder.parameters() if p.dim() == 2]
    assert enc == [(64 + 10, 32), (32, 8)]
    data = pvae.datasets.load("digits", "dynamic")
    attach_labels(m, data, cfg.data)
    assert torch.bincount(m.labels[m.labels >= 0], minlength=10).tolist() == [5] * 10
    c = canonical(cfg)
    assert c["model"]["semisupervised"] == {
        "alpha": 2.0,
        "class_probs": None,
        "enumerate": False,
        "labelled_per_batch": 0,
        "num_classes": 10,
        "relaxed_temperature": None,
    }
    assert c["data"]["labels_per_class"] == 5
    path = pvae.config.dumps_toml(cfg.to_dict())
    assert "[model.semisupervised]" in path and "labels_per_class = 5" in path
    assert (
        canonical(
            load_config(
                None,
                ["data.labels_per_class=5"]
                + [
                    f"{k}={v}"
                    for k, v in (
                        ("model.latent_dim", 4),
                        ("model.encoder.hidden", "[32]"),
                        ("model.semisupervised.enumerate", "false"),
                        ("model.semisupervised.alpha", 2),
                        ("train.objective", '"elbo"'),
                    )
                ],
            )
        )
        == c
    )


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"model": {"semisupervised": {"classes": 3}}}, r"unknown key 'classes' in \[model.semi"),
        ({"data": {"labels_per_class": 10}}, "add a \\[model.semisupervised\\] table"),
        (
            {"model": {"semisupervised": {}}},
            "train.objective must be 'enum_elbo', got 'meanfield_elbo'",
        ),
        (
            {"model": {"semisupervised": {"num_classes": 1, "enumerate": False}}},
            "num_classes must be at least 2",
        ),
        (
            {
                "model": {"latent_dim": [4, 2], "semisupervised": {"enumerate": False}},
                "train": {"objective": "elbo"},
            },
            "builds on the one-layer VAE",
        ),
        (
            {
                "model": {"encoder": {"name": "conv"}, "semisupervised": {"enumerate": False}},
                "train": {"objective": "elbo"},
            },
            "needs model.encoder.name = 'mlp'",
        ),
        (
            {
                "model": {"semisupervised": {"enumerate": False, "labelled_per_batch": 128}},
                "train": {"objective": "elbo", "batch_size": 128},
            },
            r"labelled_per_batch must be in \[0, train.batch_size - 1\] = \[0, 127\]",
        ),
    ],
)
def test_config_errors_name_the_key(d, match):
    from pvae.config import Config

    with pytest.raises(ValueError, match=match):
        Config.from_dict(d)


def test_config_labelled_per_batch_must_be_an_integer():
    with pytest.raises(TypeError, match=r"labelled_per_batch must be an integer .*got 2.5"):
        m2_config(labelled_per_batch=2.5)
    assert (
        pvae.config.build_vae(m2_config(labelled_per_batch=7).model, (4,)).labelled_per_batch == 7
    )


@pytest.mark.skipif("enum_elbo" not in OBJECTIVES, reason="needs fit's enum_elbo (issue 24 item 1)")
def test_config_with_enumeration_loads():
    from pvae.config import Config, build_vae

    cfg = Config.from_dict(
        {"model": {"semisupervised": {"num_classes": 3}}, "train": {"objective": "enum_elbo"}}
    )
    assert build_vae(cfg.model, (4,)).enumerate_y


@pytest.mark.skipif("enum_elbo" not in OBJECTIVES, reason="needs fit's enum_elbo (issue 24 item 1)")
def test_the_shipped_m2_config_loads():
    from pathlib import Path

    from pvae.config import build_vae, load_config

    path = Path(__file__).parents[1] / "examples" / "configs" / "m2-fashion-mnist.toml"
    cfg = load_config(path)
    assert cfg.data.labels_per_class == 100
    m = build_vae(cfg.model, (1, 28, 28))
    assert m.num_classes == 10 and m.enumerate_y and m.latent_dim == 16
    assert m.alpha == 10 * 54_000 and m.labelled_per_batch == 32 < cfg.train.batch_size


needs_enumerating_log_px = pytest.mark.skipif(
    importlib.util.find_spec("pvae.enumeration") is None,
    reason="needs log_px's enumeration (issue 24 item 2)",
)


@needs_enumerating_log_px
def test_enumerated_log_px_is_exact_and_tighter_than_sampling_y():
    m = exact_model()
    x, _ = data()
    _, exact = by_hand(m, x, torch.full((len(x),), -1), len(x), 0, 0.0)
    for k in (1, 7):
        torch.testing.assert_close(pvae.log_px(m, x, k=k).log_px, exact, rtol=0, atol=1e-10)
    # a model whose z matters: at equal k, summing y out has the smaller s.e.
    torch.manual_seed(0)
    m = pvae.SemiSupervisedVAE(pvae.priors.StandardNormal(2), 3, data_shape=(P,), hidden=(8,))
    m = m.double()
    enum = pvae.log_px(m, x, k=50, seed=0)
    m.enumerate_y = False
    sampled = pvae.log_px(m, x, k=50, seed=0)
    assert float(enum.se.mean()) < float(sampled.se.mean())


def test_every_zoo_prior_likelihood_and_guide_trains_with_enumeration():
    from pvae.config import Config, build_vae
    from pvae.guides import GUIDES
    from pvae.likelihoods import LIKELIHOODS
    from pvae.priors import PRIORS

    x = torch.rand(6, 1, 2, 2)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    models = [
        pvae.SemiSupervisedVAE(PRIORS[p](2), 3, LIKELIHOODS[lik](), data_shape=(1, 2, 2))
        for p, lik in [(p, "bernoulli") for p in PRIORS] + [("mog", n) for n in LIKELIHOODS]
    ]
    for g in GUIDES:  # built from the config, q(z | x, y) with each guide of the zoo
        semi = {"semisupervised": {"enumerate": False}, "guide": {"name": g}}
        cfg = Config.from_dict({"model": {"latent_dim": 2, **semi}, "train": {"objective": "elbo"}})
        models.append(build_vae(cfg.model, (1, 2, 2)))
        models[-1].enumerate_y = True
    for m in models:
        xx = (x * 255).round() / 255  # on the discretized likelihoods' grid too
        loss = elbo.differentiable_loss(m.model, m.guide, xx)
        assert torch.isfinite(loss), m
        loss.backward()
