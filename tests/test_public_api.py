"""The packages' public names resolve, and importing a package alone stays light."""

import subprocess
import sys

import pytest

import ablations
import core


@pytest.mark.parametrize("package", [core, ablations], ids=lambda p: p.__name__)
def test_every_public_name_resolves(package):
    for name in package.__all__:
        assert getattr(package, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_importing_the_packages_loads_neither_torch_nor_mlflow():
    code = "import sys, core, ablations; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
