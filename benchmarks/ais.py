"""AIS speed: pvae.evaluation.ais.ais (the fused path) against a hand-written batched HMC-AIS
loop in plain PyTorch, with the same schedule, kernel and step-size adaptation, in one process.

Model: the 784-200-200-50 tanh MLP VAE with a Bernoulli decoder and random weights. Data: random
binary images.

    python benchmarks/ais.py                              # CPU: 64 datapoints x 16 chains
    python benchmarks/ais.py --device cuda --n 1000

Both run forward AIS from the guide with the sigmoid schedule, ``leapfrog`` leapfrog steps per
transition, per-datapoint step sizes adapted toward 0.65 acceptance (x/÷ 1.02) and a per-chain
step jitter of ±20%, over the same blocks of datapoints. The hand-written loop is what an expert
would write for this one model: closed-form gradients of log q and log p(z), autograd only
through the decoder, one decoder forward and backward per leapfrog step. Reported: median wall
time over interleaved repeats (a slow spell of the machine hits both), the ratio pvae / hand
(1.0 = same speed), and both mean estimates with their Monte Carlo errors, which must agree.
"""

from __future__ import annotations

import argparse
import importlib
import math

import torch
import torch.nn.functional as F
from _timing import Timing, timed

import pvae

# The module, whatever pvae.evaluation re-exports under the name `ais` (the function).
A = importlib.import_module("pvae.evaluation.ais")

LATENT = 50
LOG_2PI = math.log(2 * math.pi)


def build(device: torch.device) -> pvae.VAE:
    torch.manual_seed(0)
    enc = pvae.nets.MLP((1, 28, 28), 2 * LATENT, hidden=(200, 200), activation="tanh")
    dec = pvae.nets.MLP(LATENT, (1, 28, 28), hidden=(200, 200), activation="tanh")
    vae = pvae.VAE(
        pvae.priors.StandardNormal(LATENT),
        pvae.likelihoods.Bernoulli(),
        pvae.guides.DiagonalNormal(enc, LATENT),
        dec,
        data_shape=(1, 28, 28),
    )
    return vae.to(device).eval()


@torch.no_grad()
def handwritten(
    vae: pvae.VAE, x: torch.Tensor, steps: int, chains: int, leapfrog: int, block: int
) -> torch.Tensor:
    """``(N, C)`` forward AIS log weights, plain PyTorch: the same algorithm as pvae's."""
    dec, min_scale = vae.decoder, vae.encoder.min_scale
    s = torch.sigmoid(4.0 * (2 * torch.arange(steps + 1, dtype=torch.float64) / steps - 1))
    betas = ((s - s[0]) / (s[-1] - s[0])).tolist()
    out = []
    for xb in x.split(block):
        b = xb.shape[0]
        h = vae.encoder.net(xb)
        loc, scale = h[:, :LATENT], F.softplus(h[:, LATENT:]) + min_scale
        const_q = -scale.log().sum(-1) - 0.5 * LATENT * LOG_2PI
        flat = xb.reshape(b, -1)

        def parts(z, loc=loc, scale=scale, const_q=const_q, flat=flat):
            """log q, log p(z) + log p(x | z) − log q and their gradients."""
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                logits = dec(z).reshape(chains, z.shape[1], -1)
                lik = -F.binary_cross_entropy_with_logits(
                    logits, flat.expand_as(logits), reduction="none"
                ).sum(-1)
                (g_lik,) = torch.autograd.grad(lik.sum(), z)
            z = z.detach()
            std = (z - loc) / scale
            log_q = const_q - 0.5 * (std**2).sum(-1)
            log_p = -0.5 * (z**2).sum(-1) - 0.5 * LATENT * LOG_2PI
            g_q = -std / scale
            return log_q, log_p + lik.detach() - log_q, g_q, -z + g_lik - g_q

        z = loc + scale * torch.randn(chains, b, LATENT, device=x.device, dtype=x.dtype)
        a, ell, ga, gl = parts(z)
        log_w = torch.zeros(chains, b, dtype=x.dtype, device=x.device)
        eps = torch.full((b,), 0.05, dtype=x.dtype, device=x.device)
        for t in range(1, steps + 1):
            log_w += (betas[t] - betas[t - 1]) * ell
            if t == steps:
                break
            beta = betas[t]
            p0 = torch.randn_like(z)
            e = (eps * (1 + 0.2 * (2 * torch.rand(chains, b, device=x.device) - 1)))[..., None]
            logf, grad = a + beta * ell, ga + beta * gl
            p, q = p0 + 0.5 * e * grad, z
            for i in range(leapfrog):
                q = q + e * p
                new = parts(q)
                p = p + (e if i < leapfrog - 1 else 0.5 * e) * (new[2] + beta * new[3])
            log_a = new[0] + beta * new[1] - logf - 0.5 * (p * p).sum(-1) + 0.5 * (p0 * p0).sum(-1)
            prob = torch.where(torch.isnan(log_a), -math.inf, log_a).clamp(max=0).exp()
            acc = torch.rand_like(prob) < prob
            z = torch.where(acc[..., None], q, z)
            a, ell = torch.where(acc, new[0], a), torch.where(acc, new[1], ell)
            ga = torch.where(acc[..., None], new[2], ga)
            gl = torch.where(acc[..., None], new[3], gl)
            mean = prob.mean(0)
            eps = torch.where(mean > 0.65, eps * 1.02, eps / 1.02).clamp(1e-5, 10.0)
        out.append(log_w.T.double())
    return torch.cat(out)


