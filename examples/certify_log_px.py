"""How far is IWAE_k from log p(x)? IWAE with k draws vs annealed importance sampling on the same
test images, and a BDMC sandwich on data simulated from the trained model.

    pvae train --out runs/digits                                  # the embedded default
    python examples/certify_log_px.py runs/digits --subset 360 --steps 1000
    python examples/certify_log_px.py runs/fm1 --subset 100 --steps 500 --chains 8 --bdmc 50

Prints one JSON object: IWAE_k (mean, Monte Carlo s.e., fraction of images with PSIS k̂ ≥ 0.7),
AIS (mean, s.e., acceptance, seconds), their per-image difference AIS − IWAE_k overall and split
by k̂ < 0.7 / ≥ 0.7 (does k̂ predict where IWAE falls short?), the rank correlation of k̂ with
that difference, and the BDMC lower/upper bounds and gap on simulated data with the same AIS
settings (how far AIS itself may be from log p(x)).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import pvae


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _group(diff: torch.Tensor, mask: torch.Tensor) -> dict:
    d = diff[mask]
    n = int(mask.sum())
    se = float(d.std() / n**0.5) if n > 1 else None
    return {"n": n, "mean": float(d.mean()) if n else None, "se": se}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--subset", type=int, default=100, help="first N test images")
    p.add_argument("--k", type=int, default=5000, help="IWAE importance samples")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--bdmc", type=int, default=50, help="simulated datapoints (0: none)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    run = pvae.load_run(a.run, device="cpu")
    x = run.data.split("test").observed()[: a.subset]

    t0 = time.perf_counter()
    iw = pvae.log_px(run.vae, x, k=a.k, seed=a.seed)
    t_iwae = time.perf_counter() - t0
    settings = {"steps": a.steps, "chains": a.chains, "leapfrog": a.leapfrog, "seed": a.seed}
    est = pvae.ais(run.vae, x, **settings)
    diff = est.log_px - iw.log_px
    heavy = iw.khat >= 0.7
    out = {
        "run": a.run,
        "n": x.shape[0],
        "iwae": {**iw.summary(), "seconds": t_iwae},
        "ais": est.summary(),
        "ais_minus_iwae": {
            "all": _group(diff, torch.ones_like(heavy)),
            "khat<0.7": _group(diff, ~heavy),
            "khat>=0.7": _group(diff, heavy),
            "spearman_khat_vs_diff": _spearman(iw.khat.nan_to_num(-1.0), diff),
        },
        "bdmc": None,
    }
    if a.bdmc:
        out["bdmc"] = pvae.bdmc(run.vae, n=a.bdmc, **settings).summary()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
