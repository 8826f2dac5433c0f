"""ev-softmax under ``torch.compile(fullgraph=True)``, and no compilation in eager mode."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import evsoftmax.torch as evt  # noqa: E402

from . import reference as ref  # noqa: E402
from .closed_forms import no_ties  # noqa: E402
from .cpu_kernels import PATHS, use_path  # noqa: E402

# torch.compile's own internals use deprecated torch APIs (torch.jit.script_method,
# instantiating autograd.Function); those warnings are torch's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _graph_breaks() -> int:
    import torch._dynamo

    return sum(torch._dynamo.utils.counters["graph_break"].values())


@pytest.fixture(params=PATHS)
def each_path(request, monkeypatch):
    """Compile with the CPU kernel as a graph op, then with the traced torch ops."""
    use_path(request.param, monkeypatch)
    return request.param


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_compiled_forward_and_backward_match_eager(log, epsilon, each_path):
    f = evt.log_ev_softmax if log else evt.ev_softmax
    x = torch.randn(6, 9, requires_grad=True)
    g = torch.randn(6, 9)
    compiled = torch.compile(lambda v: f(v, dim=-1, epsilon=epsilon), fullgraph=True)
    out = compiled(x)
    expected = ref.log_ev_softmax if log else ref.ev_softmax
    np.testing.assert_allclose(
        out.detach().double().numpy(),
        expected(x.detach().double().numpy(), eps=epsilon),
        rtol=1e-5,
        atol=1e-6,
    )
    (out.masked_fill(out == -np.inf, 0.0) * g).sum().backward()
    compiled_grad = x.grad.clone()
    x.grad = None
    eager = f(x, dim=-1, epsilon=epsilon)
    (eager.masked_fill(eager == -np.inf, 0.0) * g).sum().backward()
    torch.testing.assert_close(compiled_grad, x.grad, rtol=1e-5, atol=1e-6)
    assert _graph_breaks() == 0


@pytest.mark.parametrize("masked", [False, True])
def test_graph_calls_the_kernel_op_for_cpu_input_masked_or_not(each_path, masked):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.code)
        return gm.forward

    where = torch.tensor([True] * 6 + [False]) if masked else None
    compiled = torch.compile(lambda v: evt.ev_softmax(v, where=where), backend=backend)
    x = torch.randn(5, 7)
    mask = None if where is None else where.numpy()
    np.testing.assert_allclose(
        compiled(x).double().numpy(),
        ref.ev_softmax(x.double().numpy(), where=mask),
        rtol=1e-6,
        atol=1e-7,
    )
    assert _graph_breaks() == 0
    calls_op = any("cpu_rows_forward" in code for code in graphs)
    assert calls_op == (each_path == "kernel")


@pytest.mark.parametrize("name", ["ev_softmax", "log_ev_softmax"])
def test_top_level_functions_compile_without_graph_breaks(name):
    import evsoftmax as evs

    f = getattr(evs, name)
    mask = torch.tensor([True] * 8 + [False])
    for kwargs in ({}, {"epsilon": 1e-3}, {"where": mask}, {"axis": 0}):
        compiled = torch.compile(lambda v, kw=kwargs: f(v, **kw), fullgraph=True)
        x = torch.randn(9, 9, requires_grad=True)
        out = compiled(x)
        out.sum().backward()
        where = kwargs.get("where")
        expected = getattr(ref, name)(
            x.detach().double().numpy(),
            axis=kwargs.get("axis", -1),
            eps=kwargs.get("epsilon", 0.0),
            where=None if where is None else where.numpy(),
        )
        np.testing.assert_allclose(out.detach().double().numpy(), expected, rtol=1e-5, atol=1e-6)
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert _graph_breaks() == 0


def test_torch_func_transforms_inside_torch_compile(each_path):
    # The kernel op has no autograd or vmap rule: under a transform the traced form runs.
    x = torch.tensor(no_ties((3, 4, 9), seed=3), dtype=torch.float64)
    grad = torch.compile(torch.func.grad(lambda v: evt.ev_softmax(v)[0, 0]), fullgraph=True)
    p = ref.ev_softmax(x[0].numpy())
    expected = np.zeros_like(p)
    expected[0] = p[0, 0] * ((np.arange(9) == 0) - p[0])
    np.testing.assert_allclose(grad(x[0]).numpy(), expected, rtol=1e-10, atol=1e-12)
    batched = torch.compile(torch.func.vmap(lambda v: evt.ev_softmax(v)), fullgraph=True)
    np.testing.assert_allclose(batched(x).numpy(), ref.ev_softmax(x.numpy()), rtol=1e-10)
    assert _graph_breaks() == 0


def test_compiled_with_mask_and_inside_a_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), evt.EvSoftmax(dim=-1, epsilon=1e-6))
    x = torch.randn(5, 8)
    where = torch.rand(5, 16) > 0.3
    compiled = torch.compile(lambda v, m: evt.ev_softmax(model(v), where=m), fullgraph=True)
    out = compiled(x, where)
    torch.testing.assert_close(out, evt.ev_softmax(model(x), where=where))
    assert (out[~where] == 0).all()
    out.sum().backward()
    assert _graph_breaks() == 0


def test_compiled_loss():
    loss = evt.EvSoftmaxLoss(label_smoothing=0.1, epsilon=1e-4)
    x = torch.randn(7, 5, requires_grad=True)
    target = torch.randint(0, 5, (7,))
    compiled = torch.compile(loss, fullgraph=True)
    value = compiled(x, target)
    value.backward()
    torch.testing.assert_close(value, loss(x, target))
    assert _graph_breaks() == 0


def test_eager_call_compiles_nothing():
    # A first eager call must not trigger torch.compile (no Dynamo, no Inductor).
    code = textwrap.dedent(
        """
        import sys
        import torch
        import evsoftmax as evs
        import evsoftmax.torch as evt
        x = torch.randn(64, 100, requires_grad=True)
        (evt.ev_softmax(x, epsilon=1e-6) + evs.log_ev_softmax(x, epsilon=1e-6)).sum().backward()
        evt.EvSoftmaxLoss()(x, torch.zeros(64, dtype=torch.long)).backward()
        loaded = [m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor"))]
        assert not loaded, loaded
        assert "triton" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_changing_epsilon_neither_breaks_the_graph_nor_fails():
    # Dynamo makes a float argument that changes between calls symbolic.
    x = torch.randn(4, 7, requires_grad=True)
    compiled = torch.compile(lambda v, e: evt.log_ev_softmax(v, -1, e), fullgraph=True)
    for epsilon in (0.1, 0.2, 0.3, 0.0, 1e-6):
        out = compiled(x, epsilon)
        torch.testing.assert_close(out, evt.log_ev_softmax(x, -1, epsilon))
        out.masked_fill(out == -np.inf, 0.0).sum().backward()
    assert _graph_breaks() == 0
    # An invalid epsilon still raises (fullgraph=True reports it as unsupported).
    from torch._dynamo.exc import Unsupported

    with pytest.raises((ValueError, Unsupported), match="epsilon"):
        compiled(x, -0.5)
    with pytest.raises(ValueError, match="epsilon"):
        torch.compile(lambda v, e: evt.ev_softmax(v, -1, e))(x, -0.5)


@pytest.mark.parametrize("masked", [False, True])
def test_compiled_log_form_saves_no_boolean_tensor_for_backward(masked):
    # Inductor writes boolean tensors ~10x slower than eager torch: the validity test
    # of the log form's backward must stay in the backward graph (read from the saved
    # input as the backward kernel runs), not be computed in the forward and saved.
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    saved_dtypes = []

    def forward_compiler(gm, example_inputs):
        (output,) = [n for n in gm.graph.nodes if n.op == "output"]
        # (An input passed through, such as the mask, is saved without being written.)
        computed = [a for a in output.args[0] if a is not None and a.op != "placeholder"]
        saved_dtypes.extend(a.meta["val"].dtype for a in computed)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(
        fw_compiler=forward_compiler,
        bw_compiler=lambda gm, _: make_boxed_func(gm.forward),
        partition_fn=min_cut_rematerialization_partition,  # Inductor's partitioner
    )
    where = torch.tensor([True] * 8 + [False]) if masked else None
    x = torch.randn(5, 9)
    x[0, 1] = -np.inf
    x.requires_grad_(True)
    g = torch.randn(5, 9)
    f = torch.compile(lambda v: evt.log_ev_softmax(v, epsilon=0.5, where=where), backend=backend)
    out = f(x)
    (grad,) = torch.autograd.grad(out, x, g.masked_fill(out == -np.inf, 0.0))
    assert saved_dtypes and torch.bool not in saved_dtypes, saved_dtypes
    # The closed form from the float64 reference: g - p * sum(g) on valid entries, else 0.
    xd, gd = x.detach().double().numpy(), g.double().numpy()
    valid = np.isfinite(xd) & (True if where is None else where.numpy())
    p = np.exp(ref.log_ev_softmax(xd, eps=0.5, where=None if where is None else where.numpy()))
    gv = np.where(valid, gd, 0.0)
    expected = np.where(valid, gv - p * gv.sum(-1, keepdims=True), 0.0)
    np.testing.assert_allclose(grad.double().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert _graph_breaks() == 0


def _aot_graphs(f, x):
    """The call targets of the forward and backward graphs that Inductor would compile."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    graphs: dict[str, list[str]] = {}

    def compiler(kind):
        def compile_graph(gm, example_inputs):
            graphs[kind] = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)

        return compile_graph

    backend = aot_autograd(
        fw_compiler=compiler("forward"),
        bw_compiler=compiler("backward"),
        partition_fn=min_cut_rematerialization_partition,  # Inductor's partitioner
    )
    torch._dynamo.reset()
    x = x.detach().requires_grad_(True)
    out = torch.compile(f, backend=backend, fullgraph=True)(x)
    torch.autograd.grad(out, x, torch.ones_like(out))
    return graphs


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_compiled_graph_holds_the_kernel_op_and_a_softmax_backward(dtype):
    # The forward graph is the kernel op (and the 0-d epsilon it reads), with no
    # conversion or copy around it; the backward graph is exactly a compiled
    # torch.softmax's: one _softmax_backward_data on the saved output, in the
    # input's dtype (Inductor computes half precision in float32 in its loops).
    if not evt_kernel_applies(dtype):
        pytest.skip(f"the compiled kernels do not take {dtype}")
    x = torch.randn(4, 6, dtype=getattr(torch, dtype))
    ours = _aot_graphs(lambda v: evt.ev_softmax(v, dim=-1), x)
    peer = _aot_graphs(lambda v: torch.softmax(v, -1), x)
    assert ours["forward"] == ["aten.zeros.default", "aten.add.Tensor", _kernel_op_name()]
    assert ours["backward"] == peer["backward"] == ["aten._softmax_backward_data.default"]


def evt_kernel_applies(dtype: str) -> bool:
    from evsoftmax.adapters.torch import ops

    return ops.kernel_applies(torch.empty(1, dtype=getattr(torch, dtype)))


def _kernel_op_name() -> str:
    from evsoftmax.adapters.torch import kernel_op

    return f"{kernel_op._NAMESPACE}.cpu_rows_forward.default"


def test_kernel_op_dispatches_to_the_kernel_without_python_layers():
    # torch.library.custom_op would wrap the kernel in a Python autograd kernel and
    # an aliasing check (some 15 us a call inside every compiled graph); the op is
    # only called where autograd does not look, so it has a CPU kernel and a fake
    # (Meta) one and nothing else.
    from evsoftmax.adapters.torch import kernel_op

    name = kernel_op._NAMESPACE + "::cpu_rows_forward"
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(name, "CPU") and has(name, "Meta")
    for key in ("Autograd", "AutogradCPU", "ADInplaceOrView", "CompositeImplicitAutograd"):
        assert not has(name, key), key
    assert torch.Tag.pt2_compliant_tag in kernel_op._cpu_rows_op.tags
    x = torch.tensor(no_ties((3, 7), seed=5))
    eps = torch.zeros((), dtype=torch.float64) + 0.25
    np.testing.assert_allclose(
        kernel_op._cpu_rows_op(x, 1, eps, False).numpy(),
        ref.ev_softmax(x.numpy(), eps=0.25),
        rtol=1e-12,
    )


def _guard_count(manager) -> int:
    return len(manager.get_leaf_guards()) + sum(map(_guard_count, manager.get_child_managers()))


def test_compiled_call_guards_neither_the_environment_nor_the_kernel_module():
    # Whether the kernel applies is asked once while tracing (assume_constant_result):
    # traced, its reads of os.environ and of evsoftmax._ext became guards that every
    # call of the graph evaluated (86 guards in all with torch 2.13, 71 without them).
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    import evsoftmax as evs

    def f(v):
        return evs.ev_softmax(v)

    x = torch.randn(4, 9)
    torch.compile(f, backend="eager", fullgraph=True)(x)
    (entry,) = _debug_get_cache_entry_list(f.__code__)
    guards = str(entry.guard_manager)
    for name in ("environ", "KeyError", "_ext", "frozenset"):
        assert name not in guards, name
    assert _guard_count(entry.guard_manager.root) <= 80


def test_kernels_turned_off_after_compiling_fall_back_in_the_op(monkeypatch):
    # The graph keeps the op (no guard on the environment): its kernel checks again
    # when it runs, and takes torch ops when the kernels are turned off.
    from .cpu_kernels import require_cpu_kernels

    require_cpu_kernels()
    calls = []

    def backend(gm, example_inputs):
        calls.append(gm.code)
        return gm.forward

    compiled = torch.compile(lambda v: evt.ev_softmax(v, epsilon=0.5), backend=backend)
    x = torch.tensor(no_ties((5, 7), seed=3))
    expected = ref.ev_softmax(x.double().numpy(), eps=0.5)
    np.testing.assert_allclose(compiled(x).double().numpy(), expected, rtol=1e-6)
    monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    np.testing.assert_allclose(compiled(x).double().numpy(), expected, rtol=1e-6)
    assert len(calls) == 1 and "cpu_rows_forward" in calls[0]
