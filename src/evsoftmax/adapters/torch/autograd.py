r"""The autograd Functions behind ev-softmax on torch tensors: closed-form VJP and JVP.

:class:`EvSoftmaxFunction` saves only its output: the Jacobian of ev-softmax is
:math:`\operatorname{diag}(p) - p p^\top` for every :math:`\varepsilon \ge 0`
(the support indicator is locally constant), so the backward pass is
:math:`p \odot (g - \langle p, g\rangle)` and, for the log form,
:math:`g - p \sum g` over the valid entries (exactly 0 on masked ones). The
derivatives are themselves differentiable torch ops, so double backward works.

``torch.compile`` (Dynamo) traces :class:`EvSoftmaxFunction` into the graph;
:class:`EvSoftmaxTransformsFunction` adds the ``jvp`` (forward mode) and
``vmap`` rules that ``torch.func`` and ``torch.autograd.forward_ad`` need but
Dynamo does not support, and is what eager code uses.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

from . import kernel_op, ops

__all__ = [
    "EvSoftmaxEagerFunction",
    "EvSoftmaxFunction",
    "EvSoftmaxTransformsFunction",
    "apply",
    "forward",
]


# Devices whose tensors go to the Triton kernels (the tests add "cpu" to run them
# through Triton's interpreter).
_TRITON_DEVICES = frozenset({"cuda"})


@functools.cache
def _triton_module() -> Any:
    """The Triton kernels module, or None when triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    from . import triton as _triton_kernels

    return _triton_kernels


def forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    """ev-softmax (or its log) without autograd, on the fastest path for ``x``."""
    if torch.compiler.is_compiling():
        if kernel_op.applies(x, where):
            return kernel_op.cpu_rows_forward(x, dim, epsilon, log, where)
        return ops.composed_forward(x, dim, epsilon, where, log)
    if ops.fast_path_applies(x, where):
        return ops.cpu_rows_forward(x, dim, epsilon, log, where)
    triton_ops = _triton_for(x)
    if triton_ops is not None:
        return triton_ops.forward(x, dim, epsilon, where, log)  # type: ignore[no-any-return]
    return ops.composed_forward(x, dim, epsilon, where, log)


def _save(
    ctx: Any,
    x: torch.Tensor,
    epsilon: float,
    where: Any,
    log: bool,
    out: Any,
    needed: bool = True,
    holds_minus_inf: bool | None = None,
) -> None:
    """Keep what the derivatives need: the output, and for the log form the mask.

    In the log form -inf marks both masked entries (gradient 0) and valid entries
    whose probability is 0 (gradient g - p * sum(g)): outside the support for
    epsilon = 0, and for every epsilon those whose shift underflows (a range
    beyond the dtype's maximum). The output alone cannot tell them apart, so the
    validity mask is kept when a derivative may be ``needed`` and the output may
    hold -inf (for epsilon > 0 only such extreme rows or masked entries put it there):
    ``holds_minus_inf`` when the forward pass found out (:func:`ops.kernel_log_forward`),
    else a scan of the output tells.
    """
    ctx.mask_from_inputs = needed and log and torch.compiler.is_compiling()
    if ctx.mask_from_inputs:
        # Inductor writes a boolean tensor some 10x slower than eager torch (4096x1024:
        # 24 ms against 2.5 ms), so a compiled graph keeps the inputs instead (no new
        # buffer: the graph holds them) and the backward kernel tests them as it reads.
        ctx.save_for_backward(out, x, where)
        return
    valid = None
    if holds_minus_inf is None and needed and log and epsilon != 0.0:
        holds_minus_inf = ops.may_hold_minus_inf(out)
    if needed and log and (epsilon == 0.0 or holds_minus_inf):
        valid = ops.valid_mask(x, where)
    ctx.save_for_backward(out, valid)
    ctx.save_for_forward(out, valid)


def _forward_ad_active() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level`` is open (True when unknown)."""
    return bool(getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0)


def _triton_for(t: torch.Tensor) -> Any:
    """The Triton kernels module when it should handle ``t``, else None.

    Eager CUDA tensors only: under ``torch.compile`` Inductor fuses the composed
    ops itself, and ``torch.func`` transforms need the composable torch ops.
    """
    if t.device.type not in _TRITON_DEVICES or type(t) is not torch.Tensor:
        return None
    if torch.compiler.is_compiling() or _transforms_active():
        return None
    triton_ops = _triton_module()
    return triton_ops if triton_ops is not None and triton_ops.supports(t) else None


def _exact_zero(t: torch.Tensor) -> torch.Tensor:
    """Zeros computed from ``t``'s values (0 for NaN and infinite entries too).

    A test of the saved input plus these zeros depends on the cotangent, so the
    partitioner of ``torch.compile`` leaves it in the backward graph, where Inductor
    fuses it into the backward kernel: a test of the input alone it would move
    into the forward graph and save as a boolean tensor, which Inductor writes
    some 10x slower than eager torch does (4096x1024: 24 ms against 2.5 ms).
    """
    zeros = t * 0.0  # NaN where t is NaN or infinite
    # (Not nan_to_num: Inductor tests NaN one element at a time.)
    return torch.where(zeros == 0.0, zeros, 0.0)


def _saved(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The saved output and validity mask (None: the -inf entries of a log output)."""
    if getattr(ctx, "mask_from_inputs", False):
        output, x, where = ctx.saved_tensors
        return output, ops.valid_mask(x + _exact_zero(grad), where)
    output, valid = ctx.saved_tensors
    return output, valid


