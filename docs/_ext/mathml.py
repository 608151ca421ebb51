"""Render math as MathML at build time, so the site needs no JavaScript and no network.

Sphinx's default HTML math renderer is MathJax, loaded from a CDN: offline the reader sees raw
LaTeX. This renderer converts every ``:math:`` role, ``.. math::`` directive and MyST
``$…$``/``$$…$$`` span to MathML with the pure-Python ``latex2mathml`` package; browsers
display MathML natively. LaTeX that ``latex2mathml`` does not understand is a build warning
(an error under ``sphinx-build -W``) rather than a silently garbled formula.
"""

from __future__ import annotations

import html
import re

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number
from sphinx.writers.html5 import HTML5Translator

logger = logging.getLogger(__name__)

# latex2mathml passes unknown commands through as the text of an element, e.g. <mi>\foo</mi>.
_UNKNOWN_COMMAND = re.compile(r">(\\[A-Za-z]+)<")
# latex2mathml maps ``\mathbb{E}`` to the Unicode letter 𝔼 but ``\mathbb E`` to
# <mi mathvariant="double-struck">E</mi>, which Chromium (MathML Core) shows as a plain E.
_UNBRACED_ALPHABET = re.compile(
    r"\\(mathbb|mathcal|mathfrak|mathbf|mathsf|mathscr)\s*([A-Za-z0-9])"
)


def _to_mathml(latex: str, display: str, node: nodes.Element) -> str:
    try:
        mathml = convert(_UNBRACED_ALPHABET.sub(r"\\\1{\2}", latex.strip()), display=display)
    except Exception as exc:  # latex2mathml raises assorted errors on malformed input
        logger.warning("cannot convert LaTeX %r to MathML: %s", latex, exc, location=node)
        return f'<code class="math-error">{html.escape(latex)}</code>'
    unknown = _UNKNOWN_COMMAND.search(mathml)
    if unknown:
        logger.warning(
            "LaTeX command %s in %r is not supported by latex2mathml",
            unknown[1],
            latex,
            location=node,
        )
    return mathml


def visit_math(self: HTML5Translator, node: nodes.Element) -> None:
    self.body.append(
        f'<span class="math notranslate">{_to_mathml(node.astext(), "inline", node)}</span>'
    )
    raise nodes.SkipNode


def visit_displaymath(self: HTML5Translator, node: nodes.Element) -> None:
    # ``nowrap`` math (MyST amsmath environments) is one formula already; otherwise the
    # directive's content may hold several formulas separated by blank lines.
    latex = node.astext()
    parts = [latex] if node.get("nowrap") else [p for p in latex.split("\n\n") if p.strip()]
    self.body.append(self.starttag(node, "div", CLASS="math notranslate"))
    if node.get("number"):
        number = get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, "Link to this equation")
        self.body.append("</span>")
    for part in parts:
        self.body.append(_to_mathml(part, "block", node))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, object]:
    app.add_html_math_renderer(
        "mathml",
        inline_renderers=(visit_math, None),
        block_renderers=(visit_displaymath, None),
    )
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
