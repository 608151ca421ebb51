"""The research notebooks: committed with the outputs of their full run, stamped with the hash of
the code that made them (tools/run_notebooks.py, `make notebooks`), and run again here, top to
bottom, in smoke mode."""

import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def _tool():
    """tools/run_notebooks.py, the one definition of the code hash and of the checks."""
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "tools" / "run_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _tool()


def test_the_research_notebooks_exist():
    names = [p.name for p in NOTEBOOKS]
    for name in (
        "01_quickstart.ipynb",
        "02_priors_and_likelihoods.ipynb",
        "03_elbo_vs_iwae.ipynb",
        "04_posterior_collapse.ipynb",
        "05_bring_your_own_model.ipynb",
    ):
        assert name in names
    assert all(name[:2].isdigit() and name[2] == "_" for name in names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_belong_to_the_committed_code(path):
    """Outputs of one full-mode run of exactly these code cells: stamped, no error, a printed
    output under every print, an image under every figure, at least one figure."""
    nb = nbformat.read(path, as_version=4)
    found = tool.problems(nb)
    assert not found, f"{path.name}: " + "; ".join(found)
    stamp = nb.metadata["pvae"]
    assert stamp["mode"] == "full" and stamp["wall_seconds"] > 0 and stamp["cpu_seconds"] > 0
    # the reader sees how the outputs were made, in the cell under the title
    assert tool.STAMP_TAG in nb.cells[1].metadata.get("tags", [])
    assert f"{stamp['cpu_seconds'] / 60:.1f} CPU minutes" in nb.cells[1].source


@pytest.fixture
def stamped(tmp_path) -> Path:
    """A copy of the quickstart notebook, as committed (stamped, with outputs)."""
    copy = tmp_path / "nb.ipynb"
    copy.write_bytes((EXAMPLES / "01_quickstart.ipynb").read_bytes())
    assert not tool.problems(nbformat.read(copy, as_version=4))
    return copy


def test_a_changed_code_cell_without_rerun_fails(stamped, capsys):
    nb = nbformat.read(stamped, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "EPOCHS =" in c.source)
    cell.source = cell.source.replace("EPOCHS =", "EPOCHS = 1 + ")
    nbformat.write(nb, stamped)
    found = tool.problems(nbformat.read(stamped, as_version=4))
    assert found and "code cells changed" in found[0] and "make notebooks" in found[0]
    assert tool.main(["--check", str(stamped)]) == 1
    assert "make notebooks" in capsys.readouterr().err


def test_the_hash_covers_code_only(stamped):
    nb = nbformat.read(stamped, as_version=4)
    before = tool.code_sha256(nb)
    nb.cells[0].source += "\n\nMore prose."  # markdown: no re-run needed
    nb.cells[-1].outputs = []
    assert tool.code_sha256(nb) == before
    code = [c for c in nb.cells if c.cell_type == "code"]
    swapped = nbformat.from_dict(nb)
    i, j = (swapped.cells.index(c) for c in (code[1], code[2]))
    swapped.cells[i], swapped.cells[j] = swapped.cells[j], swapped.cells[i]
    assert tool.code_sha256(swapped) != before  # reordered
    nb.cells.append(nbformat.v4.new_code_cell("print(1)"))
    assert tool.code_sha256(nb) != before  # added


def test_missing_outputs_and_errors_are_named(stamped):
    nb = nbformat.read(stamped, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    drawing = next(i for i, c in enumerate(code, 1) if tool.PLOTS.search(c.source))
    code[drawing - 1].outputs = []
    printing = next(i for i, c in enumerate(code, 1) if "print(" in c.source)
    code[printing - 1].outputs = [
        nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])
    ]
    found = tool.problems(nb)
    assert f"code cell {drawing} draws a figure but holds no image/png output" in found
    assert f"code cell {printing} holds an error output" in found
    assert f"code cell {printing} prints but holds no printed output" in found
    for cell in code:
        cell.outputs = [o for o in cell.outputs if "image/png" not in o.get("data", {})]
    assert "no code cell holds a figure (image/png output)" in tool.problems(nb)
    del nb.metadata["pvae"]
    assert "no pvae stamp" in tool.problems(nb)[0]


def test_an_unexecuted_cell_is_not_one_run(stamped):
    nb = nbformat.read(stamped, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[-1].execution_count = None
    assert any("not one top-to-bottom run" in p for p in tool.problems(nb))


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    """Every notebook run top to bottom in smoke mode, each in a fresh kernel of its own, two
    kernels at a time (a kernel spends much of its life starting and importing on one core; the
    machine has two), one thread each: path -> the executed notebook, or what its run raised."""
    import asyncio

    from nbclient import NotebookClient

    async def execute(path, gate):
        nb = nbformat.read(path, as_version=4)
        folder = tmp_path_factory.mktemp(path.stem)
        resources = {"metadata": {"path": str(folder)}}
        async with gate:
            await NotebookClient(
                nb, timeout=600, kernel_name="python3", resources=resources
            ).async_execute()
        return nb

    async def execute_all():
        gate = asyncio.Semaphore(2)
        return await asyncio.gather(
            *(execute(path, gate) for path in NOTEBOOKS), return_exceptions=True
        )

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PVAE_SMOKE", "1")
        mp.setenv("MPLBACKEND", "Agg")
        mp.setenv("OMP_NUM_THREADS", "1")
        results = asyncio.run(execute_all())
        assert os.environ["PVAE_SMOKE"] == "1"
    return dict(zip(NOTEBOOKS, results, strict=True))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter_client's path migration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, executed):
    nb = executed[path]
    if isinstance(nb, BaseException):
        raise nb
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    # every print and every figure shows under its cell (not only the first figure pvae draws)
    assert not tool.output_problems(nb)
