"""Training speed: pvae (eager fused path, and compiled with ``compile=True``) against plain
Pyro SVI (as in Pyro's VAE example) and a hand-written eager PyTorch loop, in one process, on the
same 784-200-200-50 tanh MLP VAE with a Bernoulli decoder.

    python benchmarks/train_step.py                    # CPU, batches 20 128 1000
    python benchmarks/train_step.py --device cuda
    python benchmarks/train_step.py --no-compile       # skip the compiled column
    python benchmarks/train_step.py --epoch            # also one Fashion-MNIST epoch each

Per-step time is the median over rounds; in each round every implementation runs a short block of
steps on one fixed minibatch (no data handling), in alternating order. The ratio is time /
hand-written time (1.0 = same speed) taken round by round, so the blocks compared ran back to back:
its median and quartiles over rounds are printed, which keeps a slow spell of a shared machine out
of the figure. The hand-written step computes the same math: reparameterized draw, Bernoulli
log-likelihood, analytic Gaussian KL, Adam. Every implementation uses the same Adam implementation
(foreach where torch supports it), so the ratios measure framework overhead, not optimizer choice.

The compiled step is built once and serves every batch size (the batch dimension is dynamic);
its compilation time (first step) is printed separately and not in the per-step figures.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from _timing import Timing, ratio_text, time_interleaved, timed
from pyro.infer import SVI, Trace_ELBO

import pvae
from pvae.training.step import StepOptions, TrainStep, make_loss, make_optimizer

LATENT = 50


def nets(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    enc = pvae.nets.MLP((1, 28, 28), 2 * LATENT, hidden=(200, 200), activation="tanh")
    dec = pvae.nets.MLP(LATENT, (1, 28, 28), hidden=(200, 200), activation="tanh")
    return enc.to(device), dec.to(device)


def make_vae(device: torch.device) -> pvae.VAE:
    """The benchmark architecture as a pvae VAE (same initial weights as the other two)."""
    enc, dec = nets(device)
    guide = pvae.guides.DiagonalNormal(enc, LATENT)
    vae = pvae.VAE(
        pvae.priors.StandardNormal(LATENT),
        pvae.likelihoods.Bernoulli(),
        guide,
        dec,
        data_shape=(1, 28, 28),
    )
    return vae.to(device)


def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """The optimizer step every implementation shares."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def pvae_step(device: torch.device, n: int, compile: bool = False):
    vae = make_vae(device)
    loss_fn = make_loss(vae, StepOptions(objective="meanfield_elbo", compile=compile), quiet=True)
    opt = make_optimizer("adam", vae.parameters(), 1e-3, None)

    def step(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return update(opt, loss_fn(x, idx, n))

    return step, vae


def compiled_step(device: torch.device, n: int):
    """pvae's training step with ``compile=True`` (``fit(compile=True)``): the fused loss and its
    gradient, and Adam's update, each through torch.compile (compiled on the first steps)."""
    vae = make_vae(device)
    step = TrainStep(
        vae, StepOptions(objective="meanfield_elbo", compile=True), device, None, 0, quiet=True
    )
    return (lambda x, idx: step(x, idx, n)), vae


def hand_step(device: torch.device, n: int):
    enc, dec = nets(device)
    params = [*enc.parameters(), *dec.parameters()]
    opt = make_optimizer("adam", params, 1e-3, None)

    def step(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = enc(x)
        loc, scale = h[:, :LATENT], F.softplus(h[:, LATENT:]) + 1e-4
        z = loc + scale * torch.randn_like(loc)
        logits = dec(z)
        recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
        return update(opt, -(recon - kl) / x.shape[0])

    return step, None


def pyro_step(device: torch.device, n: int):
    """Pyro's VAE example: pyro.module + SVI + pyro.optim.Adam + Trace_ELBO."""
    enc, dec = nets(device)
    pyro.clear_param_store()

    def model(x: torch.Tensor) -> None:
        pyro.module("decoder", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(
                "z", dist.Normal(torch.zeros(x.shape[0], LATENT, device=x.device), 1.0).to_event(1)
            )
            pyro.sample("x", dist.Bernoulli(logits=dec(z), validate_args=False).to_event(3), obs=x)

    def guide(x: torch.Tensor) -> None:
        pyro.module("encoder", enc)
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            pyro.sample(
                "z", dist.Normal(h[:, :LATENT], F.softplus(h[:, LATENT:]) + 1e-4).to_event(1)
            )

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())

    def step(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.tensor(svi.step(x))

    return step, None


def make_impls(device: torch.device, compile: bool) -> dict:
    makers = [("hand", hand_step), ("pvae", pvae_step), ("pyro", pyro_step)]
    if compile:
        makers.append(("compiled", compiled_step))
    return {name: make(device, 60_000)[0] for name, make in makers}


def first_step_seconds(step, batch: int, device: torch.device) -> float:
    """Wall time of the first two steps (for the compiled step: compilation of the loss and
    gradient, then of Adam's update)."""
    x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3, device=device))
    idx = torch.arange(batch, device=device)

    def two_steps() -> None:
        for _ in range(2):
            step(x, idx)

    return timed(two_steps, device)[1]


def per_step(impls: dict, device: torch.device, batch: int, steps: int, rounds: int) -> Timing:
    x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.3, device=device))
    idx = torch.arange(batch, device=device)
    return time_interleaved(impls, x, idx, steps, rounds)


