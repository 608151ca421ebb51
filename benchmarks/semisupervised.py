"""Semi-supervised Fashion-MNIST: M2 (:class:`pvae.SemiSupervisedVAE`) against a classifier of
the same size trained on the labelled images alone.

For each number of labels per class (a class-balanced, seeded subset of the 54,000 training
images, :mod:`pvae.labels`; the rest unlabelled):

* **M2**: trained on every training image for ``--epochs`` epochs with Pyro's
  ``TraceEnum_ELBO`` (y summed out for the unlabelled images, observed for the labelled ones,
  α = 0.1·N), through ``pvae.fit(..., objective="enum_elbo")`` where pvae has that objective,
  else with the same loss in a plain loop (``elbo.differentiable_loss(model, guide, x, size=N,
  subsample=idx) / N``, Adam). Test accuracy of argmax q(y | x) on the 10,000 test images;
  log p(x) by importance sampling (``pvae.log_px``, k draws) on the first ``--n-test`` test
  images, y summed out where ``log_px`` enumerates, else sampled from q(y | x).
* **classifier**: q(y | x)'s network (the same MLP), cross-entropy on the labelled images only,
  Adam, early stopping on the validation accuracy (patience 5 epochs); the same dynamic
  binarization.

Run (CPU, one thread; minutes per row)::

    PYTHONPATH=. python benchmarks/semisupervised.py --labels 100 1000 --epochs 2 --k 500

It prints a markdown table; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import time

import pyro
import torch
from torch.nn import functional as F

import pvae
from pvae import nets
from pvae.labels import partial_labels
from pvae.objectives.elbo import OBJECTIVES

HIDDEN = (256, 128)


def train_m2(data, per_class: int, args) -> tuple[pvae.SemiSupervisedVAE, float, str]:
    """M2 trained for ``args.epochs`` epochs; (model, seconds, how it was trained)."""
    torch.manual_seed(args.seed)
    m = pvae.SemiSupervisedVAE(
        pvae.priors.StandardNormal(args.latent_dim), 10, data_shape=data.data_shape, hidden=HIDDEN
    )
    m.set_labels(partial_labels(data.train.y, per_class, seed=args.seed))
    t0 = time.perf_counter()
    if "enum_elbo" in OBJECTIVES:
        pvae.fit(m, data, objective="enum_elbo", epochs=args.epochs, lr=args.lr, curve_ks=())
        return m, time.perf_counter() - t0, "pvae.fit, enum_elbo"
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    opt = torch.optim.Adam(m.parameters(), lr=args.lr)
    n = len(data.train)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for idx, x in data.train.batches(128, shuffle=True, generator=g):
            loss = elbo.differentiable_loss(m.model, m.guide, x, size=n, subsample=idx) / n
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m, time.perf_counter() - t0, "TraceEnum_ELBO loop"


def train_classifier(data, per_class: int, args) -> tuple[torch.nn.Module, float, int]:
    """q(y | x)'s MLP on the labelled images only; (net, seconds, epochs run)."""
    torch.manual_seed(args.seed)
    net = nets.MLP(data.data_shape, 10, HIDDEN)
    y = partial_labels(data.train.y, per_class, seed=args.seed)
    idx = (y >= 0).nonzero().squeeze(-1)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    best, best_state, since, epochs = -1.0, None, 0, 0
    t0 = time.perf_counter()
    while since < 5 and epochs < 500:
        epochs += 1
        for b in idx[torch.randperm(len(idx), generator=g)].split(128):
            loss = F.cross_entropy(net(data.train.observed(b)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(net, data.val.x, data.val.y)
        if acc > best:
            best, since = acc, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
    net.load_state_dict(best_state)
    return net, time.perf_counter() - t0, epochs


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = torch.cat([net(xb).argmax(-1) for xb in x.split(2048)])
    return float((pred == y).double().mean())


def log_px(m: pvae.SemiSupervisedVAE, x: torch.Tensor, k: int) -> tuple[float, float, str]:
    """Mean log p(x) over ``x`` and its s.e. (over datapoints and draws), and how y was handled."""
    try:
        est, how = pvae.log_px(m, x, k=k, seed=0), "y summed out"
    except ValueError as err:
        if "enumerated" not in str(err):
            raise
        m.enumerate_y = False
        est, how = pvae.log_px(m, x, k=k, seed=0), "y sampled from q(y|x)"
        m.enumerate_y = True
    v = est.log_px
    return float(v.mean()), float(v.std() / len(v) ** 0.5), how


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = pvae.datasets.load("fashion-mnist", "dynamic", seed=args.seed)
    xt, yt = data.test.x, data.test.y
    rows = []
    for n in args.labels:
        net, secs, epochs = train_classifier(data, n, args)
        rows.append(
            {
                "labels/class": n,
                "model": f"classifier, labelled only ({epochs} epochs)",
                "accuracy": accuracy(net, xt, yt),
                "log p(x)": None,
                "seconds": secs,
            }
        )
        m, secs, how = train_m2(data, n, args)
        lp, se, ys = log_px(m, xt[: args.n_test], args.k)
        rows.append(
            {
                "labels/class": n,
                "model": f"M2 ({args.epochs} epochs, {how})",
                "accuracy": m.accuracy(xt, yt),
                "log p(x)": (lp, se, ys),
                "seconds": secs,
            }
        )
        print(rows[-2], rows[-1], flush=True)
    print()
    print(
        f"| labels/class | model | test accuracy | log p(x), nats (first {args.n_test} test "
        f"images, k = {args.k}) | train seconds |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        lp = (
            "—"
            if r["log p(x)"] is None
            else f"{r['log p(x)'][0]:.1f} ± {r['log p(x)'][1]:.1f} ({r['log p(x)'][2]})"
        )
        acc, secs = r["accuracy"], r["seconds"]
        print(f"| {r['labels/class']} | {r['model']} | {acc:.3f} | {lp} | {secs:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
