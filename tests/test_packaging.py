"""Import hygiene, the public API, docstring examples and vendoring."""

from __future__ import annotations

import doctest
import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import evsoftmax as evs

SRC = Path(__file__).resolve().parents[1] / "src" / "evsoftmax"
HEAVY = ("torch", "jax", "cupy", "triton", "dask", "scipy", "matplotlib", "rich")


def test_import_loads_no_framework():
    code = (
        "import sys, evsoftmax, numpy as np; evsoftmax.ev_softmax(np.ones(3)); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_public_api_is_exactly_all():
    # Submodules (cli, adapters, the torch/jax front doors) appear as attributes once
    # imported; they are deliberately not part of __all__.
    public = {
        n for n in dir(evs) if not n.startswith("_") and not inspect.ismodule(getattr(evs, n))
    }
    assert public == set(evs.__all__) - {"__version__"}
    for name in evs.__all__:
        assert getattr(evs, name) is not None


@pytest.mark.parametrize("name", sorted(set(evs.__all__) - {"__version__"}))
def test_docstring_examples_run(name):
    obj = getattr(evs, name)
    assert obj.__doc__ and "Examples" in obj.__doc__, f"{name} needs a docstring with an example"
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    assert runner.failures == 0
    assert runner.tries > 0


def test_package_uses_relative_imports_only():
    absolute = re.compile(r"^\s*(from|import)\s+evsoftmax\b", re.MULTILINE)
    for path in SRC.rglob("*.py"):
        assert not absolute.search(path.read_text()), path


def test_vendored_copy_works_under_another_name(tmp_path):
    vendor = tmp_path / "hostlib" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "hostlib" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    shutil.copytree(SRC, vendor / "evsoftmax", ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from hostlib._vendor import evsoftmax as evs
        assert evs.__name__ == "hostlib._vendor.evsoftmax"
        assert evs.__file__.startswith(sys.argv[1]), evs.__file__
        assert "evsoftmax" not in sys.modules
        p = evs.ev_softmax(np.array([0.4, 1.4, -0.8]))
        e = np.e
        np.testing.assert_allclose(p, [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-12)
        s = evs.ev_softmax_support(np.array([[1.0, 2.0, 3.0]]), where=np.array([True, True, False]))
        assert s.tolist() == [[False, True, False]]
        print("OK")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK"
