"""The path matrix: one battery of cases through every execution path (DESIGN §4-5).

``test_battery[PATH-GROUP-DTYPE]`` runs every function ``PATH`` offers on the
inputs of case group ``GROUP`` (see ``tests/path_cases.py``) at every ε, in
``DTYPE``, and compares with the float64 reference. A path runs in the session
of its backend (``EVSOFTMAX_TEST_BACKENDS``); a path whose package is missing,
or a dtype/case it cannot take, is a visible skip with its reason. Print the
whole matrix with ``python -m tests.paths --summary``.
"""

from __future__ import annotations

import pytest

from . import path_cases as pc
from .paths import check, selected_paths

_CELLS = [
    pytest.param(path, group, dtype, id=f"{path.name}-{group}-{dtype}")
    for path in selected_paths()
    for group in pc.GROUPS
    for dtype in pc.DTYPES
]


@pytest.mark.parametrize(("path", "group", "dtype"), _CELLS)
def test_battery(path, group, dtype):
    reason, failures, count = check(path, group, dtype)
    if reason is not None:
        if reason.startswith("REQUIRED"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert count > 0, f"{path.name} ran no request for {group}"
    if failures:
        shown = "\n".join(failures[:12])
        more = f"\n... and {len(failures) - 12} more" if len(failures) > 12 else ""
        pytest.fail(f"{len(failures)} of {count} calls differ from the reference:\n{shown}{more}")
