"""A battery of bad inputs, faults and misuses against the ``pvae`` command line.

Each case runs the real command in a fresh process and checks what a user would see: an exit
status of 1 or 2, a message on stderr that starts ``pvae ...: error:`` or ``pvae: error:``, no
Python traceback, and the trained run folder untouched (its checkpoint and config byte for byte).
Usage (about 5 minutes on 2 cores)::

    python tools/bad_input_battery.py [--keep DIR]

It prints one line per case (status, verdict, the first line of stderr) and a count at the end;
it exits 1 if any case misbehaves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

Setup = Callable[[Path, Path], list[str]]


def pvae(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "pvae", *argv], cwd=cwd, env=env, capture_output=True, text=True
    )


def digest(run: Path) -> str:
    h = hashlib.sha256()
    for name in ("checkpoint.pt", "config.toml"):
        p = run / name
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()


def copy_run(run: Path, work: Path, name: str) -> Path:
    dst = work / name
    shutil.copytree(run, dst)
    return dst


def cases(run: Path, work: Path) -> list[tuple[str, Setup]]:
    """(name, setup) pairs; setup returns argv (run in ``work``) and may write files there."""
    r = str(run)

    def argv(*a: str) -> Setup:
        return lambda run, work: list(a)

    def write(name: str, data: bytes | str) -> Path:
        p = work / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    def npy_object(run: Path, work: Path) -> list[str]:
        np.save(work / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return ["train", "--out", "o1", "--set", "data.name=file", "--set", "data.path=obj.npy"]

    def npz_no_x(run: Path, work: Path) -> list[str]:
        np.savez(work / "nox.npz", images=np.zeros((4, 3)))
        return ["train", "--out", "o2", "--set", "data.name=file", "--set", "data.path=nox.npz"]

    def wrong_shape(run: Path, work: Path) -> list[str]:
        np.save(work / "shape.npy", np.zeros((5, 3), dtype=np.float32))
        return ["evaluate", r, "--data", "shape.npy", "--no-store"]

    def truncated_checkpoint(run: Path, work: Path) -> list[str]:
        bad = copy_run(run, work, "trunc-ckpt")
        data = (bad / "checkpoint.pt").read_bytes()
        (bad / "checkpoint.pt").write_bytes(data[: len(data) // 2])
        return ["evaluate", str(bad), "--k", "5"]

    def broken_toml(run: Path, work: Path) -> list[str]:
        bad = copy_run(run, work, "bad-toml")
        (bad / "config.toml").write_text("[train\nepochs = 1\n")
        return ["evaluate", str(bad), "--k", "5"]

    def metrics_list(run: Path, work: Path) -> list[str]:
        bad = copy_run(run, work, "metrics-list")
        (bad / "metrics.json").write_text("[1, 2, 3]")
        return ["compare", str(bad)]

    def truncated_evaluation(run: Path, work: Path) -> list[str]:
        bad = copy_run(run, work, "trunc-eval")
        f = bad / "evaluation" / "test.npz"
        f.write_bytes(f.read_bytes()[:100])
        return ["compare", str(bad)]

    def no_evaluation(run: Path, work: Path) -> list[str]:
        bare = copy_run(run, work, "no-eval")
        shutil.rmtree(bare / "evaluation")
        return ["compare", str(bare)]

    def folder_as_config(run: Path, work: Path) -> list[str]:
        (work / "cfgdir").mkdir(exist_ok=True)
        return ["train", "--config", "cfgdir", "--out", "o3"]

    def toml_syntax(run: Path, work: Path) -> list[str]:
        write("syntax.toml", "[train]\nepochs = = 3\n")
        return ["train", "--config", "syntax.toml", "--out", "o4"]

    def unknown_table(run: Path, work: Path) -> list[str]:
        write("table.toml", "[trian]\nepochs = 3\n")
        return ["train", "--config", "table.toml", "--out", "o5"]

    def resume_metrics_csv_folder(run: Path, work: Path) -> list[str]:
        bad = copy_run(run, work, "csv-folder")
        (bad / "metrics.csv").unlink(missing_ok=True)
        (bad / "metrics.csv").mkdir()
        return ["train", "--resume", str(bad), "--set", "train.epochs=2"]

    def existing_out(run: Path, work: Path) -> list[str]:
        return ["train", "--out", r, "--set", "train.epochs=1"]

    def user_class_raises(run: Path, work: Path) -> list[str]:
        write("broken_models.py", "raise RuntimeError('boom at import')\n")
        write("cls.toml", '[model]\nclass = "broken_models:Net"\n')
        return ["train", "--config", "cls.toml", "--out", "o6"]

    return [
        ("train: epochs 0", argv("train", "--out", "o", "--set", "train.epochs=0")),
        ("train: negative lr", argv("train", "--out", "o", "--set", "train.lr=-1")),
        ("train: unknown key", argv("train", "--out", "o", "--set", "train.nonsense=1")),
        ("train: unknown prior", argv("train", "--out", "o", "--set", "model.prior.name=nope")),
        ("train: unknown dataset", argv("train", "--out", "o", "--set", "data.name=nope")),
        ("train: batch size 0", argv("train", "--out", "o", "--set", "train.batch_size=0")),
        ("train: --set without =", argv("train", "--out", "o", "--set", "train.epochs")),
        ("train: missing config", argv("train", "--config", "missing.toml", "--out", "o")),
        ("train: config is a folder", folder_as_config),
        ("train: TOML syntax error", toml_syntax),
        ("train: unknown table", unknown_table),
        ("train: duplicate seeds", argv("train", "--out", "o", "--seeds", "1", "1")),
        ("train: negative seed", argv("train", "--out", "o", "--seeds", "-3")),
        ("train: --out holds a run", existing_out),
        ("train: resume + --config", argv("train", "--resume", r, "--config", "x.toml")),
        ("train: resume a missing run", argv("train", "--resume", "nowhere")),
        (
            "train: resume changes likelihood",
            argv("train", "--resume", r, "--set", "model.likelihood.name=gaussian"),
        ),
        (
            "train: resume, unknown --allow-change",
            argv("train", "--resume", r, "--allow-change", "x.y"),
        ),
        (
            "train: --allow-change without resume",
            argv("train", "--out", "o", "--allow-change", "model"),
        ),
        ("train: resume, metrics.csv a folder", resume_metrics_csv_folder),
        (
            "train: continuous Bernoulli on binarized data",
            argv("train", "--out", "o", "--set", "model.likelihood.name=continuous_bernoulli"),
        ),
        (
            "train: IWAE with beta",
            argv("train", "--out", "o", "--set", "train.objective=iwae", "--set", "train.beta=2"),
        ),
        ("train: object array file", npy_object),
        ("train: npz without x", npz_no_x),
        ("train: model.class raises on import", user_class_raises),
        ("evaluate: missing run", argv("evaluate", "nowhere")),
        ("evaluate: --k -1", argv("evaluate", r, "--k", "-1")),
        ("evaluate: --num-samples 0", argv("evaluate", r, "--num-samples", "0")),
        ("evaluate: --k 0 with --max-k", argv("evaluate", r, "--k", "0", "--max-k", "100")),
        ("evaluate: --target-se -1", argv("evaluate", r, "--target-se", "-1")),
        ("evaluate: --max-k below --k", argv("evaluate", r, "--k", "20", "--max-k", "5")),
        ("evaluate: missing --data", argv("evaluate", r, "--data", "missing.npz")),
        ("evaluate: --data of another shape", wrong_shape),
        ("evaluate: unknown split", argv("evaluate", r, "--split", "nope")),
        ("evaluate: truncated checkpoint", truncated_checkpoint),
        ("evaluate: config with a TOML error", broken_toml),
        ("bounds: --k 0", argv("bounds", r, "--k", "0")),
        ("bounds: --ais-steps 0", argv("bounds", r, "--ais-steps", "0")),
        ("bounds: --bdmc without --ais-steps", argv("bounds", r, "--bdmc", "3")),
        ("bounds: --bdmc -1", argv("bounds", r, "--ais-steps", "5", "--bdmc", "-1")),
        ("bounds: --plot of unknown format", argv("bounds", r, "--plot", "x.xyz")),
        ("bounds: --plot in a missing folder", argv("bounds", r, "--plot", "no/x.png")),
        ("ais: --steps 0", argv("ais", r, "--steps", "0")),
        ("ais: --chains 0", argv("ais", r, "--chains", "0")),
        ("ais: --leapfrog 0", argv("ais", r, "--leapfrog", "0")),
        ("ais: --subset beyond the split", argv("ais", r, "--subset", "100000")),
        ("plot: unknown figure", argv("plot", r, "--what", "nope")),
        ("plot: --out of unknown format", argv("plot", r, "--what", "curves", "--out", "x.xyz")),
        ("plot: --size 1000 1000", argv("plot", r, "--what", "curves", "--size", "1000", "1000")),
        ("plot: --dpi 1000000", argv("plot", r, "--what", "curves", "--dpi", "1000000")),
        ("plot: negative --size", argv("plot", r, "--what", "curves", "--size", "-1", "3")),
        ("sample: -n 0", argv("sample", r, "-n", "0")),
        ("sample: -n 100000", argv("sample", r, "-n", "100000")),
        ("sample: --npy not .npy", argv("sample", r, "-n", "10", "--npy", "x.txt")),
        ("sample: --out in a missing folder", argv("sample", r, "--out", "no/s.png")),
        ("compare: no stored evaluation", no_evaluation),
        ("compare: --plot of unknown format", argv("compare", r, "--plot", "c.xyz")),
        ("compare: the same run twice", argv("compare", r, r)),
        ("compare: metrics.json a list", metrics_list),
        ("compare: truncated evaluation", truncated_evaluation),
        ("compare: missing run", argv("compare", "nowhere")),
        ("pvae: unknown command", argv("nope")),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pvae-battery-"))
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    if not run.exists():
        trained = pvae("train", "--out", str(run), "--set", "train.epochs=2", "--quiet", cwd=work)
        if trained.returncode:
            print(trained.stderr)
            return 1
        pvae("evaluate", str(run), "--k", "10", "--quiet", cwd=work)
    before = digest(run)
    bad = 0
    rows = []
    for name, setup in cases(run, work):
        proc = pvae(*setup(run, work), cwd=work)
        err = proc.stderr.strip().splitlines()
        first = next((e for e in err if "error" in e), err[0] if err else "")
        clean = proc.returncode in (1, 2) and "Traceback" not in proc.stderr
        intact = digest(run) == before
        ok = clean and intact and first.startswith(("pvae", "usage"))
        bad += not ok
        rows.append({"case": name, "status": proc.returncode, "ok": ok, "message": first})
        print(f"{'ok ' if ok else 'BAD'} {proc.returncode}  {name}: {first[:160]}", flush=True)
    (work / "battery.json").write_text(json.dumps(rows, indent=1))
    intact = digest(run) == before
    print(f"{len(rows) - bad} of {len(rows)} cases behaved; run folder intact: {intact}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
