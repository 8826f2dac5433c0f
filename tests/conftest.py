"""Backend parametrization shared by every test module.

Tests that take the ``xp`` fixture run once per selected backend (see
``tests/backends.py``). Markers ``skip_xp_backend(name, reason=...)`` and
``xfail_xp_backend(name, reason=...)`` adjust single backends.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from .backends import gpu_unavailable_reason, namespace, selected

# The xp fixture is a stateless namespace, safe to share across hypothesis examples.
_SHARED = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}
settings.register_profile("default", max_examples=40, derandomize=True, **_SHARED)
settings.register_profile("thorough", max_examples=400, **_SHARED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"evsoftmax test backends: {', '.join(selected())}"


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
