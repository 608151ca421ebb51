"""Training speed of a two-stochastic-layer VAE: pvae's trace path against a hand-written PyTorch
step of the same math, in one process (issue: hierarchical VAEs train through Pyro's traces).

    python benchmarks/two_layer_step.py                  # CPU, batches 20 128 1000, both
    python benchmarks/two_layer_step.py --device cuda
    python benchmarks/two_layer_step.py --inference top_down --threads 1

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

``--inference top_down`` times the same sizes with top-down inference
(:class:`pvae.ladder.LadderVAE`, Sønderby et al. 2016): its ``hand`` step runs the model's own
networks (``bottom_up``, ``estimates``, ``pair``, the decoder) with the log densities written
out, each conditional prior computed once; the row is skipped, with a message, where
``pvae.ladder`` is absent.

Per-step time is the median over interleaved rounds; ratios are against ``hand`` (1.0 = same
speed), taken round by round and printed as median [quartiles] (as in ``train_step.py``). Before
timing, the hand-written loss is checked equal to Pyro's for the same draws. On a shared machine
use ``--threads 1`` and ``--clock cpu`` (the thread's CPU time, which other processes' load
barely moves)."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import time
from collections.abc import Callable

import _timing
import pyro
import torch
import torch.nn.functional as F
from _timing import ratio_text
from pyro.infer import SVI, Trace_ELBO
from train_step import per_step, update  # the one-layer benchmark's batch and Adam update

import pvae
from pvae.training.step import StepOptions, fit_context, make_loss, make_optimizer

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


INFERENCE = ("bottom_up", "top_down")


def build(device: torch.device, inference: str = "bottom_up") -> torch.nn.Module:
    """The benchmark's two-layer model, same initial weights every call."""
    torch.manual_seed(0)
    if inference == "top_down":
        from pvae.ladder import LadderVAE  # optional: main may not have it yet

        m = LadderVAE((100, 50), hidden=((200, 200), (100, 100)), data_shape=(1, 28, 28))
    else:
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


def ladder_hand_loss(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Negative ELBO per datapoint of a top-down model, one reparameterized draw per layer, from
    top to bottom as its guide draws (Trace_ELBO's math): the model's networks, the log densities
    written out, and p(z_l | z_{l+1}) evaluated once (where the guide merges it into q)."""
    est = m.estimates(m.bottom_up(x))
    z, log_w = None, 0.0
    for i in reversed(range(m.num_layers)):
        q, p, _ = m.pair(i, est[i], z)
        loc, scale = q.base_dist.loc, q.base_dist.scale
        z = loc + scale * torch.randn_like(loc)
        log_w = log_w - _log_normal(z, loc, scale)
        if i == m.num_layers - 1:
            log_w = log_w + (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)  # the standard normal on top
        else:
            log_w = log_w + _log_normal(z, p.base_dist.loc, p.base_dist.scale)
    logits = m.decoder(z).flatten(1)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(-1)
    return -(log_lik + log_w).mean()


def hand_step_of(m: torch.nn.Module, inference: str) -> tuple[Callable, list]:
    """The hand-written loss of ``m`` and the parameters it trains."""
    if inference == "top_down":
        twin = copy.deepcopy(m)  # same initial weights, updated independently

        def loss(x: torch.Tensor) -> torch.Tensor:
            with pyro.validation_enabled(False):  # plain tensors: no argument checks
                return ladder_hand_loss(twin, x)

        return loss, list(twin.parameters())
    nets = hand_nets(m)
    return (lambda x: hand_loss(nets, x)), [p for net in nets.values() for p in net.parameters()]


def steps(device: torch.device, inference: str = "bottom_up") -> dict:
    m = build(device, inference)
    hand, params = hand_step_of(m, inference)
    hand_opt = make_optimizer("adam", params, 1e-3, None)
    pvae_model = build(device, inference)
    loss_fn = make_loss(pvae_model, StepOptions(objective="elbo"))
    pvae_opt = make_optimizer("adam", pvae_model.parameters(), 1e-3, None)
    svi_model = build(device, inference)
    svi = SVI(svi_model.model, svi_model.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    def pvae_step(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with fit_context():
            return update(pvae_opt, loss_fn(x, idx, len(x)))

    return {
        "hand": lambda x, idx: update(hand_opt, hand(x)),
        "pvae": pvae_step,
        "pyro svi": lambda x, idx: svi.step(x) / len(x),
    }


def check_equal(device: torch.device, inference: str = "bottom_up") -> float:
    """|hand − Pyro| for the same draws (float64): the two compute the same number."""
    m = build(device, inference).double()
    hand, _ = hand_step_of(m, inference)
    x = torch.bernoulli(torch.full((16, 1, 28, 28), 0.3, device=device, dtype=torch.float64))
    pyro.set_rng_seed(1)
    a = float(hand(x).detach())
    pyro.set_rng_seed(1)
    with fit_context():
        b = float(Trace_ELBO().differentiable_loss(m.model, m.guide, x).detach()) / len(x)
    return abs(a - b)


def table(device: torch.device, inference: str, batches: list[int], rounds: int) -> None:
    """One block of rows: each batch size's per-step times and ratios."""
    print(
        f"{inference}: hand-written loss vs Pyro's Trace_ELBO, same draws: "
        f"|diff| = {check_equal(device, inference):.2e}"
    )
    print(
        f"{'batch':>6} {'hand ms':>9} {'pvae ms':>9} {'svi ms':>9} {'pvae/hand [IQR]':>22} "
        f"{'svi/hand [IQR]':>22}"
    )
    for b in batches:
        t = per_step(steps(device, inference), device, b, 5 if b <= 128 else 2, rounds)
        print(
            f"{b:>6} {1e3 * t.seconds('hand'):>9.3f} {1e3 * t.seconds('pvae'):>9.3f} "
            f"{1e3 * t.seconds('pyro svi'):>9.3f} {ratio_text(t, 'pvae'):>22} "
            f"{ratio_text(t, 'pyro svi'):>22}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[20, 128, 1000])
    p.add_argument("--rounds", type=int, default=40, help="timed rounds per batch size")
    p.add_argument(
        "--inference", choices=[*INFERENCE, "both"], default="both", help="which two-layer model"
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this thread's CPU time (CPU device only; steadier on a shared machine)",
    )
    a = p.parse_args()
    device = torch.device(a.device)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.clock == "cpu":
        if device.type != "cpu":
            p.error("--clock cpu times the CPU device only")
        _timing.CLOCK = time.thread_time
    print(
        f"two-layer VAE training step on {device}, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, {torch.get_num_threads()} threads, {a.clock} clock"
    )
    for inference in INFERENCE if a.inference == "both" else (a.inference,):
        if inference == "top_down" and importlib.util.find_spec("pvae.ladder") is None:
            print("top_down: skipped, pvae.ladder (LadderVAE) is not in this version of pvae")
            continue
        table(device, inference, a.batches, a.rounds)


if __name__ == "__main__":
    main()
