"""Worker run by tests/test_distributed.py under torchrun (2 gloo processes on the CPU, or 2 nccl
processes, one GPU each, with ``PVAE_TEST_DDP_DEVICE=cuda``).

Usage: ddp_worker.py MODE OUT   with MODE one of train, train_generic, evaluate, fail, or several
of them joined by commas (run one after another in one process group, each writing OUT with
``-MODE`` before its suffix: one launch instead of one per mode, the cost of these tests).
"""

import os
import sys
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as tdist
from torch import nn

import pvae
from pvae import distributed

N, B = 64, 8  # 64 datapoints; per-rank batch 8 (the single-process reference uses 16)
DEVICE = os.environ.get("PVAE_TEST_DDP_DEVICE", "cpu")  # "cuda": each rank its own GPU


def data() -> torch.Tensor:
    return torch.rand(N, 1, 3, 3, generator=torch.Generator().manual_seed(0))


def noiseless_vae() -> pvae.VAE:
    """A Gaussian VAE whose guide has (numerically) zero scale: the draws of z are its mean, so
    the distributed and single-process runs see the same numbers whatever the random streams."""
    torch.manual_seed(0)
    enc = pvae.nets.MLP((1, 3, 3), 4, hidden=(16,))
    with torch.no_grad():
        enc.net[-1].bias[2:] = -20.0  # σ = softplus(-20) ≈ 2e-9: z = its mean to float32 precision
    guide = pvae.guides.DiagonalNormal(enc, 2, min_scale=0.0)
    lik = pvae.likelihoods.Gaussian(scale=0.5, learn_scale=True)
    return pvae.VAE(pvae.priors.LearnedGaussian(2), lik, guide, data_shape=(1, 3, 3), hidden=(16,))


class NoiselessPair(nn.Module):
    """The same idea for a model/guide pair written in plain Pyro (two latents per datapoint, a
    factor z and a shift u): the guide's scale is fixed at 1e-9, so both draws are their means."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(9, 16), nn.Tanh(), nn.Linear(16, 3))
        self.dec = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 9))
        self.log_scale = nn.Parameter(torch.tensor(-0.7))

    def model(self, x: torch.Tensor) -> None:
        flat = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(flat.new_zeros(2), 1.0).to_event(1))
            u = pyro.sample("u", dist.Normal(flat.new_zeros(()), 1.0))
            loc = self.dec(z) + u.unsqueeze(-1)
            pyro.sample("x", dist.Normal(loc, self.log_scale.exp()).to_event(1), obs=flat)

    def guide(self, x: torch.Tensor) -> None:
        h = self.enc(x.reshape(x.shape[0], -1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :2], 1e-9).to_event(1))
            pyro.sample("u", dist.Normal(h[:, 2], 1e-9))


def train(out: str, make: Callable[[], nn.Module] = noiseless_vae) -> None:
    d = distributed.info()
    vae = make()
    batch = B if d is not None else 2 * B
    seen: dict[str, bool] = {}

    def check(_record: dict) -> None:
        # Every parameter is in DDP's all-reduce: after a step, gradients agree on all ranks.
        for name, p in vae.named_parameters():
            seen[name] = p.grad is not None
            if d is not None and p.grad is not None:
                g = [torch.zeros_like(p.grad) for _ in range(d.world_size)]
                tdist.all_gather(g, p.grad)
                assert torch.equal(g[0], g[1]), name

    pvae.fit(
        vae,
        data(),
        epochs=3,
        batch_size=batch,
        lr=1e-2,
        progress=False,
        device=DEVICE,
        on_epoch=check,
    )
    assert all(seen.values()) and len(seen) == len(list(vae.parameters())), seen
    if d is None or d.is_main:
        torch.save({k: v.detach().cpu() for k, v in vae.state_dict().items()}, out)


def evaluate(out: str) -> None:
    m = pvae.LinearGaussian(data_dim=6, latent_dim=2, sigma=0.5)
    vae, x = m.vae(loc_shift=0.3, scale_factor=1.3), m.sample(37)  # 37: uneven shards
    sharded = distributed.info() is not None
    est = pvae.log_px(vae, x, k=300, seed=5, memory_budget=50_000, distributed=sharded)
    ladder = pvae.bounds(
        vae,
        x,
        ks=(1, 10, 100),
        seed=5,
        memory_budget=50_000,
        distributed=sharded,
        ais_steps=4,
        ais_chains=3,
        bdmc_n=3,
    )
    totals: list[int] = []  # AIS progress counts this process's share of (datapoint, step) pairs
    forward = pvae.ais(
        vae,
        x,
        steps=4,
        chains=3,
        leapfrog=2,
        seed=5,
        memory_budget=30_000,  # blocks of 7 datapoints: 6 blocks, 3 per rank
        distributed=sharded,
        progress=lambda done, total: totals.append(total),
    )
    d = distributed.info()
    if d is None or d.is_main:
        torch.save(
            {
                "log_px": est.log_px,
                "se": est.se,
                "khat": est.khat,
                "ladder": ladder.to_dict(),
                "ais": forward.log_px,
                "ais_se": forward.se,
                "ais_accept": forward.accept,
                "ais_step_size": forward.step_size,
                "ais_share": totals[-1],
            },
            out,
        )


def fail(out: str) -> None:
    d = distributed.info()

    def boom(record: dict) -> None:
        if d is not None and d.rank == 1 and record["epoch"] == 1:
            raise RuntimeError("rank 1 failed on purpose")

    pvae.fit(
        noiseless_vae(), data(), epochs=5, batch_size=B, progress=False, device="cpu", on_epoch=boom
    )


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    distributed.init()
    modes = {
        "train": train,
        "train_generic": lambda out: train(out, NoiselessPair),
        "evaluate": evaluate,
        "fail": fail,
    }
    stem, suffix = os.path.splitext(out)
    for m in mode.split(","):
        modes[m](out if "," not in mode else f"{stem}-{m}{suffix}")
    distributed.shutdown()  # as a user's script ends: every rank done, then leave the group
