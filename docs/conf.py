"""Sphinx configuration: builds the site offline (no CDN, no network).

Build with ``.venv/bin/sphinx-build -W -b html docs docs/_build/html``. Markdown pages are read
by MyST (through myst-nb), the notebooks in ``examples/`` are rendered with their committed
outputs (figures, tables, numbers) without being executed, the API pages come from the
Google-style docstrings (autodoc + napoleon) and every formula is converted to MathML at build
time by the local ``_ext/mathml.py`` extension.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

from pvae import __version__  # noqa: E402


def _copy_notebooks() -> None:
    """Mirror ``examples/*.ipynb`` into ``docs/notebooks/`` (git-ignored).

    Sphinx reads only files under its source directory; copying (rather than a symlink) works
    from a fresh clone on every platform. Unchanged notebooks are not rewritten, so incremental
    builds stay incremental, and notebooks deleted from ``examples/`` disappear here too.
    """
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = {p.name: p for p in sorted((ROOT / "examples").glob("*.ipynb"))}
    for stale in target.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        copy = target / name
        if not copy.exists() or not filecmp.cmp(source, copy, shallow=False):
            shutil.copyfile(source, copy)


_copy_notebooks()

project = "pvae"
author = "pvae developers"
copyright = "pvae developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_nb",  # includes myst_parser: .md pages and .ipynb notebooks
    "mathml",  # docs/_ext/mathml.py
]
exclude_patterns = ["_build", "_ext", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# MyST: $…$ and $$…$$ math, \begin{…} environments, anchors for in-page links.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# Notebooks are committed with the outputs of their full run (`make notebooks`, which stamps
# them with the hash of their code; tests/test_notebooks.py checks the stamps and runs them in
# smoke mode): the site shows those outputs and never executes a notebook.
nb_execution_mode = "off"
nb_ipywidgets_js: dict[str, dict[str, str]] = {}  # the default loads require.js from a CDN

# Docstrings: Google style, type hints shown in the parameter descriptions.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # `Attributes:` as fields, not as duplicate attribute objects
napoleon_use_rtype = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autoclass_content = "class"
autodoc_preserve_defaults = True
# torch.nn.Module.forward and Distribution.log_prob docstrings describe torch, not pvae.
autodoc_inherit_docstrings = False

# Output: a self-contained theme, math as MathML (the default MathJax needs a CDN).
html_theme = "furo"
html_title = f"pvae {version}"
html_math_renderer = "mathml"
html_copy_source = False
html_show_sourcelink = False
