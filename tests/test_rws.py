"""Reweighted wake-sleep through Pyro's ReweightedWakeSleep: the same losses as Pyro's class on
one datapoint, per-datapoint weights on a minibatch, wake-θ and wake-φ gradients unbiased for
their exact expectations (all 8^K latent tuples of a tiny binary model enumerated), one loss
for pvae.fit whose gradient reaches each side's own parameters, and training of a sigmoid
belief net."""

import math

import pyro
import pytest
import torch
from binary_toy import (
    GUIDE,
    MODEL,
    Toy,
    X,
    base_params,
    exact,
    exact_grads,
    trained_sbn,
    within,
)

from pvae.objectives import OBJECTIVES, RWS, make_objective
from pvae.program import as_program
from pvae.traces import log_weights

DRAWS = 2000


def test_rws_equals_pyros_reweighted_wake_sleep_on_one_datapoint():
    toy = Toy(base_params(), 1)
    x = X.expand(1, 2)
    torch.manual_seed(0)
    theirs = pyro.infer.ReweightedWakeSleep(num_particles=4, max_plate_nesting=1)._loss(
        toy.model, toy.guide, (x,), {}
    )
    torch.manual_seed(0)
    ours = RWS(num_particles=4)._loss(toy.model, toy.guide, (x,), {})
    for a, b in zip(theirs, ours, strict=True):
        assert float(a.detach()) == pytest.approx(float(b.detach()), abs=1e-12)
        ga = torch.autograd.grad(a, list(toy.parameters()), allow_unused=True)
        gb = torch.autograd.grad(b, list(toy.parameters()), allow_unused=True)
        for u, v in zip(ga, gb, strict=True):
            assert (u is None) == (v is None)
            if u is not None:
                torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


def test_rws_weights_each_datapoint_where_pyro_pools_the_minibatch():
    toy = Toy(base_params(), 3)
    x = torch.stack([X, -X, 2 * X])
    torch.manual_seed(1)
    lw = log_weights(as_program(toy), (x,), {}, 4, 1)[0].lw.detach()  # (4, 3)
    torch.manual_seed(1)
    ours, _ = RWS(num_particles=4)._loss(toy.model, toy.guide, (x,), {})
    torch.manual_seed(1)
    theirs, _ = pyro.infer.ReweightedWakeSleep(num_particles=4, max_plate_nesting=1)._loss(
        toy.model, toy.guide, (x,), {}
    )
    per_datapoint = -(lw.logsumexp(0) - math.log(4)).sum()
    pooled = -(lw.sum(1).logsumexp(0) - math.log(4))
    ours, theirs = ours.detach(), theirs.detach()
    assert float(ours) == pytest.approx(float(per_datapoint), abs=1e-10)
    assert float(theirs) == pytest.approx(float(pooled), abs=1e-10)
    assert abs(float(ours) - float(theirs)) > 0.1


@pytest.mark.parametrize("k", [2, 3])
def test_wake_gradients_are_unbiased_against_exact_enumeration(k):
    toy = Toy(base_params(), DRAWS)
    torch.manual_seed(0)
    theta, phi = RWS(num_particles=k)._loss(toy.model, toy.guide, (X.expand(DRAWS, 2),), {})
    theta_rows = toy.row_grads(-theta)
    phi_rows = toy.row_grads(-phi)
    p = {n: t.requires_grad_() for n, t in base_params().items()}
    values = exact(p, X, k)
    worst, name = within(theta_rows, exact_grads(values["bound"], p), MODEL)
    assert worst < 4, f"wake-theta off the exact gradient of {name} by {worst:.1f} s.e."
    wake_phi = exact_grads(values["wake_phi"], p)
    worst, name = within(phi_rows, wake_phi, GUIDE)
    assert worst < 4, f"wake-phi off its exact expectation at {name} by {worst:.1f} s.e."
    # wake-phi is not the bound's gradient in phi; the comparison tells them apart
    bound = exact_grads(values["bound"], p)
    assert within(phi_rows, bound, GUIDE)[0] > 6  # measured: 18 (k = 2), 10.9 (k = 3)
    # and each loss reaches only its own side's parameters
    assert all(float(theta_rows[n].abs().max()) == 0 for n in GUIDE)
    assert all(float(phi_rows[n].abs().max()) == 0 for n in MODEL)


def test_one_loss_for_fit_has_the_wake_theta_value_and_both_gradients():
    toy = Toy(base_params(), 5)
    x = X.expand(5, 2)
    rws = RWS(num_particles=3)
    torch.manual_seed(4)
    loss = rws.differentiable_loss(toy.model, toy.guide, x)
    torch.manual_seed(4)
    theta, phi = rws._loss(toy.model, toy.guide, (x,), {})
    assert float(loss.detach()) == pytest.approx(float(theta.detach()), abs=1e-12)
    got = torch.autograd.grad(loss, list(toy.parameters()))
    want = torch.autograd.grad(theta + phi, list(toy.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_rws_is_registered_and_checks_its_arguments():
    assert OBJECTIVES["rws"] is RWS
    assert isinstance(make_objective("rws", num_particles=4), RWS)
    with pytest.raises(ValueError, match="num_particles must be at least 2 for RWS"):
        make_objective("rws", num_particles=1)
    with pytest.raises(ValueError, match="insomnia must be 1.0"):
        RWS(num_particles=3, insomnia=0.5)


def test_fit_with_rws_trains_a_sigmoid_belief_net(digits):
    _sbn, res = trained_sbn(digits, "rws")
    train = [r["train_elbo"] for r in res.history]
    assert train[-1] > train[0], train
