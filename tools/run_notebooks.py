"""Execute the research notebooks in full mode and stamp them, or check the stamps.

``make notebooks`` runs ``python tools/run_notebooks.py``: every ``examples/*.ipynb`` (or the
paths given) is executed top to bottom in a fresh kernel of the running Python (``python3``
kernel), in place, without ``PVAE_SMOKE`` (full mode), from the repository root (run folders
land in the git-ignored ``runs/``). Its outputs are kept and ``metadata.pvae`` records:

* ``code_sha256``: :func:`code_sha256` of its code cells, the sources the outputs belong to;
* ``commit`` (``git rev-parse --short HEAD``, ``+changes`` if ``pvae/`` differs from it);
* ``date`` (UTC), ``wall_seconds``, ``cpu_seconds`` (user + system time of the kernel process),
  ``cpu_count``, ``threads`` (``--threads``, the kernel's ``OMP_NUM_THREADS``, default 1) and
  ``mode`` ("full").

Figures are stored as palette PNGs (:func:`shrink_figures`). The same numbers are written, for
readers of the rendered page, into a markdown cell second from the top (tagged
``pvae-run-stamp``; markdown is not part of the hash).

``python tools/run_notebooks.py --check`` executes nothing: it exits 1, naming each problem,
when a notebook has no stamp, a code cell was changed since the run, a cell was not executed or
holds an error, a cell that prints or draws holds no output, or the notebook has no figure.
The tests call :func:`problems` directly.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STAMP_TAG = "pvae-run-stamp"
RERUN = "re-execute it with `make notebooks`"
PLOTS = re.compile(r"\bplotting\.\w+\(|\.plot\(|\bplt\.(plot|subplots|figure)\(")
"""Code that draws a figure: a ``pvae.plotting`` function, a ``.plot()`` method or pyplot."""


def code_sha256(nb: nbformat.NotebookNode) -> str:
    """The SHA-256 of a notebook's code cells: their sources, in order, as a JSON list.

    Markdown cells, outputs and metadata do not enter it, so editing prose needs no re-run, while
    any change to code (an edit, an added, removed or reordered cell) changes the hash.
    """
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode()).hexdigest()


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What makes a committed notebook's outputs untrustworthy (an empty list: nothing).

    The outputs must come from one full-mode run of the current code: a stamp whose hash equals
    :func:`code_sha256`, and the checks of :func:`output_problems`.
    """
    stamp = nb.metadata.get("pvae")
    if not stamp or "code_sha256" not in stamp:
        found = [f"it has no pvae stamp in its metadata (never executed by the tool): {RERUN}"]
    else:
        found = []
        if stamp["code_sha256"] != code_sha256(nb):
            found.append(f"its code cells changed since their outputs were made: {RERUN}")
        if stamp.get("mode") != "full":
            found.append(f"its outputs come from mode {stamp.get('mode')!r}, not 'full': {RERUN}")
    return found + output_problems(nb)


def output_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Whether an executed notebook's outputs are complete, whatever mode made them: execution
    counts 1, 2, ... in order (one top-to-bottom run), no error output, printed text under every
    cell that calls ``print``, a PNG image under every cell that draws (:data:`PLOTS`), and at
    least one PNG figure in all."""
    found = []
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    if counts != list(range(1, len(code) + 1)):
        found.append(f"execution counts {counts} are not one top-to-bottom run: {RERUN}")
    for number, cell in enumerate(code, start=1):
        kinds = {output.output_type for output in cell.outputs}
        if "error" in kinds:
            found.append(f"code cell {number} holds an error output")
        if "print(" in cell.source and "stream" not in kinds:
            found.append(f"code cell {number} prints but holds no printed output")
        if PLOTS.search(cell.source) and not _figures(cell):
            found.append(f"code cell {number} draws a figure but holds no image/png output")
    if not any(_figures(cell) for cell in code):
        found.append("no code cell holds a figure (image/png output)")
    return found


def _figures(cell: nbformat.NotebookNode) -> int:
    """How many PNG images a code cell's outputs hold."""
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


