"""The test matrix: one session per backend in ``backends/``, plus lint and docs.

``nox`` with no arguments runs lint, every CPU backend and docs (what CI runs).
``nox -s tests-torch`` runs one backend; ``nox -l`` lists the sessions;
arguments after ``--`` go to pytest (``nox -s tests-numpy -- -k info``).
The test sessions install the package from source and require its compiled CPU
kernels (``EVSOFTMAX_REQUIRE_CPU_KERNELS=1``), so they need a C compiler.

Speed (the whole matrix on 2 cores): environments are made with ``uv`` when it is
installed (``pip install "nox[uv]"``; plain ``venv`` + pip otherwise), so the
sessions share one download/unpack cache instead of each installing torch and
JAX afresh; the package is built into a wheel once per run, in the background
while lint (single-threaded mypy) runs first, and that wheel is installed in
every test session; pytest runs on every core (pytest-xdist, ``--dist
loadgroup``: tests that share a costly setup stay on one worker).
"""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import nox
import nox.virtualenv

ROOT = Path(__file__).parent
BACKENDS = sorted(p.stem for p in (ROOT / "backends").glob("*.txt"))
GPU_BACKENDS = {"cupy"}
HAS_GPU = shutil.which("nvidia-smi") is not None

nox.options.default_venv_backend = "uv|venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    # lint first: its mypy runs on one core while the other builds the wheel.
    "lint",
    *(f"tests-{b}" for b in BACKENDS if b not in GPU_BACKENDS or HAS_GPU),
    "docs",
]


# pip setting -> the uv environment variable that means the same.
_PIP_TO_UV = {
    "index-url": ("UV_INDEX_URL", " "),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", " "),
    "find-links": ("UV_FIND_LINKS", ","),
    "constraint": ("UV_CONSTRAINT", " "),
}


def _pip_settings() -> dict[str, str]:
    """pip's configured index settings (``pip config list``: files and PIP_* variables)."""
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        scope, _, key = name.rpartition(".")
        if key in _PIP_TO_UV and (scope == ":env:" or key not in settings):
            settings[key] = ast.literal_eval(value)
    return settings


def _uv_reads_pip_config() -> None:
    """Hand pip's index configuration to uv, which does not read pip's.

    So that both resolve the same releases (e.g. a CPU build of torch from an
    extra index): the indexes, find-links and constraints pip is configured with
    become the matching ``UV_*`` variables (unless those are set already), and
    uv picks the best match across all indexes, as pip does.
    """
    for key, value in _pip_settings().items():
        variable, separator = _PIP_TO_UV[key]
        os.environ.setdefault(variable, separator.join(value.split()))
    os.environ.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")


_uv_reads_pip_config()
_WHEELS: dict[str, Path] = {}


class _Build(NamedTuple):
    """The background build of the wheel (uv)."""

    process: subprocess.Popen[bytes]
    out: Path  # the wheel's folder


def _build_log(out: Path) -> Path:
    """Where the background build of the wheel in ``out`` writes its output."""
    return out.parent / "wheel-build.log"


_BUILD: list[_Build] = []


def _wheel_dir(session: nox.Session) -> Path:
    """An empty folder for this run's wheel."""
    out = Path(session.create_tmp()).resolve() / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def _start_wheel(session: nox.Session) -> None:
    """Start building the package's wheel (C kernels included) in the background, once per run.

    With uv the build runs beside the session that starts it (lint: mypy keeps
    one core busy, the C compiler the other); :func:`_wheel` waits for it.
    """
    if "evsoftmax" in _WHEELS or _BUILD or session.venv_backend != "uv":
        return
    out = _wheel_dir(session)
    with _build_log(out).open("w") as sink:
        process = subprocess.Popen(
            [_uv(), "build", "--wheel", "--out-dir", str(out), str(ROOT)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: see _stop_unused_build
        )
    _BUILD.append(_Build(process, out))
    atexit.register(_stop_unused_build, process)


def _stop_unused_build(process: subprocess.Popen[bytes]) -> None:
    """A run that ends before the build (``nox -s lint``, Ctrl-C) leaves no compiler behind it."""
    if process.poll() is None:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)  # uv and the compilers it started
        else:  # pragma: no cover - Windows
            process.kill()
        process.wait()


def _uv() -> str:
    """The uv that nox creates environments with."""
    found = getattr(nox.virtualenv, "UV", "uv")
    return shutil.which(found) or found


def _wheel(session: nox.Session) -> Path:
    """The package built once per nox run (C kernel included), shared by every session."""
    if "evsoftmax" not in _WHEELS:
        _start_wheel(session)
        if _BUILD:
            build = _BUILD[0]
            if build.process.wait() != 0:
                session.error(f"building the wheel failed:\n{_build_log(build.out).read_text()}")
            out = build.out
        else:
            out = _wheel_dir(session)
            session.install("pip")
            session.run_install(
                "python", "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(ROOT)
            )
        _WHEELS["evsoftmax"] = next(out.glob("evsoftmax-*.whl"))
    return _WHEELS["evsoftmax"]


def _install_package(session: nox.Session, extras: str = "") -> None:
    """Install this run's wheel (replacing one a reused environment has) and ``extras``."""
    wheel = _wheel(session)
    if session.venv_backend == "uv":
        session.install("--reinstall-package", "evsoftmax", f"evsoftmax{extras} @ {wheel.as_uri()}")
    else:
        session.install(f"evsoftmax{extras} @ {wheel.as_uri()}")
        session.install("--force-reinstall", "--no-deps", str(wheel))


def _tests(session: nox.Session) -> None:
    """Run the test-suite on the backend the session is named after, on every core."""
    backend = session.name.removeprefix("tests-")
    session.install("-r", f"backends/{backend}.txt")
    _install_package(session, "[test]")
    env: dict[str, str | None] = {
        "EVSOFTMAX_TEST_BACKENDS": backend,
        "EVSOFTMAX_REQUIRE_CPU_KERNELS": "1",
    }
    # uv installs no bytecode, and where PYTHONDONTWRITEBYTECODE is set (as on CI's
    # machine) each of a session's processes (the xdist workers and the
    # subprocesses the tests start) compiled every module it imported from source:
    # importing torch._dynamo, the torch adapter, NumPy and pytest took 8 CPU-s
    # instead of 2.7. The session's processes write what they compile, so a module
    # is compiled once per run (torch session, two pairs of runs: 755/747 -> 725/712
    # CPU-s); the tests' own bytecode, assertions rewritten, is shared by the sessions.
    env["PYTHONDONTWRITEBYTECODE"] = None
    # Most of the JAX session's time is XLA compiling small programs; LLVM's
    # optimization passes are most of that, and the tests' programs are tiny, so
    # they run unoptimized (IEEE semantics are the same: XLA's fast math is off
    # either way). A subprocess that sets its own XLA_FLAGS (shard_map tests)
    # replaces this; set XLA_FLAGS yourself to test the default optimization level.
    env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "--xla_backend_optimization_level=0")
    # Many JAX tests compile the same small programs (the same function, shapes and
    # flags from another test or on the other worker): the session's processes share
    # one compilation cache, emptied at the start, so each is compiled once per run.
    # Entries are keyed by the program, compile options, XLA flags and jaxlib version.
    cache = Path(session.create_tmp()).resolve() / "jax-compilation-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    # Inductor (torch.compile's default backend) compiles C++ kernels with g++ and
    # caches them: in a run-local cache, emptied at the start, each run pays what a
    # fresh machine pays (the default /tmp/torchinductor_<user> outlives the run and
    # made local runs look faster than CI). Its compile pool is off: pytest-xdist
    # already keeps every core busy, and the pool's processes (each importing torch)
    # only made the workers wait (tests/test_torch_recipe.py, cold cache, 2 workers:
    # 106 s with the pool, 76 s without).
    inductor_cache = Path(session.create_tmp()).resolve() / "torchinductor-cache"
    shutil.rmtree(inductor_cache, ignore_errors=True)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache)
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    # loadgroup: tests that share a costly setup (a subprocess battery, a docs page's
    # namespace) carry an xdist_group mark and run on one worker; the others balance.
    session.run(
        "pytest", "-n", "auto", "--dist", "loadgroup", "--durations=10", *session.posargs, env=env
    )


for _backend in BACKENDS:
    # One named session per backend file: tests-numpy, tests-torch, ...
    nox.session(name=f"tests-{_backend}")(_tests)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy --strict on ``src/``."""
    _start_wheel(session)  # for the test sessions; mypy checks the sources
    # mypy checks the adapters against the real torch and jax types, not Any.
    session.install("-r", "backends/torch.txt", "-r", "backends/jax.txt")
    session.install("ruff>=0.6", "mypy>=1.11")
    if session.venv_backend == "uv":  # the package's own dependencies, without building it
        session.install("-r", "pyproject.toml")
    else:
        _install_package(session)
    session.run("ruff", "check", "src", "tests", "noxfile.py", "setup.py")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py", "setup.py")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs in strict mode."""
    _install_package(session, "[docs]")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )
