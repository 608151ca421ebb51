"""Semi-supervised Fashion-MNIST: M2 (:class:`pvae.SemiSupervisedVAE`) against a classifier of
the same size trained on the labelled images alone.

For each number of labels per class (a class-balanced, seeded subset of the 54,000 training
images, :mod:`pvae.labels`; the rest unlabelled):

* **M2**: the model of ``--config`` (by default the shipped
  ``examples/configs/m2-fashion-mnist.toml``: its networks, latent width, α, labelled
  minibatches, learning rate and batch size), trained on every training image for ``--epochs``
  epochs (default: the config's) with Pyro's ``TraceEnum_ELBO`` (y summed out for the unlabelled
  images, observed for the labelled ones) through ``pvae.fit(..., objective="enum_elbo")``;
  the weights of the epoch with the best validation accuracy, as for the classifier. Test
  accuracy of argmax q(y | x) on the 10,000 test images; log p(x) by importance sampling
  (``pvae.log_px``, k draws) on the first ``--n-test`` test images, dynamically binarized as
  in training (one seeded draw, as ``pvae evaluate`` reads a split), y summed out where
  ``log_px`` enumerates, else sampled from q(y | x).
* **classifier**: q(y | x)'s network (the same MLP, ``model.encoder`` of the config),
  cross-entropy on the labelled images only, Adam at the same learning rate, minibatches of 128,
  early stopping on the validation accuracy (patience 5 epochs, the best epoch's weights); the
  same dynamic binarization.

The budgets differ and the table states both: the classifier trains until its validation
accuracy stops improving (on 1,000 labelled images an epoch is 8 steps), M2 for a fixed number
of epochs over all 54,000 images; the seconds column is the training wall time of each.

Run (CPU, one thread; minutes per row)::

    PYTHONPATH=. python benchmarks/semisupervised.py --labels 100 1000 --epochs 10 --k 500

It prints a markdown table; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import pvae
from pvae import nets
from pvae.config import build_vae, load_config
from pvae.labels import partial_labels

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "m2-fashion-mnist.toml"


def train_m2(data, per_class: int, args) -> tuple[pvae.SemiSupervisedVAE, float, int]:
    """M2 of ``args.cfg`` trained by ``pvae.fit`` (``enum_elbo``) for ``args.epochs`` epochs,
    with the weights of its epoch of best validation accuracy, as the classifier's; (model,
    seconds, that epoch)."""
    torch.manual_seed(args.seed)
    m = build_vae(args.cfg.model, data.data_shape)
    m.set_labels(partial_labels(data.train.y, per_class, seed=args.seed))
    t = args.cfg.train
    best: dict = {"acc": -1.0, "epoch": 0, "state": None}

    def keep_best(record: dict[str, float]) -> None:
        acc = m.accuracy(data.val.x, data.val.y)
        if acc > best["acc"]:
            state = copy.deepcopy(m.state_dict())
            best.update(acc=acc, epoch=int(record["epoch"]), state=state)

    t0 = time.perf_counter()
    kw = {"batch_size": t.batch_size, "lr": t.lr, "curve_ks": (), "on_epoch": keep_best}
    pvae.fit(m, data, objective="enum_elbo", epochs=args.epochs, **kw)
    secs = time.perf_counter() - t0
    m.load_state_dict(best["state"])
    return m, secs, best["epoch"]


def train_classifier(data, per_class: int, args) -> tuple[torch.nn.Module, float, int, int]:
    """q(y | x)'s MLP on the labelled images only; (net, seconds, best epoch, epochs run)."""
    torch.manual_seed(args.seed)
    net = nets.MLP(data.data_shape, 10, tuple(args.cfg.model.encoder["hidden"]))
    y = partial_labels(data.train.y, per_class, seed=args.seed)
    idx = (y >= 0).nonzero().squeeze(-1)
    opt = torch.optim.Adam(net.parameters(), lr=args.cfg.train.lr)
    g = torch.Generator().manual_seed(args.seed)
    best, best_state, best_epoch, since, epochs = -1.0, None, 0, 0, 0
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
            best, best_epoch, since = acc, epochs, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
    net.load_state_dict(best_state)
    return net, time.perf_counter() - t0, best_epoch, epochs


def m2_setup(m: pvae.SemiSupervisedVAE, args) -> str:
    """α and the minibatches, as the table states them."""
    n, b = len(m.labels), args.cfg.train.batch_size
    mix = f"{m.labelled_per_batch} labelled per {b}" if m.labelled_per_batch else f"shuffled {b}"
    return f"α = {m.alpha_value / n:g}·N, {mix}"


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
    p.add_argument("--config", default=str(CONFIG), help="M2's config (default: the shipped one)")
    p.add_argument("--epochs", type=int, default=None, help="M2's epochs (default: the config's)")
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    args.cfg = load_config(args.config)
    args.epochs = args.epochs or args.cfg.train.epochs
    torch.set_num_threads(args.threads)
    data = pvae.datasets.load("fashion-mnist", "dynamic", seed=args.seed)
    xt, yt = data.test.x, data.test.y
    rows = []
    for n in args.labels:
        net, secs, best, epochs = train_classifier(data, n, args)
        rows.append(
            {
                "labels/class": n,
                "model": f"classifier, labelled only (epoch {best} of {epochs})",
                "accuracy": accuracy(net, xt, yt),
                "log p(x)": None,
                "seconds": secs,
            }
        )
        m, secs, best = train_m2(data, n, args)
        torch.manual_seed(args.seed)  # the same binarized test images for every row
        lp, se, ys = log_px(m, data.test.observed(torch.arange(args.n_test)), args.k)
        rows.append(
            {
                "labels/class": n,
                "model": f"M2 (epoch {best} of {args.epochs}, {m2_setup(m, args)})",
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
