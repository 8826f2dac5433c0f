"""``evsoftmax.jax``: the public API for JAX users, lazily imported, vendorable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import evsoftmax  # noqa: E402
import evsoftmax.jax as evj  # noqa: E402
from evsoftmax.adapters.jax import adapter as _jax  # noqa: E402

PACKAGE_DIR = Path(evsoftmax.__file__).parent


def _run(code: str, *paths: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(PACKAGE_DIR.parent)])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


def test_exports_the_whole_public_api():
    assert set(evsoftmax.__all__) <= set(evj.__all__)
    for name in evsoftmax.__all__:
        assert getattr(evj, name) is getattr(evsoftmax, name)


def test_import_evsoftmax_imports_neither_jax_nor_the_front_door():
    out = _run(
        """
        import sys
        import evsoftmax
        print(sorted(m for m in ("jax", "jaxlib", "evsoftmax.jax") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_adapter_uses_public_jax_only_and_no_package_literal():
    source = Path(_jax.__file__).read_text()
    assert "jax._src" not in source
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    assert '"evsoftmax' not in code
    assert "'evsoftmax" not in code


@pytest.mark.slow
def test_vendored_copy_works_beside_the_installed_package(tmp_path):
    vendor = tmp_path / "hostlib" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "hostlib" / "__init__.py").write_text("")
    (vendor / "__init__.py").write_text("")
    shutil.copytree(PACKAGE_DIR, vendor / "evs", ignore=shutil.ignore_patterns("__pycache__"))
    out = _run(
        """
        import jax
        import jax.numpy as jnp
        import evsoftmax.jax as installed
        from hostlib._vendor.evs import jax as vendored

        x = jnp.array([0.4, 1.4, -0.8])
        assert vendored.ev_softmax is not installed.ev_softmax
        g = lambda f: jax.grad(lambda x: f(x, epsilon=1e-3)[1])(x)
        assert jnp.allclose(g(vendored.ev_softmax), g(installed.ev_softmax))
        text = jax.jit(vendored.ev_softmax).lower(x).as_text(debug_info=True)
        print("hostlib.ev_softmax" in text, "evsoftmax.ev_softmax" in text)
        """,
        str(tmp_path),
    )
    assert out.split() == ["True", "False"]


def test_front_door_functions_trace_under_jit():
    x = jax.numpy.asarray(np.array([[0.4, 1.4, -0.8], [1.0, -np.inf, 0.0]]))
    jitted = jax.jit(lambda x: (evj.ev_softmax(x), evj.ev_softmax_support(x)))
    p, support = jitted(x)
    np.testing.assert_array_equal(np.asarray(p) > 0, support)