def _vjp(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    if ctx.log and getattr(ctx, "mask_from_inputs", False):
        output, x, where = ctx.saved_tensors
        if kernel_op.log_vjp_applies(output, grad, x) and (
            where is None or where.device.type == "cpu"
        ):
            return kernel_op.log_vjp(output, grad, x, where, ctx.dim), None, None, None, None
    output, valid = _saved(ctx, grad)
    # The kernels are not differentiable: with create_graph=True (grad mode on during
    # backward) the differentiable torch ops are used instead.
    triton_ops = None if torch.is_grad_enabled() else _triton_for(output)
    if triton_ops is not None:
        if ctx.log:
            grad_x = triton_ops.log_softmax_vjp(output, grad, ctx.dim, valid)
        else:
            grad_x = triton_ops.softmax_vjp(output, grad, ctx.dim)
    elif ctx.log:
        grad_x = ops.log_ev_softmax_vjp(output, grad, ctx.dim, valid)
    else:
        grad_x = ops.ev_softmax_vjp(output, grad, ctx.dim)
    return grad_x, None, None, None, None


def _jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
    output, valid = _saved(ctx, tangent)
    if ctx.log:
        return ops.log_ev_softmax_jvp(output, tangent, ctx.dim, valid)
    return ops.ev_softmax_vjp(output, tangent, ctx.dim)


class EvSoftmaxFunction(torch.autograd.Function):
    """ev-softmax with its closed-form backward; inputs ``(x, dim, epsilon, where, log)``.

    The form ``torch.compile`` traces: Dynamo supports neither ``jvp`` rules nor
    ``forward(ctx, ...)`` with transforms.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
    ) -> torch.Tensor:
        return forward(x, dim, epsilon, where, log)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, dim, epsilon, where, log = inputs
        ctx.dim, ctx.log = dim, log
        _save(ctx, x, epsilon, where, log, output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return _vjp(ctx, grad)


class EvSoftmaxTransformsFunction(EvSoftmaxFunction):
    """:class:`EvSoftmaxFunction` plus the ``jvp`` and ``vmap`` rules ``torch.func`` needs."""

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        return _jvp(ctx, tangent)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        x: torch.Tensor,
        dim: int,
        epsilon: float,
        where: torch.Tensor | None,
        log: bool,
    ) -> tuple[torch.Tensor, int]:
        x_dim, where_dim = in_dims[0], in_dims[3]
        if x_dim is None:
            x = x.unsqueeze(0).expand(info.batch_size, *x.shape)
        else:
            x = x.movedim(x_dim, 0)
        if where is not None and where_dim is not None:
            where = where.movedim(where_dim, 0)
            # Align the per-example mask with the trailing dimensions of x.
            pad = (1,) * (x.ndim - where.ndim)
            where = where.reshape(where.shape[0], *pad, *where.shape[1:])
        out = EvSoftmaxTransformsFunction.apply(x, dim + 1, epsilon, where, log)  # type: ignore[no-untyped-call]
        return out, 0


class EvSoftmaxEagerFunction(torch.autograd.Function):
    """The same derivatives in the classic ``forward(ctx, ...)`` form.

    ``Function.apply`` binds the arguments through ``inspect.signature`` for
    Functions with ``setup_context``, some 30 us a call; this form skips that, and
    serves eager code whenever no ``torch.func`` transform is active.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        dim: int,
        epsilon: float,
        where: torch.Tensor | None,
        log: bool,
    ) -> torch.Tensor:
        needed = ctx.needs_input_grad[0] or _forward_ad_active()
        holds_minus_inf = None
        if log and needed and epsilon != 0.0 and _kernel_log_forward_applies(x, where):
            # The kernel tells whether its output holds -inf (the only case in which
            # the backward needs the validity mask) at a fraction of a scan's cost.
            out, holds_minus_inf = ops.kernel_log_forward(x, dim, epsilon, where)
        else:
            out = forward(x, dim, epsilon, where, log)
        ctx.dim, ctx.log = dim, log
        _save(ctx, x, epsilon, where, log, out, needed, holds_minus_inf)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return _vjp(ctx, grad)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        return _jvp(ctx, tangent)


def _kernel_log_forward_applies(x: torch.Tensor, where: torch.Tensor | None) -> bool:
    """Whether the eager forward of :func:`forward` takes the compiled kernel for ``x``."""
    return ops.fast_path_applies(x, where) and ops.kernel_applies(x)


def _transforms_active() -> bool:
    """Whether a ``torch.func`` transform is active (True when torch cannot tell us)."""
    probe = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if probe is None else bool(probe())


def apply(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    """ev-softmax (or its log) of ``x`` along ``dim``, differentiable.

    ``dim`` is non-negative, except while :func:`ops.recording` (a trace or an
    export records the composed ops, differentiated by autograd, with ``dim`` as
    the caller gave it).
    """
    if ops.recording():
        return ops.composed_forward(x, dim, epsilon, where, log)
    if torch.compiler.is_compiling():
        function: Any = EvSoftmaxFunction
    elif _transforms_active():
        function = EvSoftmaxTransformsFunction
    else:
        function = EvSoftmaxEagerFunction
    return function.apply(x, dim, epsilon, where, log)  # type: ignore[no-any-return]
