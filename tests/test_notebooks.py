"""The research notebooks run top to bottom in smoke mode, and are committed without outputs."""

import os
from pathlib import Path

import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_the_research_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_priors_and_likelihoods.ipynb",
        "03_elbo_vs_iwae.ipynb",
        "04_posterior_collapse.ipynb",
        "05_bring_your_own_model.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


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
