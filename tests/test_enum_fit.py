"""Training with enumerated discrete sites (issue 24, item 1): an M2-shaped model (Kingma et al.
2014) whose guide enumerates the class y (config_enumerate) and samples z, trained by pvae.fit
through Pyro's TraceEnum_ELBO, by name (``objective="enum_elbo"``) and as an instance; the
validation ELBO and curve points sum y out; resume reproduces an uninterrupted run."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

import pvae
from pvae.datasets import DataSplits, Split
from pvae.training import drop_timings

D, CLASSES, Z, H = 8, 3, 2, 16


def _cat(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dimension after broadcasting the others (y enumerated)."""
    shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(*shape, p.shape[-1]) for p in parts], -1)


class M2(nn.Module):
    """y ~ Cat(1/K), z ~ N(0, I), x | y, z ~ N(f(z, y), 0.3² I); q(y | x) q(z | x, y)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.classify = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, CLASSES))
        self.encode = nn.Sequential(nn.Linear(D + CLASSES, H), nn.Tanh(), nn.Linear(H, 2 * Z))
        self.decode = nn.Sequential(nn.Linear(Z + CLASSES, H), nn.Tanh(), nn.Linear(H, D))

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(CLASSES)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decode(_cat(z, y)), 0.3).to_event(1), obs=x)

    @config_enumerate
    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=self.classify(x)))
            loc, raw = self.encode(_cat(x, y)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1))


class Nested(M2):
    """x in a second plate: two plates nested, y's enumeration dimension must be -3."""

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(CLASSES)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            with pyro.plate("copies", 1, dim=-2):
                loc = self.decode(_cat(z, y))
                pyro.sample("x", dist.Normal(loc, 0.3).to_event(1), obs=x)


def splits(n: int = 90) -> DataSplits:
    """Three clusters in 8 dimensions."""
    g = torch.Generator().manual_seed(0)
    centers = 2 * torch.randn(CLASSES, D, generator=g)
    x = centers[torch.arange(n) % CLASSES] + 0.3 * torch.randn(n, D, generator=g)
    return DataSplits("clusters", Split(x[:60], None), Split(x[60:75], None), Split(x[75:], None))


def fit(module: nn.Module, **kwargs):
    base = {"batch_size": 20, "lr": 2e-2, "progress": False, "device": "cpu", "curve_every": 1}
    return pvae.fit(module, splits(), **{**base, **kwargs})


@pytest.mark.parametrize("objective", ["enum_elbo", "instance"])
def test_m2_trains_with_trace_enum_elbo(objective):
    obj = TraceEnum_ELBO(max_plate_nesting=1) if objective == "instance" else objective
    res = fit(M2(), objective=obj, epochs=12, curve_ks=(2, 8), quiet=True)
    h = res.history
    first, last = h[0], h[-1]
    msg = f"train_elbo {[round(r['train_elbo'], 2) for r in h]}"
    assert last["train_elbo"] > first["train_elbo"] + 5, msg
    assert last["val_elbo"] > first["val_elbo"] + 5, msg
    # The validation numbers sum y out: IWAE_8 ≥ ELBO up to Monte Carlo error.
    assert all(math.isfinite(r["val_log_px"]) for r in h)
    assert last["val_iwae_8"] > last["val_elbo"] - 3 * last["val_elbo_se"], last


def test_enum_elbo_resume_equals_uninterrupted(tmp_path):
    kw = {"objective": "enum_elbo", "curve_ks": (2, 8), "quiet": True}
    full = fit(M2(), epochs=4, run_dir=tmp_path / "full", **kw)
    fit(M2(), epochs=2, run_dir=tmp_path / "part", **kw)
    resumed = fit(M2(seed=1), epochs=4, run_dir=tmp_path / "part", resume=True, **kw)
    assert drop_timings(resumed.history) == drop_timings(full.history)
    for name, tensor in full.vae.state_dict().items():
        assert torch.equal(tensor, resumed.vae.state_dict()[name]), name


def test_enum_elbo_sets_the_plate_nesting_from_the_traces():
    obj = TraceEnum_ELBO()  # Pyro's default: infinity, guessed at the first step otherwise
    fit(M2(), objective=obj, epochs=1, curve_ks=(), quiet=True)
    assert obj.max_plate_nesting == 1
    vec = TraceEnum_ELBO(num_particles=3, vectorize_particles=True)
    fit(M2(), objective=vec, epochs=1, curve_ks=(), quiet=True)
    assert vec.max_plate_nesting == 2
    res = fit(Nested(), objective="enum_elbo", epochs=1, curve_ks=(2,), quiet=True)
    assert math.isfinite(res.final["val_log_px"]), res.final


def test_enum_elbo_without_enumerated_sites_is_refused():
    vae = pvae.VAE(pvae.priors.StandardNormal(2), pvae.likelihoods.Gaussian(), hidden=(8,))
    with pytest.raises(ValueError, match=r"objective 'enum_elbo' .* have none"):
        fit(vae, objective="enum_elbo", epochs=1, curve_ks=())


def test_too_small_max_plate_nesting_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"TraceEnum_ELBO\(max_plate_nesting=1\) is smaller"):
        fit(Nested(), objective=TraceEnum_ELBO(max_plate_nesting=1), epochs=1, curve_ks=())


def test_enumeration_validation_cannot_sum_out_is_refused_before_training(tmp_path):
    class InnerEnum(M2):
        """y enumerated per element of a plate inside the data plate."""

        def model(self, x):
            with pyro.plate("data", x.shape[0]), pyro.plate("parts", 2, dim=-2):
                pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(CLASSES)))
                pyro.sample("x", dist.Normal(x, 1.0).to_event(1), obs=x)

        @config_enumerate
        def guide(self, x):
            with pyro.plate("data", x.shape[0]), pyro.plate("parts", 2, dim=-2):
                pyro.sample("y", dist.OneHotCategorical(logits=self.classify(x)))

    with pytest.raises(ValueError, match=r"guide site 'y' is enumerated inside plate 'parts'"):
        fit(InnerEnum(), objective="enum_elbo", epochs=1, curve_ks=(), run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
