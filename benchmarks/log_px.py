"""log p(x) throughput and peak memory: pvae.log_px (eager, and compiled with ``compile=True``)
against a hand-written PyTorch importance sampler of the same model (same networks, same chunk
sizes).

Model: the 784-200-200-50 tanh MLP VAE with a Bernoulli decoder. Data: Fashion-MNIST test images
(Debian's files when installed, dynamically binarized once), else random binary images.

    python benchmarks/log_px.py                      # CPU, 200 datapoints, k in 100 1000 5000
    python benchmarks/log_px.py --device cuda --n 10000
    python benchmarks/log_px.py --full               # k=5000 on all 10,000 test images
    python benchmarks/log_px.py --no-compile         # skip the compiled estimator

Reports datapoints × k per second for each, their ratios (time / hand-written time; 1.0 = same
speed), the compiled estimator's first call (compilation included, not in its timing), and
peak memory (CUDA: max allocated; CPU: peak RSS growth, measured in a fresh process
per configuration so one run's allocations do not mask another's).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

import torch
from _timing import Timing, peak_reset, timed
from torch import nn

import pvae
from pvae.evaluation._weights import DEFAULT_BUDGET, plan, resolve

LOG_2PI = math.log(2 * math.pi)


def build(device: torch.device) -> pvae.VAE:
    torch.manual_seed(0)
    enc = pvae.nets.MLP((1, 28, 28), 100, hidden=(200, 200), activation="tanh")
    dec = pvae.nets.MLP(50, (1, 28, 28), hidden=(200, 200), activation="tanh")
    vae = pvae.VAE(
        pvae.priors.StandardNormal(50),
        pvae.likelihoods.Bernoulli(),
        pvae.guides.DiagonalNormal(enc, 50),
        dec,
        data_shape=(1, 28, 28),
    )
    return vae.to(device).eval()


def data(n: int, device: torch.device) -> torch.Tensor:
    try:
        x = pvae.datasets.load("fashion-mnist", binarize="static", download=False).test.x[:n]
    except Exception:  # no Fashion-MNIST here: random binary images of the same shape
        g = torch.Generator().manual_seed(0)
        x = torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=g)
    return x.to(device)


@torch.no_grad()
def handwritten(vae: pvae.VAE, x: torch.Tensor, k: int, block: int, chunk: int) -> torch.Tensor:
    """Plain PyTorch: encoder, reparameterized draws, Bernoulli/Gaussian log densities, LSE."""
    enc_net, dec_net = vae.encoder.net, vae.decoder
    out = []
    for xb in x.split(block):
        h = enc_net(xb)
        loc, scale = h[:, :50], nn.functional.softplus(h[:, 50:]) + vae.encoder.min_scale
        log_scale = scale.log().sum(-1)
        flat = xb.reshape(xb.shape[0], -1)
        lse = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            eps = torch.randn(c, *loc.shape, device=x.device, dtype=loc.dtype)
            z = loc + scale * eps
            logits = dec_net(z).reshape(c, xb.shape[0], -1)
            log_lik = -nn.functional.binary_cross_entropy_with_logits(
                logits, flat.expand_as(logits), reduction="none"
            ).sum(-1)
            log_prior = -0.5 * (z**2).sum(-1) - 25 * LOG_2PI
            log_q = -0.5 * (eps**2).sum(-1) - log_scale - 25 * LOG_2PI
            lw = (log_lik + log_prior - log_q).double()
            lse = torch.logaddexp(lse, lw.logsumexp(0))
        out.append(lse - math.log(k))
    return torch.cat(out)


def run_one(impl: str, k: int, n: int, device: torch.device, repeats: int) -> dict:
    vae, x = build(device), data(n, device)
    block, chunk = plan(resolve(vae, x, None, None), k, DEFAULT_BUDGET, torch.float64, False)

    def go() -> torch.Tensor:
        if impl in ("pvae", "compiled"):
            return pvae.log_px(vae, x, k=k, khat=False, compile=impl == "compiled").log_px
        return handwritten(vae, x, k, block, chunk)

    peak_reset(device)
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The warm-up compiles, and counts in the peak: it allocates what later runs reuse.
    _, first = timed(go, device)
    times = []
    for _ in range(repeats):
        est, sec = timed(go, device)
        times.append(sec)
    peak = (
        torch.cuda.max_memory_allocated() - base
        if device.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    )
    t = Timing({impl: times}).seconds(impl)
    return {
        "impl": impl,
        "k": k,
        "n": n,
        "seconds": t,
        "first_s": first,
        "pairs_per_s": n * k / t,
        "peak_mb": peak / 2**20,
        "mean_log_px": float(est.mean()),
        "block": block,
        "chunk": chunk,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--k", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--full", action="store_true", help="k=5000 on all 10,000 test images, once")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled estimator")
    p.add_argument("--one", nargs=2, metavar=("IMPL", "K"), help=argparse.SUPPRESS)
    a = p.parse_args()
    device = torch.device(a.device)
    if a.one:  # child process: one configuration
        print(json.dumps(run_one(a.one[0], int(a.one[1]), a.n, device, a.repeats)))
        return
    if a.full:
        a.n, a.k, a.repeats = 10_000, [5000], 1
    print(
        f"log p(x) on {device}, n={a.n}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    impls = ("hand", "pvae") if a.no_compile else ("hand", "pvae", "compiled")
    print(
        f"{'k':>6} "
        + " ".join(f"{i + ' pairs/s':>17}" for i in impls)
        + " "
        + " ".join(f"{i + '/hand':>14}" for i in impls[1:])
        + " "
        + " ".join(f"{i + ' MB':>12}" for i in impls)
        + (f" {'compile s':>10}" if "compiled" in impls else "")
    )
    for k in a.k:
        res = {}
        for impl in impls:
            cmd = [
                sys.executable,
                __file__,
                "--device",
                a.device,
                "--n",
                str(a.n),
                "--repeats",
                str(a.repeats),
                "--one",
                impl,
                str(k),
            ]
            res[impl] = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[
                    -1
                ]
            )
        hand = res["hand"]["seconds"]
        print(
            f"{k:>6} "
            + " ".join(f"{res[i]['pairs_per_s']:>17.3g}" for i in impls)
            + " "
            + " ".join(f"{res[i]['seconds'] / hand:>14.3f}" for i in impls[1:])
            + " "
            + " ".join(f"{res[i]['peak_mb']:>12.1f}" for i in impls)
            + (f" {res['compiled']['first_s']:>10.1f}" if "compiled" in impls else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
