"""The fast path computes Pyro's objectives exactly: same loss and gradients for the same draws,
same training histories, and a one-line fallback where it does not apply."""

import itertools

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pvae
from pvae.objectives import IWAE
from pvae.objectives.fused import FusedObjective

X = torch.bernoulli(torch.full((6, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(0))
PYRO = {"elbo": Trace_ELBO, "meanfield_elbo": TraceMeanField_ELBO}


def small(prior):
    p = {
        "standard_normal": pvae.priors.StandardNormal(2),
        "mog": pvae.priors.MixtureOfGaussians(2, 3),
    }[prior]
    return pvae.VAE(p, data_shape=(1, 3, 3), hidden=(8,)).double()


def assert_same(a, ga, b, gb):
    """Equal losses and gradients (a parameter may be out of both graphs: free bits)."""
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-12)
    for u, v in zip(ga, gb, strict=True):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


def loss_and_grads(fn, vae):
    pyro.set_rng_seed(0)
    loss = fn()
    return loss, torch.autograd.grad(loss, list(vae.parameters()), allow_unused=True)


@pytest.mark.parametrize(
    ("kind", "prior", "particles", "weights"),
    list(
        itertools.product(
            ["elbo", "meanfield_elbo"],
            ["standard_normal", "mog"],
            [(1, False), (3, True), (3, False)],
            [(1.0, 0.0), (0.3, 0.0), (1.0, 1e6), (1.0, 1e-6)],
        )
    ),
)
def test_elbo_loss_and_gradients_equal_pyro(kind, prior, particles, weights, float64):
    vae = small(prior)
    vae.beta, vae.free_bits = weights
    x = X.double()
    p, vec = particles
    pyro_elbo = PYRO[kind](num_particles=p, vectorize_particles=vec, max_plate_nesting=1)
    a, ga = loss_and_grads(
        lambda: pyro_elbo.differentiable_loss(
            vae.model, vae.guide, x, size=60, subsample=torch.arange(6)
        ),
        vae,
    )
    b, gb = loss_and_grads(lambda: FusedObjective(kind, p, vec).loss(vae, x, 60), vae)
    assert_same(a, ga, b, gb)


@pytest.mark.parametrize("estimator", ["reparam", "stl", "dreg"])
@pytest.mark.parametrize("prior", ["standard_normal", "mog"])
def test_iwae_loss_and_gradients_equal_the_pyro_objective(estimator, prior, float64):
    vae = small(prior)
    x = X.double()
    a, ga = loss_and_grads(
        lambda: IWAE(5, estimator).differentiable_loss(vae.model, vae.guide, x, size=60), vae
    )
    b, gb = loss_and_grads(
        lambda: FusedObjective("iwae", 5, estimator=estimator).loss(vae, x, 60), vae
    )
    assert_same(a, ga, b, gb)


@pytest.mark.parametrize("objective", ["elbo", "meanfield_elbo", "iwae"])
def test_fast_and_pyro_training_give_the_same_history(objective, float64):
    # 37 datapoints in batches of 10: ragged last batches every epoch.
    x = torch.bernoulli(
        torch.full((37, 1, 3, 3), 0.4), generator=torch.Generator().manual_seed(1)
    ).double()
    hist = {}
    for fast in (True, False):
        torch.manual_seed(0)
        vae = pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(1, 3, 3), hidden=(8,)).double()
        kw = {"num_particles": 3, "estimator": "dreg"} if objective == "iwae" else {}
        res = pvae.fit(
            vae,
            x,
            objective=objective,
            batch_size=10,
            epochs=3,
            fast=fast,
            progress=False,
            device="cpu",
            **kw,
        )
        hist[fast] = res.history
    for a, b in zip(hist[True], hist[False], strict=True):
        assert a["step"] == b["step"]
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-9)


class CustomModel(pvae.VAE):
    def model(self, x, size=None, subsample=None, **kw):
        return super().model(x, size, subsample)


def test_a_model_the_fast_path_cannot_handle_falls_back_with_one_notice(capsys):
    vae = CustomModel(pvae.priors.StandardNormal(2), data_shape=(1, 3, 3), hidden=(8,))
    res = pvae.fit(vae, X, epochs=2, batch_size=4, progress=False, device="cpu")
    err = capsys.readouterr().err
    assert err.count("CustomModel overrides VAE.model; training through Pyro's") == 1
    assert res.final["step"] == 4


# The fused path is an optimization of the trace path: over every zoo component, the same loss and
# gradients for every objective and estimator, and the same log p(x), in float64.
from test_pyro_native import COMPONENTS, _ids  # noqa: E402
from test_zoo import make, tiny_data  # noqa: E402

TRACE = {
    "elbo": lambda: Trace_ELBO(max_plate_nesting=1),
    "meanfield_elbo": lambda: TraceMeanField_ELBO(max_plate_nesting=1),
    "iwae": None,
}


