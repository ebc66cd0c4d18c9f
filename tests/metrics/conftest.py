"""One BLAS/LAPACK thread for the metric tests: under 2 contended OpenMP threads LAPACK slows down by up to 40x
(DESIGN.md). The library never changes the user's thread settings; these tests do, for their own duration."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_blas_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
