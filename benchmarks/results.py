"""The results page: every shipped config in ``examples/configs/`` trained on Fashion-MNIST and
evaluated the same way, written as one table into ``docs/results.md`` (``make results``).

    python benchmarks/results.py                              # the stated budget, all configs
    python benchmarks/results.py --epochs 1 --seeds 0 --subset 200 --k 100 --ais-subset 10 \
        --configs iwae-1layer --out /tmp/results --no-write   # a minute: the pipeline only

Each (config, seed) is ``pvae train --config C --set data.name=fashion-mnist --set
train.epochs=E --set train.seed=S --set train.batch_size=B``, then ``pvae evaluate RUN --k K
--subset N`` (test log p(x) as IWAE_K on the first N test images, dynamically binarized once,
seeded; ELBO; active units), then ``pvae ais RUN --subset M`` (a stochastic lower bound of
log p(x) on the first M test images, Wallach/Neal AIS with HMC). The table's figures are mean ±
s.e. over seeds (s.e. = sample standard deviation / sqrt(seeds); with one seed, the Monte
Carlo s.e. of the estimate instead, marked ``mc``). bits/dim is −log p(x) / (D ln 2) with D the
number of pixels: nats per image over binary pixels (dynamically binarized data), so not
comparable with the 8-bit bits/dim of colour-image papers.

Configs whose data are not Fashion-MNIST-shaped (CIFAR-10 colour configs) are run on
Fashion-MNIST's 8-bit grey levels (``data.binarize = "none"``) where their likelihood is a
discretized one; the table says so in its ``data`` column.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "examples" / "configs"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PIXELS = 784


def pvae(*args: str) -> str:
    """Run one ``pvae`` command in a fresh process (one CPU thread: comparable seconds/epoch)."""
    cmd = [sys.executable, "-m", "pvae", *args]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def overrides(config: Path) -> tuple[list[str], str]:
    """The ``--set`` overrides that put ``config`` on Fashion-MNIST, and the data's label."""
    cfg = tomllib.loads(config.read_text())
    data = cfg.get("data", {})
    if data.get("name", "digits") == "cifar10":
        return ["data.name=fashion-mnist", "data.binarize=none"], "F-MNIST 8-bit"
    return ["data.name=fashion-mnist"], "F-MNIST binarized"


def setting(config: Path, key: str, args: argparse.Namespace) -> int | list[int]:
    """``--KEY`` (epochs, k, seeds), or ``config``'s own ``--for NAME.KEY=VALUE``."""
    for item in args.for_:
        target, _, value = item.partition("=")
        if target == f"{config.stem}.{key}":
            values = [int(v) for v in value.split(",")]
            return values if key == "seeds" else values[0]
    return getattr(args, key)


