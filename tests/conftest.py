import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(scope="session")
def digits():
    import pvae

    return pvae.datasets.load("digits", binarize="dynamic")
