"""The documentation builds strictly. (Its Python and shell examples run in test_snippets.py.)"""

import dataclasses
import importlib.util
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pvae.config import Config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The HTML site, built as CI builds it: warnings are errors."""
    for package in ("sphinx", "myst_nb", "furo", "latex2mathml"):
        if importlib.util.find_spec(package) is None:
            pytest.fail(f"{package} is missing: install the dev extra (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    command += ["-d", str(out / "doctrees"), "docs", str(out / "html")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "html"


def _html(site: Path, pattern: str = "**/*.html") -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text() for p in sorted(site.glob(pattern))}


def test_api_pages_document_the_public_api(site):
    import pvae

    ids = "".join(_html(site, "api/*.html").values())
    for name in pvae.__all__:
        if name == "__version__":
            continue
        obj = getattr(pvae, name)
        if isinstance(obj, types.ModuleType):
            assert f'id="module-{obj.__name__}"' in ids, f"module {obj.__name__} is undocumented"
        else:
            where = (f'id="pvae.{name}"', f'id="{obj.__module__}.{name}"')
            assert any(w in ids for w in where), f"pvae.{name} is undocumented"


def test_no_sphinx_role_is_printed_literally(site):
    role = re.compile(r":(math|class|func|meth|attr|mod|obj|exc|data|ref):`")
    for page, text in _html(site).items():
        found = role.search(text)
        assert found is None, f"{page} prints {found[0]!r} literally"


def test_examples_are_doctest_blocks(site):
    sections = 0
    for page, text in _html(site, "api/*.html").items():
        assert not re.search(r"<blockquote>\s*<div>\s*<p>&gt;&gt;&gt;", text), page
        for after in re.split(r'<p class="rubric">Examples?</p>', text)[1:]:
            body = re.split(r'<p class="rubric">|</dd>', after, maxsplit=1)[0]
            assert 'class="doctest' in body or "highlight-pycon" in body, page
            sections += 1
    assert sections >= 10  # the docstrings hold more than 15 Example sections


def test_math_is_rendered_as_mathml(site):
    concepts = (site / "concepts.html").read_text()
    assert concepts.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">') >= 5
    assert "\\[" not in concepts and "$$" not in concepts
    # Chromium (MathML Core) ignores mathvariant other than "normal": 𝔼 must be a Unicode letter.
    assert not re.search(r'mathvariant="(?!normal")', concepts)
    # :math: roles of module docstrings (pvae.diagnostics, pvae.evaluation.log_px).
    for page in ("api/diagnostics.html", "api/evaluation.html"):
        text = (site / page).read_text()
        assert text.count('<math xmlns="http://www.w3.org/1998/Math/MathML"') >= 3, page
        assert "\\mathbb" not in text, page


def test_site_loads_nothing_from_the_network(site):
    remote = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=\"(https?:)?//", re.I)
    for page, text in _html(site).items():
        found = remote.search(text)
        assert found is None, f"{page} loads {found[0]!r}"
        assert not re.search(r"<script[^>]*mathjax", text, re.I), f"{page} loads MathJax"
    for name, css in _html(site, "_static/**/*.css").items():
        assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", css), name


def test_notebooks_are_pages(site):
    notebooks = sorted((ROOT / "examples").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        page = site / "notebooks" / f"{nb.stem}.html"
        assert page.exists(), f"{nb.name} has no page"
        text = page.read_text()
        # code cells: Python, or IPython once executed (the kernel's language_info lexer)
        assert re.search(r'class="highlight-i?python3?', text), f"{page.name} shows no code cell"
        # the committed outputs are rendered: figures (as local files) and printed numbers
        images = re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', text)
        assert images, f"{page.name} shows no figure: run `make notebooks` and commit"
        for src in images:
            assert (page.parent / src).is_file(), f"{page.name}: {src} is not in the site"
        assert 'class="output' in text, f"{page.name} shows no output"


def test_reference_pipes_are_not_escaped(site):
    text = (site / "reference.html").read_text()
    assert "manifold|samples|recon|curves|kl|khat|scatter" in text
    assert "\\|" not in text


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


def test_unsupported_latex_is_a_build_warning(caplog, monkeypatch):
    from docutils import nodes

    monkeypatch.syspath_prepend(str(ROOT / "docs" / "_ext"))
    import mathml

    node = nodes.math(text="x")
    assert "&#x1D53C;" in mathml._to_mathml(r"\mathbb E_q[x]", "inline", node)  # 𝔼, not E
    assert not caplog.records
    mathml._to_mathml(r"\notacommand{x}", "block", node)
    assert "notacommand" in caplog.text


def test_reference_documents_every_command_line_option():
    """The command table names every subcommand and each of its options in a row of its own
    command (the parser is the truth; the table is written for people)."""
    import argparse

    from pvae.cli import build_parser

    rows = [
        line
        for line in (ROOT / "docs" / "reference.md").read_text().splitlines()
        if line.startswith("| `pvae ")
    ]
    (sub,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        mine = " ".join(r for r in rows if r.startswith((f"| `pvae {name} ", f"| `pvae {name}`")))
        assert mine, f"pvae {name} has no row"
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in mine, f"pvae {name} {option} is undocumented"
