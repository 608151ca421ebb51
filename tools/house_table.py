"""Issue 21's table, measured on ``pvae/``: the longest functions (code lines after the
docstring), ``fit``'s parameters, modules over 600 lines, ``isinstance`` checks on the VAE family
outside the model files, and private names imported across modules.

``tests/test_architecture.py`` asserts the same limits. Usage::

    python tools/house_table.py [pvae]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MODEL_FILES = {"model.py", "hierarchical.py", "family.py"}


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Non-blank, non-comment lines of a function's body after its docstring."""
    body = node.body
    first = body[0]
    doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
    start = (body[1].lineno if len(body) > 1 else node.end_lineno + 1) if doc else first.lineno
    text = lines[start - 1 : node.end_lineno]
    return sum(1 for t in text if t.strip() and not t.strip().startswith("#"))


def main(root: Path) -> None:
    functions, big, checks, private = [], [], [], []
    fit = None
    for path in sorted(root.rglob("*.py")):
        src = path.read_text()
        lines = src.splitlines()
        if len(lines) > 600:
            big.append(f"{path} ({len(lines)})")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((code_lines(node, lines), f"{path}:{node.name}"))
                if node.name == "fit" and "training" in path.parts:
                    a = node.args
                    fit = (len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs), a.kwarg)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                kind = ast.unparse(node.args[1]) if len(node.args) == 2 else ""
                if "VAE" in kind and path.name not in MODEL_FILES:
                    checks.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pvae"):
                private += [
                    f"{path}:{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    functions.sort(reverse=True)
    print("longest functions (code lines):", ", ".join(f"{f} {n}" for n, f in functions[:5]))
    print("functions over 60 code lines:", [f for n, f in functions if n > 60] or "none")
    if fit is not None:
        print(f"parameters of fit: {fit[0]} named" + (f" + **{fit[1].arg}" if fit[1] else ""))
    print("modules over 600 lines:", big or "none")
    print(f"isinstance on the VAE family outside the model files: {len(checks)}", *checks)
    print(f"private names imported across modules: {len(private)}", *private)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "pvae"))
