"""The documentation builds strictly and every Python example in it runs."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pvae.config import Config

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))


def test_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.fail("mkdocs is missing: install the dev extra (pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's end-of-life banner
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("pvae.fit") > 0


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_python_examples_run(page, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if not blocks:
        pytest.skip("no Python examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)


def test_reference_documents_every_config_key():
    text = (ROOT / "docs" / "reference.md").read_text()
    for section in dataclasses.fields(Config):
        assert f"### `[{section.name}]`" in text
        for f in dataclasses.fields(section.default_factory()):
            key = f.metadata.get("key", f.name)  # `class` is the field class_
            assert f"| `{key}` |" in text, f"{section.name}.{key} is undocumented"


def test_readme_commands_are_in_the_docs():
    assert "make run" in (ROOT / "docs" / "index.md").read_text()
    assert shutil.which("make") is not None
