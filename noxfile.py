"""The test matrix: one session per backend in ``backends/``, plus lint and docs.

``nox`` with no arguments runs every CPU backend, lint and docs (what CI runs).
``nox -s tests-torch`` runs one backend; ``nox -l`` lists the sessions.
The test sessions install the package from source and require its compiled CPU
kernels (``EVSOFTMAX_REQUIRE_CPU_KERNELS=1``), so they need a C compiler.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).parent
BACKENDS = sorted(p.stem for p in (ROOT / "backends").glob("*.txt"))
GPU_BACKENDS = {"cupy"}
HAS_GPU = shutil.which("nvidia-smi") is not None

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    *(f"tests-{b}" for b in BACKENDS if b not in GPU_BACKENDS or HAS_GPU),
    "lint",
    "docs",
]


def _tests(session: nox.Session) -> None:
    """Run the test-suite on the backend the session is named after."""
    backend = session.name.removeprefix("tests-")
    session.install("-r", f"backends/{backend}.txt")
    session.install(".[test]")
    env = {"EVSOFTMAX_TEST_BACKENDS": backend, "EVSOFTMAX_REQUIRE_CPU_KERNELS": "1"}
    session.run("pytest", *session.posargs, env=env)


for _backend in BACKENDS:
    # One named session per backend file: tests-numpy, tests-torch, ...
    nox.session(name=f"tests-{_backend}")(_tests)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy --strict on ``src/``."""
    # mypy checks the adapters against the real torch and jax types, not Any.
    session.install("-r", "backends/torch.txt", "-r", "backends/jax.txt")
    session.install("ruff>=0.6", "mypy>=1.11", ".")
    session.run("ruff", "check", "src", "tests", "noxfile.py", "setup.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py", "setup.py")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs in strict mode."""
    session.install(".[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )
