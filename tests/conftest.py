"""Backend parametrization shared by every test module.

Tests that take the ``xp`` fixture run once per selected backend (see
``tests/backends.py``). Markers ``skip_xp_backend(name, reason=...)`` and
``xfail_xp_backend(name, reason=...)`` adjust single backends;
``only_xp_backend(name, ...)`` keeps a test that takes no ``xp`` (the NumPy-and-C
kernel tests) to the runs that select one of the named backends, so that the
matrix runs it once instead of once per session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from .backends import gpu_unavailable_reason, namespace, selected
from .jax_helpers import jax_x64_enabled, sync_jax_caches

# The xp fixture is a stateless namespace, safe to share across hypothesis examples.
_SHARED = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}
settings.register_profile("default", max_examples=40, derandomize=True, **_SHARED)
settings.register_profile("thorough", max_examples=400, **_SHARED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"evsoftmax test backends: {', '.join(selected())}"


_NOT_GROUPED = pytest.StashKey[bool]()
_UNGROUPED = (
    "--dist loadgroup did not group this test (pytest {version} with this pytest-xdist: "
    "pytest-dev/pytest-xdist#1386), so its group's costly setup would run on every worker: "
    "install the test extra's pytest (pip install 'pytest<9.2'), or run with --dist load"
)


def _deselect_other_backends_tests(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests marked ``only_xp_backend`` for backends this run does not select.

    Such a test checks code no other backend changes (the C kernels called with
    NumPy arrays, the CuPy kernels replayed in NumPy): every nox session would run
    it alike, so only the session of its backend does. Deselected, not skipped:
    pytest reports them as such.
    """
    chosen = set(selected())
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("only_xp_backend")
        (kept if marker is None or chosen & set(marker.args) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _slow_tests_first(items: list[pytest.Item]) -> None:
    """Move the tests marked ``slow`` to the front, otherwise keeping pytest's order.

    pytest-xdist hands out tests in this order (after the ``xdist_group`` units,
    which it sorts first itself) and queues a few on each worker ahead of time.
    Left in file order, the long tests of the files named last (test_torch_triton,
    test_torch_vendored: 12 s and 16 s) were queued together on one worker at the
    very end, and the other worker sat idle for 27 s of a 292 s session.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect other backends' tests, slow ones first, fail grouped tests left ungrouped.

    See :func:`_deselect_other_backends_tests` and :func:`_slow_tests_first`.
    Tests that share a costly setup (a path's subprocess battery, a docs page's
    namespace) carry ``xdist_group``; a worker suffixes their node ids with
    ``@group`` and the scheduler keeps each group on one worker. Where the suffix
    is missing (pytest 9.2 with pytest-xdist 3.8) the cells are spread over the
    workers and each waits for the setup: results stay right, but the session
    takes minutes longer, so the grouped tests fail, naming the remedy.
    """
    _deselect_other_backends_tests(config, items)
    _slow_tests_first(items)
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid:
            item.stash[_NOT_GROUPED] = True


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(_NOT_GROUPED, False):
        pytest.fail(_UNGROUPED.format(version=pytest.__version__))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "xp" in metafunc.fixturenames:
        metafunc.parametrize("xp", selected(), indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend the current test runs on."""
    return str(request.node.callspec.params["xp"])


@pytest.fixture
def xp(request: pytest.FixtureRequest):
    """The array-API namespace of one backend (array_api_compat's where it wraps one)."""
    name = request.param
    reason = gpu_unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    for marker in request.node.iter_markers("skip_xp_backend"):
        if marker.args[0] == name:
            pytest.skip(marker.kwargs.get("reason", f"not applicable to {name}"))
    for marker in request.node.iter_markers("xfail_xp_backend"):
        if marker.args[0] == name:
            request.node.add_marker(
                pytest.mark.xfail(reason=marker.kwargs.get("reason", ""), strict=True)
            )
    return namespace(name)


@pytest.fixture(autouse=True)
def _jax_x64_is_per_test() -> Iterator[None]:
    """Whatever a test does to ``jax_enable_x64``, the next test on this worker starts as it did.

    The flag is global: a test that switched it on (the jax ``xp`` fixture, the
    path matrix, the ``jax_x64`` fixture) made float64 the default dtype of every
    later test in the same xdist worker (docs examples written for default JAX
    then saw float64 arrays).
    """
    jax = sys.modules.get("jax")
    before = bool(jax.config.jax_enable_x64) if jax is not None else None
    yield
    jax = sys.modules.get("jax")
    if jax is not None:
        # JAX imported during the test: back to its default (JAX_ENABLE_X64 or off).
        default = os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true")
        jax.config.update("jax_enable_x64", default if before is None else before)


@pytest.fixture(autouse=True)
def _jax_traces_follow_the_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """JAX's caches hold only traces made under the current kernel switches.

    Synced before the test and again after it, before ``monkeypatch`` undoes
    what the test switched (this fixture depends on it, so it is torn down
    first): traces made under a test's own switches never serve a later test.
    """
    sync_jax_caches()
    yield
    sync_jax_caches()


@pytest.fixture
def jax_x64() -> Iterator[None]:
    """float64 JAX for one test (``pytestmark = pytest.mark.usefixtures("jax_x64")``)."""
    with jax_x64_enabled():
        yield
