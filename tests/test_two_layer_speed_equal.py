"""The trace path's training loss (:class:`pvae.training.step.TraceLoss`) computes what Pyro's
``Trace_ELBO`` computes, to the bit, whether or not a step runs Pyro's validation; and it runs
that validation on the first step and on each epoch's first step, not on the others."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pvae
from pvae.training.step import StepOptions, TraceLoss, TrainStep, fit_context, make_loss


def two_layer() -> pvae.HierarchicalVAE:
    torch.manual_seed(0)
    return pvae.HierarchicalVAE((3, 2), hidden=((8,), (6,)), data_shape=(1, 4, 4)).double()


def loss_and_grads(module, fn, x, idx, n):
    module.zero_grad(set_to_none=True)
    with fit_context():
        loss = fn(x, idx, n)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters()]


def one_layer() -> pvae.VAE:
    torch.manual_seed(0)
    return pvae.VAE(pvae.priors.StandardNormal(2), data_shape=(1, 4, 4)).double()


@pytest.mark.parametrize("kind", ["two-layer", "vae"])
def test_trace_loss_equals_pyro_trace_elbo_bitwise_in_float64(kind):
    x = torch.bernoulli(torch.full((12, 1, 4, 4), 0.4, dtype=torch.float64))
    idx, n = torch.arange(3, 15), 40
    m = two_layer() if kind == "two-layer" else one_layer()
    opts = StepOptions(objective="elbo", fast=False)
    loss = make_loss(m, opts, quiet=True)
    assert isinstance(loss, TraceLoss)
    elbo = opts.elbo  # Pyro's Trace_ELBO

    def before(x, idx, n):  # the step's loss as it was written before TraceLoss
        if kind == "vae":  # the plate over the dataset, the loss per datapoint of it
            return elbo.differentiable_loss(m.model, m.guide, x, size=n, subsample=idx) / n
        return elbo.differentiable_loss(m.model, m.guide, x) / x.shape[0]

    for step in range(3):  # step 0 runs Pyro's validation, steps 1 and 2 do not
        pyro.set_rng_seed(step)
        a, ga = loss_and_grads(m, loss, x, idx, n)
        pyro.set_rng_seed(step)
        b, gb = loss_and_grads(m, before, x, idx, n)
        assert a.dtype == torch.float64 and torch.equal(a, b), step
        assert all(torch.equal(u, v) for u, v in zip(ga, gb, strict=True)), step


def test_free_bits_and_beta_weights_give_the_same_loss_without_validation():
    x = torch.bernoulli(torch.full((10, 1, 4, 4), 0.4, dtype=torch.float64))
    idx = torch.arange(10)
    m = two_layer()
    m.beta, m.free_bits = 0.5, 0.01
    loss = make_loss(m, StepOptions(objective="elbo"), quiet=True)
    values = []
    for _ in range(2):  # the first call validates, the second does not; same draws
        pyro.set_rng_seed(5)
        values.append(loss_and_grads(m, loss, x, idx, 10))
    assert torch.equal(values[0][0], values[1][0])
    assert all(torch.equal(u, v) for u, v in zip(values[0][1], values[1][1], strict=True))


class Checked(torch.nn.Module):
    """A program whose guide gives a negative scale once ``bad`` is set: only Pyro's
    distribution validation refuses it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.bad = False

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        scale = -self.w if self.bad else self.w
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * self.w, scale.expand_as(x)))


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro's own notice
def test_validation_runs_on_the_first_step_and_each_epochs_first_step_only():
    prog = Checked()
    step = TrainStep(prog, StepOptions(objective="elbo"), torch.device("cpu"), None, 0, True)
    x, idx = torch.randn(4), torch.arange(4)
    with fit_context():
        prog.bad = True
        with pytest.raises(ValueError, match="scale"):
            step(x, idx, 4)  # the first step validates
        step(x, idx, 4)  # later steps do not: the NaN loss is the divergence check's to name
        step.begin_epoch()
        with pytest.raises(ValueError, match="scale"):
            step(x, idx, 4)
        step(x, idx, 4)