def epoch_times(device: torch.device) -> dict[str, float]:
    data = pvae.datasets.load("fashion-mnist", binarize="dynamic", download=False)
    out = {}
    train = data.train.to(device)
    n = len(train)

    def epoch(step: Callable) -> None:
        g = torch.Generator().manual_seed(0)
        for idx, x in train.batches(128, shuffle=True, generator=g):
            step(x, idx)

    for name, make in (("hand", hand_step), ("pvae", pvae_step)):
        step, _ = make(device, n)
        out[name] = timed(lambda step=step: epoch(step), device)[1]
    # pvae.fit end to end (validation ELBO included), for reference.
    vae = make_vae(device)
    out["pvae.fit (with validation)"] = timed(
        lambda: pvae.fit(vae, data, epochs=1, batch_size=128, progress=False, device=device),
        device,
    )[1]
    return out


def print_table(
    impls: dict, device: torch.device, batches: list[int], steps: Callable[[int], int], rounds: int
) -> None:
    """Milliseconds per step of each implementation (median over rounds) and its time / the
    hand-written step's time (median over rounds, [quartiles]), one row per batch size
    (``steps(b)`` steps per block)."""
    cols = [c for c in ("pvae", "compiled", "pyro") if c in impls]
    print(
        f"{'batch':>6} {'hand ms':>9} "
        + " ".join(f"{c + ' ms':>12}" for c in cols)
        + " "
        + " ".join(f"{c + '/hand [IQR]':>22}" for c in cols)
    )
    for b in batches:
        t = per_step(impls, device, b, steps(b), rounds)
        print(
            f"{b:>6} {1e3 * t.seconds('hand'):>9.3f} "
            + " ".join(f"{1e3 * t.seconds(c):>12.3f}" for c in cols)
            + " "
            + " ".join(f"{ratio_text(t, c):>22}" for c in cols),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[20, 128, 1000])
    p.add_argument("--rounds", type=int, default=60, help="timed rounds per batch size")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled pvae column")
    p.add_argument("--epoch", action="store_true", help="also time one Fashion-MNIST epoch")
    a = p.parse_args()
    device = torch.device(a.device)
    print(
        f"training step on {device}, torch {torch.__version__}, pyro {pyro.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    impls = make_impls(device, not a.no_compile)
    if "compiled" in impls:
        sec = first_step_seconds(impls["compiled"], a.batches[0], device)
        print(f"compiled pvae step: first two steps (compilation included) {sec:.1f} s")
    print_table(impls, device, a.batches, lambda b: 5 if b <= 128 else 2, a.rounds)
    if a.epoch:
        for name, sec in epoch_times(device).items():
            print(f"Fashion-MNIST epoch (54,000 images, batch 128) {name}: {sec:.2f} s")


if __name__ == "__main__":
    main()