def _describe() -> str:
    """The commit the notebooks are executed at, with ``+changes`` when the library (``pvae/``)
    differs from it (the notebooks themselves change as they are executed: they do not count)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "unknown"
    changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "pvae"], check=False)
    return head.stdout.strip() + ("+changes" if changed.returncode else "")


def _stamp_cell(stamp: dict) -> nbformat.NotebookNode:
    """The markdown cell that tells a reader how these outputs were made."""
    threads = f"{stamp['threads']} thread" + ("s" if stamp["threads"] > 1 else "")
    text = (
        f"*Outputs below: full mode, executed by `make notebooks` on {stamp['date'][:10]} "
        f"at pvae {stamp['commit']}: {stamp['cpu_seconds'] / 60:.1f} CPU minutes "
        f"({stamp['wall_seconds'] / 60:.1f} minutes wall clock, {threads}) on a "
        f"{stamp['cpu_count']}-core machine. Set `PVAE_SMOKE=1` for a run of seconds that only "
        "checks every cell runs.*"
    )
    return nbformat.v4.new_markdown_cell(text, metadata={"tags": [STAMP_TAG]})


def _place_stamp(nb: nbformat.NotebookNode, stamp: dict) -> None:
    """Replace the stamp cell, or insert it after the notebook's first (title) cell."""
    cells = [c for c in nb.cells if STAMP_TAG not in c.get("metadata", {}).get("tags", [])]
    cells.insert(1, _stamp_cell(stamp))
    nb.cells = cells


def shrink_figures(nb: nbformat.NotebookNode) -> None:
    """Store every PNG output as an optimized 256-colour palette PNG (composited on white), when
    smaller: about a third of matplotlib's RGBA bytes, with no visible change to line plots and
    image grids, so a notebook with ten figures stays well under a megabyte."""
    import base64
    import io

    from PIL import Image

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            raw = base64.b64decode(data["image/png"])
            image = Image.open(io.BytesIO(raw)).convert("RGBA")
            flat = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
            buffer = io.BytesIO()
            flat.convert("RGB").quantize(256).save(buffer, "PNG", optimize=True)
            if buffer.tell() < len(raw):
                data["image/png"] = base64.b64encode(buffer.getvalue()).decode() + "\n"


def execute(path: Path, threads: int = 1, timeout: int = 1800) -> dict:
    """Execute one notebook in full mode, in place, and stamp it; returns the stamp.

    ``threads`` is the kernel's ``OMP_NUM_THREADS``: one by default, as the notebooks' networks
    are small (more threads mostly spin, inflating CPU time) and the CPU minutes then count work.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("PVAE_SMOKE", "MPLBACKEND")}
    env["OMP_NUM_THREADS"] = str(threads)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    saved = os.environ.copy()
    try:
        os.environ.clear()
        os.environ.update(env)  # the kernel inherits this process's environment
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, reaped at shutdown
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stamp = {
        "code_sha256": code_sha256(nb),
        "mode": "full",
        "commit": _describe(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "cpu_count": os.cpu_count(),
        "threads": threads,
    }
    nb.metadata["pvae"] = stamp
    _place_stamp(nb, stamp)
    shrink_figures(nb)
    nbformat.write(nb, path)
    return stamp


def main(argv: list[str] | None = None) -> int:
    """The command line: execute and stamp (default) or ``--check``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: examples/*)")
    parser.add_argument("--check", action="store_true", help="verify the stamps, run nothing")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the kernel")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(EXAMPLES.glob("*.ipynb"))
    failed = 0
    for path in paths:
        if args.check:
            found = problems(nbformat.read(path, as_version=4))
            for problem in found:
                print(f"{path}: {problem}", file=sys.stderr)
            failed += bool(found)
            continue
        print(f"{path}: executing in full mode ...", flush=True)
        stamp = execute(path, threads=args.threads)
        print(
            f"{path}: {stamp['wall_seconds']:.0f} s wall, {stamp['cpu_seconds']:.0f} s CPU",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
