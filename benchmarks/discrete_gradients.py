"""Gradient estimators for binary latents, compared on one sigmoid belief net at fixed parameters.

Model: :class:`pvae.sbn.SigmoidBeliefNet` (200-200 binary units by default, the VIMCO paper's
two-layer SBN) on the 8x8 digits, dynamically binarized, trained briefly with VIMCO so the
parameters are past their initial values. Then, on one fixed minibatch, each estimator is run
``--repeats`` times with fresh noise and the script reports, per datapoint:

* the value its loss estimates (the k-sample bound for VIMCO and RWS, the ELBO for Pyro's score
  function, the relaxed model's ELBO for the Binary Concrete relaxation), mean ± s.e. over the
  repeats;
* the variance of its gradient estimate, summed over the guide's parameters and over the model's
  (trace of the covariance), and the guide gradient's signal-to-noise ratio (the norm of the mean
  over the root of the summed variance).

Estimators (k = ``--k`` samples each):

* ``vimco``: the k-sample bound with leave-one-out baselines (:class:`pvae.objectives.VIMCO`);
* ``score (k-sample)``: the same bound, no baseline (``VIMCO(baseline="none")``);
* ``rws``: reweighted wake-sleep (:class:`pvae.objectives.RWS`); its guide gradient is wake-φ,
  which is not the gradient of the bound (it targets the inclusive KL);
* ``score (elbo)``: Pyro's ``Trace_ELBO`` with k vectorized particles: its score-function
  gradient for the Bernoulli sites (no baseline);
* ``relaxed``: the same parameters in the relaxed model (``relaxed=True``, temperature
  ``--temperature``), ``Trace_ELBO`` with pathwise gradients: the ELBO of a different,
  continuous model, not a bound on the discrete one's log p(x).

    python benchmarks/discrete_gradients.py                  # 3 epochs, 200 repeats, k = 5
    python benchmarks/discrete_gradients.py --layers 200 --k 10 --epochs 0

Prints a markdown table, with the discrete model's log p(x) on the minibatch (k = 5000) for
reference.
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch

import pvae
from pvae.objectives import RWS, VIMCO
from pvae.sbn import SigmoidBeliefNet
from pvae.training.step import fit_context


def estimators(k: int) -> dict[str, tuple[pyro.infer.ELBO, bool, str]]:
    """Name: (objective, relaxed model?, what its value estimates)."""
    elbo = pyro.infer.Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    return {
        "vimco": (VIMCO(num_particles=k), False, f"{k}-sample bound"),
        "score (k-sample)": (VIMCO(num_particles=k, baseline="none"), False, f"{k}-sample bound"),
        "rws": (RWS(num_particles=k), False, f"{k}-sample bound (wake-θ)"),
        "score (elbo)": (elbo, False, "ELBO"),
        "relaxed": (elbo, True, "ELBO of the relaxed model"),
    }


def gradient_stats(
    sbn: SigmoidBeliefNet, objective: pyro.infer.ELBO, x: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Value and gradient statistics of ``objective`` over ``repeats`` fresh estimates."""
    groups = {"guide": list(sbn.encoders.parameters()), "model": list(sbn.decoders.parameters())}
    groups["model"].append(sbn.top_logits)
    values, grads = [], {g: [] for g in groups}
    t0 = time.perf_counter()
    for _ in range(repeats):
        loss = objective.differentiable_loss(sbn.model, sbn.guide, x) / x.shape[0]
        flat = torch.autograd.grad(loss, [p for ps in groups.values() for p in ps])
        values.append(-float(loss.detach()))
        i = 0
        for g, ps in groups.items():
            grads[g].append(torch.cat([t.reshape(-1) for t in flat[i : i + len(ps)]]))
            i += len(ps)
    seconds = (time.perf_counter() - t0) / repeats
    v = torch.tensor(values, dtype=torch.float64)
    out = {"value": float(v.mean()), "value_se": float(v.std() / math.sqrt(repeats))}
    for g, rows in grads.items():
        m = torch.stack(rows).double()
        out[f"{g}_var"] = float(m.var(0).sum())
        out[f"{g}_snr"] = float(m.mean(0).norm() / m.var(0).sum().sqrt())
    out["ms"] = 1000 * seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="VIMCO training before measuring")
    parser.add_argument("--batch", type=int, default=32, help="datapoints in the fixed minibatch")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = pvae.datasets.load("digits", binarize="dynamic")
    sbn = SigmoidBeliefNet(latent_sizes=args.layers, temperature=args.temperature)
    if args.epochs:
        pvae.fit(sbn, data, objective="vimco", num_particles=args.k, epochs=args.epochs,
                 batch_size=24, lr=3e-3, curve_every=10**6, progress=False, device="cpu",
                 quiet=True)  # fmt: skip
    sbn.build(data.data_shape).double()
    x = data.test.observed()[: args.batch].double()
    ref = pvae.log_px(sbn, x, k=5000, seed=0)
    rows = []
    with fit_context():
        for name, (objective, relaxed, what) in estimators(args.k).items():
            sbn.relaxed = relaxed
            torch.manual_seed(1)
            rows.append((name, what, gradient_stats(sbn, objective, x, args.repeats)))
    sbn.relaxed = False
    print(
        f"SBN {'-'.join(map(str, args.layers))} on digits after {args.epochs} epochs of VIMCO "
        f"(k = {args.k}); {args.batch} test digits, {args.repeats} repeats, float64; log p(x) "
        f"= {float(ref.log_px.mean()):.3f} (k = 5000, IS with the discrete guide)\n"
    )
    print("| estimator | estimates | value (nats) | guide grad variance | guide grad SNR "
          "| model grad variance | ms/estimate |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, what, s in rows:
        print(
            f"| {name} | {what} | {s['value']:.3f} ± {s['value_se']:.3f} | {s['guide_var']:.4g} "
            f"| {s['guide_snr']:.3f} | {s['model_var']:.4g} | {s['ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
