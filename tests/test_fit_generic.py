"""pvae.fit trains a model written in plain Pyro: an nn.Module with model/guide methods, two latent
sites per datapoint, not built from pvae's classes. Training, the run folder, exact resume,
validation curves and the errors for what only a pvae.VAE can do."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

import pvae
from pvae.datasets import DataSplits, Split
from pvae.training import drop_timings

D, Z = 6, 4  # data and first-latent dimensions


class Decoder(PyroModule):
    """z to the mean of x, with a positive gain held as a PyroParam (a parameter Pyro keeps in
    sync with its global store: fit must still train this module's own tensor)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z, 16), nn.Tanh(), nn.Linear(16, D))
        self.gain = PyroParam(torch.ones(D), constraint=constraints.positive)

    def forward(self, z):
        return self.gain * self.net(z)


class ScaleVAE(PyroModule):
    """z ~ N(0, I_4) and a log-scale s ~ N(0, 1) per datapoint; x | z, s ~ N(decoder(z), e^{2s} I).
    The guide: q(z | x) q(s | x), both from one encoder."""

    def __init__(self):
        super().__init__()
        self.decoder = Decoder()
        self.encoder = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 2 * Z + 2))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            s = pyro.sample("s", dist.Normal(x.new_zeros(()), 1.0))
            loc, scale = self.decoder(z), s.exp().unsqueeze(-1)
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def guide(self, x):
        z_loc, z_raw, s_loc, s_raw = self.encoder(x).split([Z, Z, 1, 1], -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(z_loc, F.softplus(z_raw) + 1e-3).to_event(1))
            s_scale = F.softplus(s_raw).squeeze(-1) + 1e-3
            pyro.sample("s", dist.Normal(s_loc.squeeze(-1), s_scale))


def new_module(seed=0):
    torch.manual_seed(seed)
    return ScaleVAE()


