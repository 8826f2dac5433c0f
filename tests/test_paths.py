"""The path matrix: one battery of cases through every execution path (DESIGN §4-5).

``test_battery[PATH-GROUP-DTYPE]`` runs every function ``PATH`` offers on the
inputs of case group ``GROUP`` (``tests/path_cases.py``) in ``DTYPE`` and
compares each result with the float64 reference (exact rational mean for the
support). A path runs in the session of its backend (``EVSOFTMAX_TEST_BACKENDS``);
a path whose package is missing, or a dtype/case it cannot take, is a visible
skip with its reason. ``python -m tests.paths --summary`` prints the matrix
(paths x case groups). The nox sessions run pytest with ``--dist loadgroup``: the
cells of a subprocess path stay on one worker, so its battery runs once.

Cost: the traced, compiled and exported paths run each cell as one program
(one trace/compile/export per cell) over ε in {0, 3, 1e300} (derivatives {0, 3});
the eager paths sweep all of ``path_cases.EPSILONS``. ``torch.compile`` uses
the ``aot_eager`` backend here (Dynamo's capture and AOTAutograd, where the
traced form lives), and the ``eager`` backend under ``torch.func`` transforms
(Dynamo's capture, where those cells differ from ``torch-func``; see
``paths._torch_compile``); set ``EVSOFTMAX_MATRIX_COMPILE_BACKEND=inductor`` to
run every compiled path through Inductor's code generation as well (slower:
~1.5 s a cell).
"""

from __future__ import annotations

import pytest

from . import path_cases as pc
from .backends import ALL_BACKENDS
from .paths import PATHS, check, selected_paths


def _cell(path, group: str, dtype: str):
    # A path that runs its battery in a subprocess runs it once per process: keep
    # its cells on one xdist worker (``--dist loadgroup``, as the nox sessions run).
    marks = [] if path.subprocess_env is None else [pytest.mark.xdist_group(path.name)]
    if path.bundled:  # a trace, compile or export per input: seconds a cell
        marks.append(pytest.mark.slow)
    return pytest.param(path, group, dtype, id=f"{path.name}-{group}-{dtype}", marks=marks)


_CELLS = [
    _cell(path, group, dtype)
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


def test_every_path_belongs_to_a_session():
    names = [p.name for p in PATHS]
    assert len(set(names)) == len(names)
    for path in PATHS:
        assert path.backend in ALL_BACKENDS, path.name
        assert set(path.functions) <= set(pc.FORWARD + pc.GRADS + pc.JVPS), path.name
        assert set(path.dtypes) <= set(pc.DTYPES), path.name
