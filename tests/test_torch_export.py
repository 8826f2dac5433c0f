"""Exporting and tracing ev-softmax: ONNX (both exporters), torch.export, torch.jit.

Each exported graph runs on inputs it was not traced with and is checked
against the float64 reference: an exporter that recorded the kernel's output
as a constant, or baked the traced rank, fails here. Also: the kernel op is a
CPU-only op, and empty inputs stay connected to autograd.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax as evs  # noqa: E402
import evsoftmax.torch as evt  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import no_ties  # noqa: E402
from .cpu_kernels import PATHS, use_path  # noqa: E402

# The exporters' own internals warn (deprecations, tracer notes about torch's code).
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(params=PATHS)
def each_path(request, monkeypatch):
    use_path(request.param, monkeypatch)
    return request.param


class _Scores(torch.nn.Module):
    """ev-softmax of an input, masked by a second input, with epsilon > 0 (log form)."""

    def forward(self, x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        return evt.log_ev_softmax(x, dim=-1, epsilon=0.25, where=where)


def _inputs(seed: int, rows: int = 5, cols: int = 7) -> tuple[np.ndarray, np.ndarray]:
    x = no_ties((rows, cols), seed=seed).astype(np.float32)
    x[0, :3] = [2.0, 5.0, -1.0]  # an entry equal to an exactly representable mean
    x[0, 3:] = -np.inf
    x[1, 2] = -np.inf
    where = np.random.default_rng(seed).random((rows, cols)) > 0.2
    where[2] = False  # a fully masked row
    return x, where


def _expected(x: np.ndarray, where: np.ndarray, log: bool, eps: float) -> np.ndarray:
    f = ref.log_ev_softmax if log else ref.ev_softmax
    return f(x.astype(np.float64), eps=eps, where=where)


def _close(got, expected) -> None:
    got = np.asarray(got, dtype=np.float64)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-6)


def _onnx_session(model, args, tmp_path, dynamo: bool, names, dynamic=True):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    kwargs = {}
    if dynamic and dynamo:
        kwargs["dynamic_shapes"] = tuple({0: torch.export.Dim("batch")} for _ in args)
    elif dynamic:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in names}
    torch.onnx.export(model, args, str(path), dynamo=dynamo, input_names=list(names), **kwargs)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(names)
    return session


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_export_computes_ev_softmax_for_new_inputs(dynamo, each_path, tmp_path):
    # D8: the legacy exporter recorded the kernel's output as one Constant node, the
    # dynamo exporter found no ONNX function for the kernel op.
    model = evt.EvSoftmax().eval()
    session = _onnx_session(model, (torch.randn(2, 5),), tmp_path, dynamo, ["x"])
    for seed in (1, 2):
        x = no_ties((4, 5), seed=seed).astype(np.float32)
        x[0] = [2.0, 5.0, -1.0, 2.0, 2.0]  # entries equal to the mean
        (got,) = session.run(None, {"x": x})
        _close(got, _expected(x, np.ones_like(x, dtype=bool), False, 0.0))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_export_with_mask_and_epsilon(dynamo, tmp_path):
    x, where = _inputs(0)
    args = (torch.tensor(x), torch.tensor(where))
    session = _onnx_session(_Scores(), args, tmp_path, dynamo, ["x", "where"])
    for seed in (3, 4):
        x, where = _inputs(seed, rows=6)
        (got,) = session.run(None, {"x": x, "where": where})
        _close(got, _expected(x, where, True, 0.25))


def test_torch_export_runs_on_new_inputs_without_the_kernel_op(each_path):
    x, where = _inputs(0)
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        _Scores(),
        (torch.tensor(x), torch.tensor(where)),
        dynamic_shapes=({0: batch}, {0: batch}),
    )
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("cpu_rows_forward" in target for target in targets), targets
    module = program.module()
    for seed in (5, 6):
        x, where = _inputs(seed, rows=8)
        _close(
            module(torch.tensor(x), torch.tensor(where)).numpy(), _expected(x, where, True, 0.25)
        )


def test_torch_export_of_the_unmasked_module(each_path):
    program = torch.export.export(evt.EvSoftmax(epsilon=0.1), (torch.randn(3, 6),))
    x = no_ties((3, 6), seed=7).astype(np.float32)
    x[1] = [2.0, 5.0, -1.0, 2.0, 2.0, 2.0]
    got = program.module()(torch.tensor(x)).numpy()
    _close(got, _expected(x, np.ones_like(x, dtype=bool), False, 0.1))


@pytest.mark.parametrize("log", [False, True])
def test_jit_trace_follows_the_rank_like_nn_softmax(log, each_path):
    # D9: the trace baked dim=1, so a 3-D input was normalized along its middle axis.
    module = (evt.LogEvSoftmax() if log else evt.EvSoftmax()).eval()
    traced = torch.jit.trace(module, (torch.randn(4, 6),))
    x = no_ties((2, 3, 5), seed=8).astype(np.float32)
    x[1, 2] = [2.0, 5.0, -1.0, 2.0, 2.0]
    expected = _expected(x, np.ones_like(x, dtype=bool), log, 0.0)
    _close(traced(torch.tensor(x)).numpy(), expected)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    _close(loaded(torch.tensor(x)).numpy(), expected)


def test_jit_trace_of_a_positive_dim_keeps_it():
    traced = torch.jit.trace(evt.EvSoftmax(dim=0).eval(), (torch.randn(4, 6),))
    x = no_ties((3, 4, 5), seed=9).astype(np.float32)
    expected = ref.ev_softmax(x.astype(np.float64), axis=0)
    _close(traced(torch.tensor(x)).numpy(), expected)


@pytest.mark.parametrize("module", [evt.EvSoftmax, evt.LogEvSoftmax])
def test_jit_script_raises_one_clear_error(module):
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace.*torch\.export.*torch\.compile"):
        torch.jit.script(module())
    with pytest.raises(RuntimeError, match=r"cannot be compiled by torch\.jit\.script"):
        torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 3), module()))


def test_kernel_op_has_a_cpu_kernel_only():
    # The op hands data_ptr() to host code: no other device may reach it (no
    # CompositeExplicitAutograd kernel, which every backend would run).
    from evsoftmax.adapters.torch import kernel_op

    name = kernel_op._NAMESPACE + "::cpu_rows_forward"
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(name, "CPU")
    for key in ("CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd"):
        assert not has(name, key), key
    # Tracing-only tensors get the fake implementation, which touches no data.
    eps = torch.zeros((), dtype=torch.float64)
    meta = kernel_op._cpu_rows_op(torch.empty(2, 3, device="meta"), 1, eps, False)
    assert meta.device.type == "meta"
    assert meta.shape == (2, 3)


@pytest.mark.parametrize(
    "f",
    [evt.ev_softmax, evt.log_ev_softmax, evs.ev_softmax, evs.log_ev_softmax, evs.softmax],
    ids=["evt", "evt-log", "evs", "evs-log", "evs-softmax"],
)
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 4)])
def test_empty_inputs_stay_connected_to_autograd(f, shape):
    # D10: like torch.softmax, an empty result is part of the graph.
    x = torch.empty(shape, requires_grad=True)
    out = f(x)
    assert out.shape == shape
    assert out.requires_grad
    out.sum().backward()
    assert x.grad is not None
    assert x.grad.shape == shape
    torch.softmax(torch.empty(shape, requires_grad=True), -1).sum().backward()  # the model


def test_empty_support_is_boolean():
    got = evs.ev_softmax_support(torch.empty(0, 3, requires_grad=True))
    assert got.dtype == torch.bool
    assert got.shape == (0, 3)


def test_jit_trace_of_an_empty_example_is_refused_naming_the_remedy():
    with pytest.raises(ValueError, match="non-empty example"):
        torch.jit.trace(evt.EvSoftmax().eval(), (torch.empty(3, 0),))


def test_torch_export_of_an_empty_axis_gives_the_empty_result():
    program = torch.export.export(evt.EvSoftmax().eval(), (torch.empty(3, 0),))
    assert program.module()(torch.empty(3, 0)).shape == (3, 0)
