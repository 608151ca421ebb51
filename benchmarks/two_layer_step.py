"""Training speed of a two-stochastic-layer VAE: pvae's trace path against a hand-written PyTorch
step of the same math, in one process (issue: hierarchical VAEs train through Pyro's traces).

    python benchmarks/two_layer_step.py                  # CPU, batches 20 128 1000
    python benchmarks/two_layer_step.py --device cuda

The model is the IWAE paper's two-layer architecture (Burda et al. 2015, section 5) on 28×28
binary images: x -> [200, 200 tanh] -> z1 (100) -> [100, 100 tanh] -> z2 (50) and back, as
built by ``pvae.HierarchicalVAE((100, 50), hidden=((200, 200), (100, 100)))``. Three steps on
the same weights and the same minibatch:

* ``hand``: the negative ELBO written out with tensors (reparameterized z1, z2; Gaussian and
  Bernoulli log densities in closed form), one Adam update;
* ``pvae``: what :func:`pvae.fit` runs for this model, Pyro's ``Trace_ELBO`` over the model and
  guide traces (the trace path: no fused shortcut exists for it), one Adam update;
* ``pyro svi``: ``pyro.infer.SVI`` with ``pyro.optim.Adam`` on ``m.model``/``m.guide``, Pyro's
  own route (parameters announced as param sites every step).

Per-step time is the median over interleaved rounds; ratios are against ``hand`` (1.0 = same
speed), taken round by round and printed as median [quartiles] (as in ``train_step.py``). Before
timing, the hand-written loss is checked equal to Pyro's for the same draws."""

from __future__ import annotations

import argparse
import copy
import math

import pyro
import torch
import torch.nn.functional as F
from _timing import ratio_text
from pyro.infer import SVI, Trace_ELBO
from train_step import per_step, update  # the one-layer benchmark's batch and Adam update

import pvae
from pvae.training.step import StepOptions, fit_context, make_loss, make_optimizer

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def build(device: torch.device) -> pvae.HierarchicalVAE:
    torch.manual_seed(0)
    m = pvae.HierarchicalVAE((100, 50), hidden=((200, 200), (100, 100)), data_shape=(1, 28, 28))
    return m.to(device)


def _normal(h: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    loc, raw = h.split(d, dim=-1)
    return loc, F.softplus(raw) + 1e-4  # DiagonalNormal's parametrization


def _log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - HALF_LOG_2PI).sum(-1)


def hand_loss(nets: dict[str, torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Negative ELBO per datapoint, one reparameterized draw per layer (Trace_ELBO's math)."""
    loc1, s1 = _normal(nets["enc1"](x), 100)
    z1 = loc1 + s1 * torch.randn_like(loc1)
    loc2, s2 = _normal(nets["enc2"](z1), 50)
    z2 = loc2 + s2 * torch.randn_like(loc2)
    cloc, cs = _normal(nets["cond"](z2), 100)
    logits = nets["dec"](z1).flatten(1)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(-1)
    log_p = log_lik + _log_normal(z1, cloc, cs) + (-0.5 * z2**2 - HALF_LOG_2PI).sum(-1)
    log_q = _log_normal(z1, loc1, s1) + _log_normal(z2, loc2, s2)
    return -(log_p - log_q).mean()


def hand_nets(m: pvae.HierarchicalVAE) -> dict[str, torch.nn.Module]:
    """Copies of the model's networks: same initial weights, updated independently."""
    return copy.deepcopy(
        {
            "enc1": m.encoders[0].net,
            "enc2": m.encoders[1].net,
            "cond": m.conditionals[0].net,
            "dec": m.decoder,
        }
    )


def steps(device: torch.device) -> dict:
    m = build(device)
    nets = hand_nets(m)
    params = [p for net in nets.values() for p in net.parameters()]
    hand_opt = make_optimizer("adam", params, 1e-3, None)
    pvae_model = build(device)
    loss_fn = make_loss(pvae_model, StepOptions(objective="elbo"))
    pvae_opt = make_optimizer("adam", pvae_model.parameters(), 1e-3, None)
    svi_model = build(device)
    svi = SVI(svi_model.model, svi_model.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def pvae_step(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with fit_context():
            return update(pvae_opt, loss_fn(x, idx, len(x)))

    return {
        "hand": lambda x, idx: update(hand_opt, hand_loss(nets, x)),
        "pvae": pvae_step,
        "pyro svi": lambda x, idx: svi.step(x) / len(x),
    }


def check_equal(device: torch.device) -> float:
    """|hand − Pyro| for the same draws (float64): the two compute the same number."""
    m = build(device).double()
    nets = hand_nets(m)
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.3, device=device, dtype=torch.float64))
    pyro.set_rng_seed(1)
    a = float(hand_loss(nets, x).detach())
    pyro.set_rng_seed(1)
    with fit_context():
        b = float(Trace_ELBO().differentiable_loss(m.model, m.guide, x).detach()) / len(x)
    return abs(a - b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[20, 128, 1000])
    p.add_argument("--rounds", type=int, default=40, help="timed rounds per batch size")
    a = p.parse_args()
    device = torch.device(a.device)
    print(
        f"two-layer VAE training step on {device}, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"hand-written loss vs Pyro's Trace_ELBO, same draws: |diff| = {check_equal(device):.2e}")
    print(
        f"{'batch':>6} {'hand ms':>9} {'pvae ms':>9} {'svi ms':>9} {'pvae/hand [IQR]':>22} "
        f"{'svi/hand [IQR]':>22}"
    )
    for b in a.batches:
        t = per_step(steps(device), device, b, 5 if b <= 128 else 2, a.rounds)
        print(
            f"{b:>6} {1e3 * t.seconds('hand'):>9.3f} {1e3 * t.seconds('pvae'):>9.3f} "
            f"{1e3 * t.seconds('pyro svi'):>9.3f} {ratio_text(t, 'pvae'):>22} "
            f"{ratio_text(t, 'pyro svi'):>22}",
            flush=True,
        )


if __name__ == "__main__":
    main()