def mean_and_se(log_w: torch.Tensor) -> tuple[float, float]:
    """Mean over datapoints of log mean exp over chains, and its Monte Carlo error (delta
    method per datapoint, as pvae reports it)."""
    c = log_w.shape[1]
    lse, lse2 = log_w.logsumexp(1), (2 * log_w).logsumexp(1)
    ess = torch.exp(2 * lse - lse2)
    se = ((c / ess - 1).clamp_min(0) / (c - 1)).sqrt()
    return float((lse - math.log(c)).mean()), float(se.pow(2).sum().sqrt() / log_w.shape[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    device = torch.device(a.device)
    vae = build(device)
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((a.n, 1, 28, 28), 0.3), generator=g).to(device)
    target, layout, _ = A._setup(vae, x, None, None, None)
    block = A._block_size(target, layout, a.chains, A.DEFAULT_BUDGET)
    knobs = {"steps": a.steps, "chains": a.chains, "leapfrog": a.leapfrog}
    impls = {
        "pvae": lambda: pvae_run(vae, x, knobs, seed=0),
        "pvae seed=None": lambda: pvae_run(vae, x, knobs, seed=None),
        "hand": lambda: handwritten(vae, x, a.steps, a.chains, a.leapfrog, block),
    }
    print(
        f"AIS on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads: "
        f"784-200-200-50 tanh Bernoulli VAE, n={a.n}, chains={a.chains}, steps={a.steps}, "
        f"leapfrog={a.leapfrog}, blocks of {block} datapoints"
    )
    warm = {"steps": 3, "chains": a.chains, "leapfrog": 2}
    pvae_run(vae, x[:block], warm, seed=0)
    handwritten(vae, x[:block], 3, a.chains, 2, block)
    times: dict[str, list[float]] = {k: [] for k in impls}
    results = {}
    for _ in range(a.repeats):
        for name, fn in impls.items():
            results[name], sec = timed(fn, device)
            times[name].append(sec)
    t = Timing(times)
    print(f"{'impl':>16} {'seconds':>9} {'/hand':>7} {'mean log p(x)':>14} {'± s.e.':>8}")
    for name in impls:
        m, se = mean_and_se(results[name])
        sec, ratio = t.seconds(name), t.seconds(name) / t.seconds("hand")
        print(f"{name:>16} {sec:>9.2f} {ratio:>7.3f} {m:>14.3f} {se:>8.3f}")
    (mp, sp), (mh, sh) = mean_and_se(results["pvae"]), mean_and_se(results["hand"])
    z = (mp - mh) / math.hypot(sp, sh)
    print(f"pvae - hand = {mp - mh:+.3f} nats = {z:+.2f} s.e. (|z| < 4 expected)")


def pvae_run(vae: pvae.VAE, x: torch.Tensor, knobs: dict, seed: int | None) -> torch.Tensor:
    return A.ais(vae, x, seed=seed, **knobs).log_w


if __name__ == "__main__":
    main()
