"""Every fenced Python and shell block of README.md and docs/**/*.md runs as written.

Each page runs top to bottom in a fresh temporary working directory: its Python blocks share one
namespace, its shell blocks run with ``bash -euo pipefail``, the interpreter's ``bin`` first on
PATH (so ``pvae`` and ``python`` are this environment's) and PYTHONPATH set to the repository
root (so ``pvae`` and ``examples.my_models`` are this checkout's). A block that must not run says
why on the line before its fence::

    <!-- snippet: skip (needs a GPU) -->

and the reason must not be empty.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyro
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in PAGES if "_build" not in p.parts]
PYTHON = ("python",)
SHELL = ("bash", "sh", "console", "shell")
FENCE = re.compile(r"^```([\w{}-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*snippet:\s*skip\s*(?:\((.*?)\))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the reason given by a skip marker, or None


def blocks(text: str) -> list[Block]:
    """The Python and shell blocks of a page's Markdown, in order, with their skip markers.

    Raises:
        ValueError: a skip marker without a reason.
    """
    found = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if lang not in PYTHON + SHELL:
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        skip = None
        if marker is not None:
            skip = (marker.group(1) or "").strip()
            if not skip:
                raise ValueError(f"line {line - 1}: a snippet skip marker needs a reason in (...)")
        found.append(Block(lang, m.group(2), line, skip))
    return found


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_page_is_found_and_markers_are_read():
    assert ROOT / "README.md" in PAGES and len(PAGES) >= 8
    sample = (
        "<!-- snippet: skip (needs a GPU) -->\n```bash\nmake test-gpu\n```\n\n```python\nx=1\n```\n"
    )
    got = blocks(sample)
    assert [(b.lang, b.skip) for b in got] == [("bash", "needs a GPU"), ("python", None)]
    with pytest.raises(ValueError, match="needs a reason"):
        blocks("<!-- snippet: skip () -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        blocks("<!-- snippet: skip -->\n```sh\nls\n```\n")


def test_readme_skips_only_what_ci_runs_anyway():
    first = blocks((ROOT / "README.md").read_text())[0]
    assert "make run" in first.code and "make test" in first.code
    assert first.skip and "CI" in first.skip
    # ... and CI runs exactly the README's two commands (tests first, so a red suite fails fast).
    readme = [line.split("#")[0].strip() for line in first.code.splitlines()]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in ci if line.strip().startswith("make ")]
    assert sorted(commands) == sorted(c for c in readme if c), (commands, readme)


def _shell_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "Agg")
    return env


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_snippets_run_as_written(page, tmp_path, monkeypatch):
    page_blocks = blocks(page.read_text())
    if not any(b.skip is None for b in page_blocks):
        pytest.skip("no runnable Python or shell block")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    pyro.clear_param_store()
    namespace: dict = {"__name__": "__snippet__"}
    env = _shell_env()
    for block in page_blocks:
        if block.skip is not None:
            continue
        where = f"{_page_id(page)}:{block.line}"
        if block.lang in PYTHON:
            exec(compile(block.code, where, "exec"), namespace)
            continue
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (
            f"{where} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
            f"\n--- stderr\n{proc.stderr[-3000:]}"
        )
