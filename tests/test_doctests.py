"""Every docstring example in the public modules runs (imported as `spherewatch`, never as `monitor`)."""
import doctest
import importlib
import pkgutil

import pytest

import spherewatch


def _modules():
    for info in pkgutil.walk_packages(spherewatch.__path__, prefix="spherewatch."):
        if info.name.startswith("spherewatch.integrations") or info.name.endswith("__main__"):
            continue
        yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
