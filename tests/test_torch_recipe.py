"""The numerical recipe (DESIGN §4) on every torch path, against float64 references.

Each case targets a defect of issue 12 on the torch compositions: an entry equal
to an exactly representable mean (D1), huge finite epsilon (D2), large offsets
with epsilon > 0 (D4), ranges whose shift overflows (D16). Paths: eager with the
kernel and without it (blocked rows), eager masked (the composition), and
``torch.compile`` masked, unmasked and under ``torch.func.grad``. The compiled
runners compile all cases of one (path, runner, log) as one program.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax.torch as evt  # noqa: E402

from . import reference as ref  # noqa: E402
from .cpu_kernels import PATHS, use_path  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_F32_MAX = float(np.finfo(np.float32).max)

# (name, rows, dtype, epsilon)
CASES = [
    ("tie-at-mean", [[2.0, 5.0, -1.0]] * 4, torch.float32, 0.0),
    ("tie-at-mean-eps", [[2.0, 5.0, -1.0]] * 4, torch.float64, 0.5),
    ("huge-eps-1e300", [[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]], torch.float32, 1e300),
    ("huge-eps-3e38", [[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]], torch.float32, 3e38),
    ("huge-eps-1e300-f64", [[0.0, 0.0, 0.0], [1.0, 2.0, -3.0]], torch.float64, 1e300),
    ("offset-1e7", [[1e7 + 2, 1e7 + 1, 1e7]], torch.float32, 3.0),
    ("offset-1e7-tie", [[1e7 + 2, 1e7 + 1, 1e7]], torch.float32, 0.0),
    (
        "overflow-f32",
        [[3e38, -3e38, -0.3e38], [_F32_MAX, -_F32_MAX, 0.0], [3e38, -3e38, 0.0]],
        torch.float32,
        0.0,
    ),
    ("overflow-f32-eps", [[3e38, -3e38, -0.3e38, 1.0]], torch.float32, 1e-3),
    ("overflow-f64", [[1.7e308, -1.7e308, -0.2e308, 1.7e308]], torch.float64, 0.0),
    ("overflow-bf16", [[3e38, -3e38, -0.3e38]], torch.bfloat16, 0.0),
]
IDS = [case[0] for case in CASES]


def _eager(f, x, epsilon):
    return f(x, epsilon=epsilon)


def _eager_masked(f, x, epsilon):
    return f(x, epsilon=epsilon, where=torch.ones(x.shape[-1], dtype=torch.bool))


RUNNERS = ["eager", "eager-masked", "compiled", "compiled-masked"]
EAGER = {"eager": _eager, "eager-masked": _eager_masked}


def _compiled_cases(log: bool) -> list[int]:
    """Indices of the cases the compiled runners take (huge epsilon: the forward form only)."""
    return [i for i, case in enumerate(CASES) if not (log and case[0].startswith("huge-eps"))]


# (path, runner, log) -> the compiled program's output for each of its cases.
_COMPILED: dict[tuple[str, str, bool], dict[int, torch.Tensor]] = {}


def _compiled(path: str, runner: str, log: bool, index: int) -> torch.Tensor:
    """Case ``index`` through ``torch.compile`` (Inductor), masked for ``compiled-masked``.

    Every case of one (path, runner, log) is a separate input and output of ONE
    compiled program (one Inductor compile and C++ build instead of one per case:
    the cases share no data, so each keeps its own kernels); the tests of a group
    run on one xdist worker (``xdist_group``) and read their case's output.
    """
    key = (path, runner, log)
    if key not in _COMPILED:
        f = evt.log_ev_softmax if log else evt.ev_softmax
        chosen = _compiled_cases(log)
        xs = [torch.tensor(CASES[i][1], dtype=CASES[i][2]) for i in chosen]
        masked = runner == "compiled-masked"
        ws = [torch.ones(x.shape[-1], dtype=torch.bool) if masked else None for x in xs]

        def program(xs: list[torch.Tensor], ws: list[torch.Tensor | None]) -> list[torch.Tensor]:
            return [
                f(x, epsilon=CASES[i][3], where=w) for i, x, w in zip(chosen, xs, ws, strict=True)
            ]

        outs = torch.compile(program, fullgraph=True)(xs, ws)
        _COMPILED[key] = dict(zip(chosen, outs, strict=True))
    return _COMPILED[key][index]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check(got: torch.Tensor, rows, dtype, epsilon: float, log: bool) -> None:
    x64 = torch.tensor(rows, dtype=dtype).double().numpy()  # the values the path saw
    with np.errstate(over="ignore"):  # the float64 shift of the float64 overflow case
        expected = ref.log_ev_softmax(x64, eps=epsilon) if log else ref.ev_softmax(x64, eps=epsilon)
    # Rounded to the path's dtype: a log-probability below its range is -inf there.
    expected = torch.tensor(expected).to(dtype).double().numpy()
    got64 = got.double().numpy()
    assert np.all(np.isfinite(got64) | (got64 == -np.inf)), got64
    # -inf exactly where the reference has it (the support, for epsilon = 0).
    np.testing.assert_array_equal(got64 == -np.inf, expected == -np.inf)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got64[finite], expected[finite], rtol=tol, atol=tol)


def _recipe_case(path: str, index: int, runner: str, log: bool):
    marks = []
    if runner.startswith("compiled"):  # one compiled program per (path, runner, log)
        marks.append(pytest.mark.xdist_group(f"test_torch_recipe-{path}-{runner}-{log}"))
    name = CASES[index][0]
    return pytest.param(path, index, runner, log, id=f"{path}-{name}-{runner}-{log}", marks=marks)


@pytest.mark.parametrize(
    ("path", "index", "runner", "log"),
    [
        _recipe_case(path, index, runner, log)
        for path in PATHS
        for index in range(len(CASES))
        for runner in RUNNERS
        for log in (False, True)
    ],
)
def test_recipe_cases_on_every_path(path, index, runner, log, monkeypatch):
    _name, rows, dtype, epsilon = CASES[index]
    if runner.startswith("compiled") and index not in _compiled_cases(log):
        pytest.skip("covered by the forward form; saves compile time")
    use_path(path, monkeypatch)
    if runner in EAGER:
        f = evt.log_ev_softmax if log else evt.ev_softmax
        got = EAGER[runner](f, torch.tensor(rows, dtype=dtype), epsilon)
    else:
        got = _compiled(path, runner, log, index)
    assert got.dtype == dtype
    _check(got, rows, dtype, epsilon, log)


@pytest.mark.parametrize("masked", [False, True])
def test_compiled_grad_keeps_an_entry_equal_to_the_mean(masked):
    # D1: the traced form dropped the entry equal to the mean, so p was one-hot and
    # the gradient zero. (Under torch.func the kernel op never runs.)
    x = torch.tensor([[2.0, 5.0, -1.0]]).repeat(4, 1)
    where = torch.ones(3, dtype=torch.bool) if masked else None
    grad = torch.compile(torch.func.grad(lambda v: evt.ev_softmax(v, where=where)[0, 0]))
    p = ref.ev_softmax(x.double().numpy())[0]
    assert p[0] > 0.04
    expected = np.zeros((4, 3))
    expected[0] = p[0] * ((np.arange(3) == 0) - p)
    np.testing.assert_allclose(grad(x).numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_overflow_rows_mixed_with_ordinary_rows(path, monkeypatch):
    # Only the overflowing row takes the scaled support; the others keep theirs.
    use_path(path, monkeypatch)
    # Row 0: the sum of the scores overflows too; 0 is below the exact mean 0.75e38.
    rows = [[3e38, 3e38, -3e38, 0.0], [2.0, 5.0, -1.0, 2.0], [0.0, -np.inf, 1.0, 2.0]]
    x = torch.tensor(rows, dtype=torch.float32)
    _check(evt.log_ev_softmax(x), rows, torch.float32, 0.0, True)
    _check(evt.ev_softmax(x, epsilon=0.1), rows, torch.float32, 0.1, False)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
@pytest.mark.parametrize("path", PATHS)
def test_log_gradient_counts_valid_entries_whose_probability_underflows(path, epsilon, monkeypatch):
    # -top - top underflows: log p is -inf on a valid entry, whose cotangent still
    # enters g - p * sum(g). It used to be taken for a masked entry (gradient 0).
    use_path(path, monkeypatch)
    top = _F32_MAX
    x = torch.tensor([[top, 0.5 * top, -top], [1.0, 2.0, -3.0]], requires_grad=True)
    g = torch.tensor([[0.5, -1.0, 2.0], [1.0, 1.0, 1.5]])
    out = evt.log_ev_softmax(x, epsilon=epsilon)
    (grad,) = torch.autograd.grad(out, x, g)
    p = ref.ev_softmax(x.detach().double().numpy(), eps=epsilon)
    gd = g.double().numpy()
    expected = gd - p * gd.sum(-1, keepdims=True)
    np.testing.assert_allclose(grad.double().numpy(), expected, rtol=1e-6, atol=1e-6)