@pytest.mark.parametrize(
    ("kind", "estimator"),
    [
        ("elbo", None),
        ("meanfield_elbo", None),
        ("iwae", "reparam"),
        ("iwae", "stl"),
        ("iwae", "dreg"),
    ],
)
@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_fused_path_equals_the_trace_path_over_the_zoo(component, kind, estimator, float64):
    vae = make(**component)
    x = tiny_data(6).double()
    trace = IWAE(4, estimator) if kind == "iwae" else TRACE[kind]()
    a, ga = loss_and_grads(
        lambda: trace.differentiable_loss(vae.model, vae.guide, x, size=60, subsample=None), vae
    )
    fused = FusedObjective(kind, 4 if kind == "iwae" else 1, estimator=estimator or "reparam")
    b, gb = loss_and_grads(lambda: fused.loss(vae, x, 60), vae)
    assert_same(a, ga, b, gb)


@pytest.mark.parametrize("component", COMPONENTS, ids=_ids)
def test_fused_log_px_equals_the_trace_path_over_the_zoo(component, float64):
    vae = make(**component)
    x = tiny_data(6).double()
    fast = pvae.log_px(vae, x, k=64, seed=3)
    trace = pvae.log_px(vae, x, k=64, seed=3, fast=False)
    for f in ("log_px", "se", "ess"):
        torch.testing.assert_close(getattr(fast, f), getattr(trace, f), rtol=1e-10, atol=1e-10)
    a = pvae.bounds(vae, x, ks=(1, 8, 64), seed=3)
    b = pvae.bounds(vae, x, ks=(1, 8, 64), seed=3, fast=False)
    for k in (1, 8, 64):
        assert a.iwae[k] == pytest.approx(b.iwae[k], rel=1e-10)


@pytest.mark.parametrize("kind", ["elbo", "meanfield_elbo"])
@pytest.mark.parametrize("prior", ["standard_normal", "mog"])
@pytest.mark.parametrize(("beta", "free_bits"), [(0.3, 0.0), (1.0, 1e6), (0.7, 1e-6)])
def test_tensor_weight_equals_the_float_weight(kind, prior, beta, free_bits, float64):
    """The compiled path's KL weight (a tensor: β, or 0 selected on the device while free bits
    hold) gives the loss and gradients of the float weight Pyro's scale uses, for the same draws
    (the free-bits decision draws from q first in both)."""
    vae = small(prior)
    vae.beta, vae.free_bits = beta, free_bits
    x = X.double()
    fo = FusedObjective(kind)
    fo.prime(vae, x)
    a, ga = loss_and_grads(lambda: fo.loss(vae, x, 60), vae)
    b, gb = loss_and_grads(
        lambda: fo.raw_loss(vae, x, 60, torch.tensor(beta, dtype=torch.float64)), vae
    )
    # A masked KL leaves parameters out of the float path's graph; the tensor path multiplies
    # the term by 0: the same (zero) gradient.
    gb = [
        None if u is None and v is not None and not v.any() else v
        for u, v in zip(ga, gb, strict=True)
    ]
    assert_same(a, ga, b, gb)


# -- the capability: fused.supports accepts anything and decides "standard VAE" in one place -----
class DecoderOverride(pvae.VAE):
    def decode(self, z):
        return super().decode(z)


@pytest.mark.parametrize(
    ("module", "objective", "reason"),
    [
        (lambda: small("standard_normal"), None, None),
        (lambda: small("mog"), "iwae", None),
        (lambda: small("standard_normal"), "renyi", "objective 'renyi' is not one of the fused"),
        (lambda: small("standard_normal"), Trace_ELBO(), "objective a Trace_ELBO is not one of"),
        (
            lambda: CustomModel(pvae.priors.StandardNormal(2)),
            None,
            "CustomModel overrides VAE.model",
        ),
        (
            lambda: DecoderOverride(pvae.priors.StandardNormal(2)),
            "elbo",
            "DecoderOverride overrides VAE.decode",
        ),
        (lambda: pvae.HierarchicalVAE((3, 2)), "elbo", "a HierarchicalVAE is not a standard"),
        (lambda: None, None, "a NoneType is not a standard pvae.VAE"),
        (lambda: print, "elbo", "a builtin_function_or_method is not a standard pvae.VAE"),
        (lambda: torch.nn.Linear(2, 2), None, "a Linear is not a standard pvae.VAE"),
    ],
)
def test_supports_answers_for_any_object(module, objective, reason):
    from pvae.objectives.fused import supports

    got = supports(module(), objective)
    assert got == reason if reason is None else got.startswith(reason)


def test_supports_sees_a_method_replaced_on_the_instance():
    from pvae.objectives.fused import supports

    vae = small("standard_normal")
    vae.guide = lambda x, **kw: None
    assert supports(vae) == "this VAE replaces VAE.guide on the instance"
