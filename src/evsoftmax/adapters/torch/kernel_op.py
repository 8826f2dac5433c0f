"""The compiled CPU kernel as a PyTorch custom op, for ``torch.compile`` graphs.

Inductor's own fusion of the composed form (``ops.composed_forward``) runs
at 1.2-1.5x a compiled softmax on the CPU; the kernel of :mod:`evsoftmax._ext`
runs at about an eager softmax, which is faster than Inductor's. Inside a
compiled graph, CPU inputs (masked or not) therefore call the kernel through this op
(an opaque node: Dynamo traces no Python into it, Inductor leaves it alone).

The op has a CPU kernel only (and a fake one for tracing): the C kernel reads
and writes host memory through ``data_ptr()``, so a graph holding the op and
run on another device fails in the dispatcher instead of handing a device
pointer to host code.

The op's name carries the package's import name, so a vendored copy of
evsoftmax registers an op of its own beside this one.
"""

from __future__ import annotations

import torch

from . import ops

__all__ = ["applies", "cpu_rows_forward", "log_vjp", "log_vjp_applies"]

_NAMESPACE = __name__.rpartition(".adapters.")[0].replace(".", "_")


# The op is defined and registered through ``torch.library.Library`` rather than
# ``torch.library.custom_op``: the latter wraps the kernel in Python layers (an
# autograd kernel that repacks the arguments and redispatches, an aliasing check of
# the result) that cost some 15 us a call, twice what a compiled softmax spends
# around its loops. The op needs neither: it is only called where autograd does not
# look (inside an ``autograd.Function`` or a compiled graph's forward), and the
# kernel always returns a new tensor.
_LIBRARY = torch.library.Library(_NAMESPACE, "FRAGMENT")  # type: ignore[no-untyped-call]
_LIBRARY.define(  # type: ignore[no-untyped-call]
    "cpu_rows_forward(Tensor x, int dim, Tensor epsilon, bool log, Tensor? where=None) -> Tensor",
    tags=(torch.Tag.pt2_compliant_tag,),
)


def _cpu_rows_kernel(
    x: torch.Tensor, dim: int, epsilon: torch.Tensor, log: bool, where: torch.Tensor | None = None
) -> torch.Tensor:
    return ops.cpu_rows_forward(x, dim, float(epsilon), log, where)


def _cpu_rows_fake(
    x: torch.Tensor, dim: int, epsilon: torch.Tensor, log: bool, where: torch.Tensor | None = None
) -> torch.Tensor:
    # The kernel writes its output in x's layout (ops.cpu_rows_forward).
    return torch.empty_like(x)


_LIBRARY.impl("cpu_rows_forward", _cpu_rows_kernel, "CPU")  # type: ignore[no-untyped-call]
torch.library.register_fake(f"{_NAMESPACE}::cpu_rows_forward", _cpu_rows_fake, lib=_LIBRARY)
_cpu_rows_op = getattr(torch.ops, _NAMESPACE).cpu_rows_forward.default


def cpu_rows_forward(
    x: torch.Tensor, dim: int, epsilon: float, log: bool, where: torch.Tensor | None = None
) -> torch.Tensor:
    """ev-softmax (or its log) of a CPU tensor with the compiled kernel, as a graph op.

    ``where`` (a mask that broadcasts to ``x``, or None) is read by the kernel in
    place. ``epsilon`` enters the op as a 0-d tensor: a float that Dynamo made
    symbolic (one that changes between calls) then recompiles nothing. (It is
    added to a tensor rather than passed to ``torch.scalar_tensor``, which
    Dynamo specializes.)
    """
    eps = torch.zeros((), dtype=torch.float64) + epsilon
    return _cpu_rows_op(x, dim, eps, log, where)  # type: ignore[no-any-return]


def _kernel_reads(dtype: torch.dtype, ndim: int) -> bool:
    """:func:`ops.kernel_applies` for a tensor of ``dtype`` and ``ndim`` dimensions.

    Dynamo calls it once while tracing and keeps the answer: traced, its reads of the
    environment and of :mod:`evsoftmax._ext` (whether the kernels are built and turned
    on) became some 15 guards that every call of the compiled graph evaluated. The op's
    kernel checks again when it runs (:func:`ops.cpu_rows_forward` falls back to torch
    ops when the kernels were turned off after compiling), as before.
    """
    return ops.kernel_dtype_applies(dtype, ndim)


# What torch.compiler.assume_constant_result does, set directly: the decorator imports
# torch._dynamo, which eager use of the package must not load (a test checks both).
_kernel_reads._dynamo_marked_constant = True  # type: ignore[attr-defined]


def applies(x: torch.Tensor, where: torch.Tensor | None) -> bool:
    """Whether a compiled graph should call the kernel op for ``x`` (and its mask).

    CPU input of a dtype the kernel reads, and no ``torch.func`` transform around
    the call (the op has no autograd or vmap rule of its own; the composed form
    composes with them).
    """
    if x.device.type != "cpu" or not _kernel_reads(x.dtype, x.ndim):
        return False
    if where is not None and where.device.type != "cpu":
        return False
    return not torch._C._are_functorch_transforms_active()


@torch.library.custom_op(f"{_NAMESPACE}::log_vjp", mutates_args=(), device_types="cpu")
def _log_vjp_op(
    logp: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    dim: int,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    return ops.kernel_log_vjp(logp, grad, dim, x, where)


@_log_vjp_op.register_fake
def _(
    logp: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    dim: int,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    return torch.empty_like(logp)  # (ops.kernel_log_vjp writes in logp's layout)


def log_vjp(
    logp: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, where: torch.Tensor | None, dim: int
) -> torch.Tensor:
    """The log form's VJP with the kernel (:func:`ops.kernel_log_vjp`), as a graph op.

    The validity of the entries comes from the forward call's input ``x`` and mask
    ``where``, which the compiled graph holds anyway; the kernel reads them only in
    rows whose ``logp`` holds ``-inf`` or NaN. Inductor's fusion of the composed
    backward (a select and the log-softmax backward) takes some 1.6x the kernel's time.
    """
    return _log_vjp_op(logp, grad, x, dim % logp.ndim, where)  # type: ignore[no-any-return]


def log_vjp_applies(logp: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether a compiled backward should call :func:`log_vjp` (CPU, one kernel dtype)."""
    return (
        not torch.is_grad_enabled()
        and logp.dtype == grad.dtype == x.dtype
        and logp.shape == grad.shape == x.shape
        and grad.device.type == "cpu"
        and applies(x, None)
    )