def one_run(config: Path, seed: int, args: argparse.Namespace) -> dict:
    """Train, evaluate and AIS one (config, seed); return the figures of the row. A run
    folder that already holds the budget's epochs is evaluated, not trained again."""
    epochs, k = setting(config, "epochs", args), setting(config, "k", args)
    run = Path(args.out) / f"{config.stem}-e{epochs}" / f"seed{seed}"
    sets, label = overrides(config)
    sets += [f"train.epochs={epochs}", f"train.seed={seed}"]
    sets += [f"train.batch_size={args.batch_size}", "eval.curve_ks=[]"]
    t0 = time.time()
    done = (run / "metrics.json").exists()
    if not done or len(json.loads((run / "metrics.json").read_text())) < epochs:
        pvae("train", "--config", str(config), "--out", str(run), "--quiet",
             *[a for s in sets for a in ("--set", s)])  # fmt: skip
    history = json.loads((run / "metrics.json").read_text())
    cache = run / f"results-k{k}-n{args.subset}-ais{args.ais_subset}.json"
    if cache.exists():  # evaluated before with these settings: the same numbers
        row = json.loads(cache.read_text())
        if all(isinstance(a, str) for a in row["active"]) and row["active"]:
            return row
        # an older cache without the per-site counts: the diagnostics alone (no log p(x))
        light = pvae("evaluate", str(run), "--k", "0", "--subset", str(args.subset), "--json",
                     "--quiet", "--no-store")  # fmt: skip
        row["active"] = active_units(json.loads(light)["diagnostics"])
        cache.write_text(json.dumps(row))
        return row
    ev = json.loads(pvae("evaluate", str(run), "--k", str(k), "--subset", str(args.subset),
                         "--json", "--quiet"))  # fmt: skip
    try:
        ais = json.loads(
            pvae("ais", str(run), "--subset", str(args.ais_subset), "--json", "--quiet")
        )
        ais_mean, ais_se = ais["ais"]["log_px"], ais["ais"]["log_px_se"]
    except RuntimeError as err:  # AIS needs continuous latents (HMC): discrete ones are refused
        print(f"{run}: no AIS: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
        ais_mean, ais_se = float("nan"), float("nan")
    row = {
        "config": config.stem,
        "data": label,
        "epochs": epochs,
        "k": k,
        "seed": seed,
        "run": str(run),
        "log_px": ev["log_px"],
        "log_px_se": ev["log_px_se"],
        "khat_frac": ev["log_px_khat_frac_above_0.7"],
        "elbo": ev["elbo"],
        "ais": ais_mean,
        "ais_se": ais_se,
        "active": active_units(ev["diagnostics"]),
        "sec_per_epoch": statistics.fmean(h["epoch_seconds"] for h in history),
        "wall": time.time() - t0,
        "accuracy": ev.get("accuracy"),
    }
    cache.write_text(json.dumps(row))
    return row


def active_units(diag: dict) -> list[str]:
    """Active units per latent site (sites in name order: z1, z2, ... bottom first), from
    ``pvae evaluate``'s diagnostics, as ``"site a/n"``."""
    by_site = diag.get("active_units_by_site")
    if by_site:
        units = diag.get("units_by_site", {})
        return [f"{k} {v}/{units.get(k, '?')}" for k, v in sorted(by_site.items())]
    if diag.get("active_units") is not None:
        return [f"z {diag['active_units']}/{diag.get('latent_dim', '?')}"]
    return []


def pooled(rows: list[dict], key: str, mc: str | None = None) -> str:
    """mean ± s.e. over seeds; one seed: the Monte Carlo s.e. (``mc``)."""
    vals = [r[key] for r in rows]
    if not all(math.isfinite(v) for v in vals):
        return "n/a"
    m = statistics.fmean(vals)
    if len(vals) > 1:
        return f"{m:.2f} ± {statistics.stdev(vals) / math.sqrt(len(vals)):.2f}"
    if mc is not None and math.isfinite(rows[0][mc]):
        return f"{m:.2f} ± {rows[0][mc]:.2f} mc"
    return f"{m:.2f}"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The markdown table, one line per config, seeds pooled."""
    head = (
        f"| config | data | epochs | log p(x), IWAE k={args.k} | AIS ({args.ais_subset} images) "
        "| ELBO | bits/dim | active units | s/epoch | seeds |"
    )
    lines = [head, "|" + "---|" * 10]
    for name in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == name]
        bpd = -statistics.fmean(r["log_px"] for r in rs) / (PIXELS * math.log(2))
        active = " / ".join(str(a) for a in rs[0]["active"])
        acc = [r["accuracy"] for r in rs if r.get("accuracy") is not None]
        label = f"`{name}`" + (f" (test accuracy {statistics.fmean(acc):.3f})" if acc else "")
        cells = [
            label,
            rs[0]["data"],
            str(rs[0]["epochs"]),
            pooled(rs, "log_px", "log_px_se")
            + ("" if rs[0]["k"] == args.k else f" (k={rs[0]['k']})"),
            pooled(rs, "ais", "ais_se"),
            pooled(rs, "elbo"),
            f"{bpd:.3f}",
            active or "–",
            f"{statistics.fmean(r['sec_per_epoch'] for r in rs):.1f}",
            ", ".join(str(r["seed"]) for r in rs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for item in args.skip:
        name, _, why = item.partition("=")
        lines.append(f"| `{name}` | not run here: {why} |" + " |" * 8)
    return "\n".join(lines)


def write(page: Path, text: str) -> None:
    """Replace the block between the markers of ``page`` with ``text``."""
    doc = page.read_text()
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{page} has no {BEGIN} ... {END} block to replace")
    head, rest = doc.split(BEGIN, 1)
    page.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", help="config names (default: every shipped one)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--for",
        dest="for_",
        nargs="*",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a config's own epochs, k or seeds (comma-separated), e.g. m2-fashion-mnist.k=500",
    )
    p.add_argument(
        "--skip", nargs="*", default=[], metavar="NAME=WHY", help="configs not run, and why"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--subset", type=int, default=2000, help="test images for log p(x)")
    p.add_argument("--ais-subset", type=int, default=100, help="test images for AIS")
    p.add_argument("--out", default="runs/results")
    p.add_argument("--page", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args()
    skipped = {item.partition("=")[0] for item in args.skip}
    names = args.configs or sorted(c.stem for c in CONFIGS.glob("*.toml"))
    names = [n for n in names if n not in skipped]
    t0 = time.time()
    rows = [
        one_run(CONFIGS / f"{n}.toml", s, args)
        for n in names
        for s in setting(CONFIGS / f"{n}.toml", "seeds", args)
    ]
    wall = time.time() - t0
    text = table(rows, args)
    cmd = " ".join(["python benchmarks/results.py", *sys.argv[1:]])
    stamp = (
        f"\n\n`{cmd}`: batch {args.batch_size}, {len(rows)} runs; evaluating (and training "
        f"what was not trained yet) took {wall / 60:.0f} min wall on this machine."
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    print(text + stamp)
    if not args.no_write:
        write(Path(args.page), text + stamp)


if __name__ == "__main__":
    main()
