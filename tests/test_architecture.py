"""The house's shape, checked (issue 21, STYLE.md 14): small functions, modules of one job, floors
that never import the floors above them, capabilities instead of type checks, no private names
shared across modules. Each check reads the source with :mod:`ast`; a failure names the places."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pvae"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600

# Floors from the bottom up; a module may import its own floor and those below, never above.
FLOORS: list[tuple[str, ...]] = [
    ("pvae._checks", "pvae.files", "pvae.distributed", "pvae.checkpoint"),
    (
        "pvae.priors",
        "pvae.likelihoods",
        "pvae.guides",
        "pvae.nets",
        "pvae.optimizers",
        "pvae.datasets",
        "pvae.labels",
        "pvae.ladder_paths",
    ),
    (
        "pvae.program",
        "pvae.family",
        "pvae.model",
        "pvae.hierarchical",
        "pvae.traces",
        "pvae.semisupervised",
        "pvae.sbn",
        "pvae.ladder",
        "pvae.enumeration",
    ),
    ("pvae.linear_gaussian", "pvae.objectives", "pvae.evaluation", "pvae.diagnostics"),
    ("pvae.options", "pvae.config"),
    ("pvae.plotting",),
    ("pvae.rundir",),
    ("pvae.training",),
    ("pvae.runs", "pvae.compare", "pvae.compare_runs", "pvae.sweep"),
    ("pvae.cli", "pvae.__main__"),
]
# The one sanctioned upward reference: a result's .plot() hands its figure to the plotting floor,
# imported when called (as pandas' DataFrame.plot does); no figure code lives below plotting.
UPWARD_ALLOWED = {("pvae.evaluation.bounds", "pvae.plotting")}
MODEL_FILES = {"model.py", "hierarchical.py", "family.py"}


def _modules() -> list[tuple[str, Path, ast.Module, list[str]]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        src = path.read_text()
        out.append((".".join(parts), path, ast.parse(src), src.splitlines()))
    return out


MODULES = _modules()


def _floor(module: str) -> int | None:
    for i, names in enumerate(FLOORS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    body = fn.body
    doc = isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant
    )
    start = (body[1].lineno if len(body) > 1 else fn.end_lineno + 1) if doc else body[0].lineno
    # Decorators and the signature are not counted, nor blank and comment-only lines.
    text = lines[start - 1 : fn.end_lineno]
    return sum(1 for t in text if t.strip() and not t.strip().startswith("#"))


def test_every_module_is_placed_on_a_floor():
    unplaced = [m for m, *_ in MODULES if m != "pvae" and _floor(m) is None]
    assert not unplaced, f"add these modules to FLOORS in {__file__}: {unplaced}"


def test_no_function_is_longer_than_60_code_lines():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)"
        for _, path, tree, lines in MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := _code_lines(node, lines)) > MAX_FUNCTION_LINES
    ]
    assert not long, "functions over 60 code lines: split them into named pieces\n" + "\n".join(
        long
    )


def test_no_module_is_longer_than_600_lines():
    big = [
        f"{p.relative_to(PACKAGE.parent)} ({len(ls)})" for _, p, _, ls in MODULES if len(ls) > 600
    ]
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def _imports(module: str, tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = module.split(".")[: -node.level or None]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((node.lineno, target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
    return out


def test_lower_floors_never_import_upper_ones():
    bad = []
    for module, _, tree, _ in MODULES:
        here = _floor(module)
        if here is None:
            continue
        for line, target, names in _imports(module, tree):
            if not target.startswith("pvae"):
                continue
            targets = [f"{target}.{n}" for n in names] if target == "pvae" else [target]
            for t in targets:
                there = _floor(t)
                if there is not None and there > here:
                    if any(module == a and t.startswith(b) for a, b in UPWARD_ALLOWED):
                        continue
                    bad.append(f"{module}:{line} imports {t} (floor {there} > {here})")
    assert not bad, "imports that run back up:\n" + "\n".join(bad)


def test_no_private_name_is_imported_from_another_module():
    bad = [
        f"{module}:{line} from {target} import {name}"
        for module, _, tree, _ in MODULES
        for line, target, names in _imports(module, tree)
        if target.startswith("pvae")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, "private names used across modules (make them public or keep them home):\n" + (
        "\n".join(bad)
    )


@pytest.mark.parametrize("name", ["VAE", "HierarchicalVAE"])
def test_the_vae_family_is_asked_for_capabilities_not_types(name):
    bad = []
    for _, path, tree, _ in MODULES:
        if path.name in MODEL_FILES:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "isinstance"
                and len(node.args) == 2
                and name
                in {getattr(n, "id", getattr(n, "attr", None)) for n in ast.walk(node.args[1])}
            ):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "isinstance on the VAE family outside the model files:\n" + "\n".join(bad)


def test_the_checks_can_fail():
    # A long function, an upward import, a private import and a type check, on made-up source.
    src = "from pvae.cli import _x\n" + "def f():\n" + "    a = 1\n" * 61 + "isinstance(v, VAE)\n"
    tree = ast.parse(src)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert _code_lines(fn, src.splitlines()) == 61
    assert _imports("pvae.model", tree)[0] == (1, "pvae.cli", ["_x"])
    assert _floor("pvae.cli.train") > _floor("pvae.model")