def toy_data(n=96):
    """A nonlinear 2-factor model with a per-datapoint noise scale."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, generator=g)
    w = torch.randn(2, D, generator=g)
    scale = (0.5 * torch.randn(n, 1, generator=g) - 1.0).exp()
    return torch.tanh(z @ w) + scale * torch.randn(n, D, generator=g)


def toy_splits():
    x = toy_data()
    return DataSplits("toy", Split(x[:64], None), Split(x[64:80], None), Split(x[80:], None))


def fit_quietly(module, data, **kwargs):
    kwargs = {"batch_size": 16, "lr": 1e-2, "progress": False, "device": "cpu", **kwargs}
    return pvae.fit(module, data, **kwargs)


def states_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    ("objective", "particles"), [("meanfield_elbo", 1), ("elbo", 1), ("iwae", 5)]
)
def test_fit_trains_every_parameter_and_the_loss_falls(objective, particles):
    x = Split(toy_data()[:64], None)
    m = new_module()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loss = -pvae.evaluate_elbo(m, x.x, num_samples=100).elbo  # per datapoint, nats
    res = fit_quietly(m, x, epochs=20, objective=objective, num_particles=particles)
    after = -pvae.evaluate_elbo(m, x.x, num_samples=100).elbo
    assert res.vae is m and [r["epoch"] for r in res.history] == list(range(1, 21))
    for k, v in m.state_dict().items():
        assert not torch.equal(v, before[k]), f"{k} did not change"
    # Untrained: about 23 nats per datapoint; trained (ELBO/IWAE): about 8 to 15. The Monte Carlo
    # standard error of each mean is below 1 nat.
    fall = float(loss.mean() - after.mean())
    assert fall > 7.0, fall


def test_module_keeps_its_own_parameters_whatever_pyros_global_store_holds():
    x = toy_data()[:64]
    other = new_module(seed=1)
    # Running another instance under Pyro leaves its gain in the global store as "decoder.gain".
    pyro.infer.Trace_ELBO().loss(other.model, other.guide, x)
    assert "decoder.gain" in pyro.get_param_store()
    m = new_module()
    gain, start = m.decoder.gain_unconstrained, m.decoder.gain_unconstrained.detach().clone()
    fit_quietly(m, x, epochs=2)
    assert m.decoder.gain_unconstrained is gain  # not swapped for the store's tensor
    assert not torch.equal(gain, start)
    assert pyro.get_param_store()._params["decoder.gain"] is other.decoder.gain_unconstrained


def test_run_folder_holds_checkpoint_metrics_and_curves(tmp_path):
    res = fit_quietly(
        new_module(),
        toy_splits(),
        epochs=2,
        run_dir=tmp_path / "r",
        curve_ks=(2, 10, 100),  # k̂ needs more than a handful of draws to fit a tail
        curve_every=1,
    )
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "checkpoint.pt",
        "curves.png",
        "metrics.json",
    ]
    assert {"val_elbo", "val_elbo_se", "val_recon", "val_kl", "val_iwae_10", "val_log_px"} <= set(
        res.final
    )
    assert res.final["val_iwae_10"] >= res.final["val_iwae_2"] - 1.0
    assert 0.0 <= res.final["val_log_px_khat_frac"] <= 1.0  # how far val_log_px can be trusted
    loaded = new_module(seed=1)
    ckpt = pvae.training.load_run_state(tmp_path / "r", loaded)
    assert ckpt["epoch"] == 2 and ckpt["data_shape"] == [D]
    states_equal(loaded.state_dict(), res.vae.state_dict())


def test_resume_equals_uninterrupted_training(tmp_path):
    kwargs = {"curve_ks": (2, 10), "curve_every": 1}  # curve draws must be reproduced as well
    full = fit_quietly(new_module(), toy_splits(), epochs=4, run_dir=tmp_path / "full", **kwargs)
    fit_quietly(new_module(), toy_splits(), epochs=2, run_dir=tmp_path / "part", **kwargs)
    resumed = fit_quietly(
        new_module(seed=1), toy_splits(), epochs=4, run_dir=tmp_path / "part", resume=True, **kwargs
    )
    assert "val_log_px" in full.history[3]
    assert drop_timings(resumed.history) == drop_timings(full.history)
    states_equal(resumed.vae.state_dict(), full.vae.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"beta": 0.5}, "beta=0.5"),
        ({"warmup_steps": 10}, "warmup_steps=10"),
        ({"free_bits": 0.1}, "free_bits=0.1"),
    ],
)
def test_vae_only_options_are_refused_for_another_module(kwargs, name, tmp_path):
    with pytest.raises(ValueError, match=rf"{name} applies to a pvae.VAE .*not to a ScaleVAE"):
        fit_quietly(new_module(), toy_data(), run_dir=tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


class NoParameters(nn.Module):
    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)

    def guide(self, x):
        pass


class PlainPair:
    def model(self, x):
        pass

    def guide(self, x):
        pass


@pytest.mark.parametrize(
    ("module", "err", "match"),
    [
        (
            nn.Linear(D, D),
            TypeError,
            r"model\(x\) and guide\(x\) .*a Linear, has no model or guide",
        ),
        (PlainPair(), TypeError, "must be an nn.Module .*got PlainPair"),
        (NoParameters(), ValueError, "NoParameters passed to fit has no floating-point parameters"),
    ],
)
def test_what_fit_cannot_train_is_refused_by_name(module, err, match, tmp_path):
    with pytest.raises(err, match=match):
        fit_quietly(module, toy_data(), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


class CVAE(nn.Module):
    """A conditional VAE on the digit classes (Sohn et al. 2015), in plain Pyro: z ~ N(0, I),
    x | z, y ~ Bernoulli(f(z, y)), q(z | x, y)."""

    def __init__(self, z_dim=4, pixels=64, classes=10):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.enc = nn.Sequential(
            nn.Linear(pixels + classes, 64), nn.Tanh(), nn.Linear(64, 2 * z_dim)
        )
        self.dec = nn.Sequential(nn.Linear(z_dim + classes, 64), nn.Tanh(), nn.Linear(64, pixels))

    def model(self, x, y):
        onehot = F.one_hot(y.long(), self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            h = torch.cat([z, onehot.expand(*z.shape[:-1], -1)], -1)
            pyro.sample("x", dist.Bernoulli(logits=self.dec(h)).to_event(1), obs=x.flatten(1))

    def guide(self, x, y):
        onehot = F.one_hot(y.long(), self.classes).to(x.dtype)
        loc, raw = self.enc(torch.cat([x.flatten(1), onehot], -1)).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))


def test_labels_train_a_conditional_vae_and_reach_validation_and_estimators(digits):
    torch.manual_seed(0)
    m = CVAE()
    res = pvae.fit(
        m,
        digits,
        labels=True,
        objective="iwae",
        num_particles=3,
        epochs=6,
        batch_size=64,
        curve_ks=(2, 10),
        curve_every=3,
        progress=False,
        device="cpu",
    )
    first, last = res.history[0]["val_elbo"], res.history[-1]["val_elbo"]
    assert last > first + 5, (first, last)
    assert "val_log_px" in res.history[-1]
    x, y = digits.test.observed(), digits.test.y
    right = pvae.log_px(m, x, k=100, kwargs={"y": y}, seed=0)
    # The labels matter: conditioning on wrong classes must cost likelihood.
    wrong = pvae.log_px(m, x, k=100, kwargs={"y": (y + 1) % 10}, seed=0)
    diff = right.log_px - wrong.log_px
    assert float(diff.mean()) > 4 * float(diff.std() / len(diff) ** 0.5)


def test_labels_are_refused_where_they_would_be_ignored_or_missing(digits):
    vae = pvae.VAE(pvae.priors.StandardNormal(2))
    with pytest.raises(ValueError, match="VAE.model takes no argument y"):
        pvae.fit(vae, digits, labels=True, epochs=1, progress=False, device="cpu")
    with pytest.raises(ValueError, match="labels=True needs data with labels"):
        pvae.fit(CVAE(), digits.train.x, labels=True, epochs=1, progress=False, device="cpu")
