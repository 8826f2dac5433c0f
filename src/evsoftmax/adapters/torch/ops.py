r"""ev-softmax on torch tensors without autograd: forward passes and closed-form derivatives.

Everything here takes and returns plain tensors; ``autograd`` wraps it in an
``autograd.Function``. Two forward implementations agree with ``evsoftmax._core``
(the Triton kernels in ``triton`` are a third), and both follow DESIGN §4's recipe:

* :func:`composed_forward`: the one composition of torch ops, for every layout,
  mask and device (masked inputs, meta tensors, subclasses, CUDA without
  triton), and the form that ``torch.compile`` (where the kernel op does not
  apply), ``torch.export``, the ONNX exporters and ``torch.jit.trace`` record.
* :func:`cpu_rows_forward`: the eager CPU fast path: the fused C kernel of
  :mod:`evsoftmax._ext` when it is built (masks, any axis and half precision
  read in place), else, for unmasked inputs,
  :func:`_blocked_rows_forward`, which runs the recipe on cache-sized row
  blocks (2-7x faster than the composition on 4096x1024 float32) and hands
  the rows it cannot do (-inf, NaN or +inf entries, an overflowing shift: a
  non-finite threshold) to :func:`composed_forward`.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ... import _ext

__all__ = [
    "accumulation_dtype",
    "as_rows",
    "composed_forward",
    "composed_support",
    "cpu_rows_forward",
    "empty_result",
    "recorded_empty_axis",
    "ev_softmax_vjp",
    "fast_path_applies",
    "from_rows",
    "kernel_applies",
    "kernel_dtype_applies",
    "kernel_log_forward",
    "kernel_log_vjp",
    "jit_tracing",
    "log_ev_softmax_jvp",
    "log_ev_softmax_vjp",
    "may_hold_minus_inf",
    "off_support_shift",
    "recording",
    "static_graph",
    "valid_mask",
]

_NEG_INF = -math.inf
_HALF = (torch.float16, torch.bfloat16)
# Row blocks of about this many bytes keep the shift, threshold and softmax passes in
# cache; larger blocks mean fewer ops (each a parallel region when multithreaded).
_BLOCK_BYTES = 1 << 22


def _kernel_mask(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """A boolean mask as the strided kernels read it: address and strides (bytes) at
    ``like``'s shape, a broadcast axis at stride 0 (no copy); ``(0, zeros)`` for none."""
    if mask is None:
        return 0, (0,) * like.ndim
    expanded = mask.expand(like.shape)
    return expanded.data_ptr(), expanded.stride()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision, else ``dtype`` itself."""
    return torch.float32 if dtype in _HALF else dtype


def off_support_shift(epsilon: float) -> float:
    r"""Log-weight of entries outside the support relative to those inside.

    That is :math:`\log\frac{\varepsilon}{1+\varepsilon}`, and ``-inf`` for
    :math:`\varepsilon = 0`.
    """
    return _ext.off_support_weight(epsilon)[1]


def valid_mask(x: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    """Entries that take part in their row: ``where`` is true and the value is not ``-inf``."""
    valid = x != _NEG_INF
    return valid if where is None else valid & where


# Scores are scaled by this exact power of two to find the support of a row whose
# shift x - max overflows: 2**64 >= 2n for every row length n, so neither the scaled
# differences nor their sum can overflow, and scaling by a power of two is exact.
_OVERFLOW_SCALE = 2.0**-64


def jit_tracing() -> bool:
    """Whether ``torch.jit.trace`` (or the legacy ONNX exporter) is recording."""
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]


def recording() -> bool:
    """Whether ``torch.jit.trace``, ``torch.export`` or an ONNX exporter records the ops.

    Those take :func:`composed_forward` directly, outside any ``autograd.Function``
    (which a trace can neither save nor export) and without the compiled kernel
    (which writes through ``data_ptr``: a trace would record its output as a constant).
    """
    return jit_tracing() or torch.compiler.is_exporting()


def recorded_empty_axis(x: torch.Tensor, axis: int) -> bool:
    """Whether a recorded input (export, trace) has an empty ``axis``.

    ``torch.export`` and the dynamo ONNX exporter specialize sizes 0 and 1, so the
    test is static there and the graph holds the empty result. ``torch.jit.trace``
    (and the legacy ONNX exporter) records sizes as values: a graph traced on an
    empty example could not serve later inputs, so it is refused, naming the remedy.
    """
    if not jit_tracing():
        return bool(x.shape[axis] == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        empty = int(x.shape[axis]) == 0
    if empty:
        raise ValueError(
            "torch.jit.trace (and torch.onnx.export with dynamo=False) cannot record "
            f"ev-softmax for an example input whose dimension {axis} is empty: trace with "
            "a non-empty example, or use torch.export / torch.onnx.export(dynamo=True)"
        )
    return False


def empty_result(x: torch.Tensor) -> torch.Tensor:
    """ev-softmax (or its log) of an empty ``x``: an empty tensor computed from ``x``.

    Computed rather than created, so that it stays in ``x``'s autograd graph (its
    gradient is an empty zero tensor), as with ``torch.softmax``.
    """
    return x * 0


def static_graph() -> bool:
    """Whether the ops are being recorded into a graph (compile, export, jit trace, functorch).

    Recorded code may not branch on tensor values, so it takes the branch-free forms.
    """
    return bool(
        torch.compiler.is_compiling()
        or jit_tracing()
        or torch._C._are_functorch_transforms_active()
    )


def _off_support_weights(epsilon: float, x: torch.Tensor) -> tuple[Any, Any]:
    r"""Weight :math:`\frac{\varepsilon}{1+\varepsilon}` of entries off the support, and its log.

    Python floats (``0`` and ``-inf`` for :math:`\varepsilon = 0`), or 0-d float64
    tensors under ``torch.compile``: Dynamo makes a float that changes between
    calls symbolic, and through a tensor it neither breaks the graph nor
    recompiles it. (The tensor is a sum rather than ``torch.scalar_tensor``,
    which Dynamo specializes.) Both forms stay finite for every finite
    :math:`\varepsilon`, ``1e300`` included.
    """
    if not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return _ext.off_support_weight(epsilon)  # an exported graph holds them as constants
    eps = torch.zeros((), dtype=torch.float64, device=x.device) + epsilon
    return eps / (1.0 + eps), torch.log(eps) - torch.log1p(eps)


def _row_statistics(
    x: torch.Tensor, dim: int, where: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(valid, has_valid, shifted, keep)``: the recipe's row statistics (DESIGN §4).

    ``keep`` holds the entries at or above the threshold (invalid entries and
    NaN/+inf rows included as they fall: callers mask with ``valid``).
    """
    valid = valid_mask(x, where)
    count = valid.sum(dim, keepdim=True, dtype=x.dtype)
    has_valid = count > 0
    count = torch.where(has_valid, count, 1.0)
    top = x if where is None else torch.where(valid, x, _NEG_INF)
    top = torch.where(has_valid, top.amax(dim, keepdim=True), 0.0)
    # A valid NaN or +inf makes top or the shifted row NaN, and with it the whole output row.
    shifted = torch.where(valid, x - top, _NEG_INF)
    threshold = torch.where(valid, shifted, 0.0).sum(dim, keepdim=True) / count
    keep = shifted >= threshold
    # Overflowing rows are rare: on the CPU a check skips their pass. Elsewhere the
    # check would wait for the device (or there are no values: meta tensors).
    if static_graph() or x.device.type != "cpu" or not bool(torch.isfinite(threshold).all()):
        finite = _finite(threshold)
        # Logical ops rather than a boolean where, which onnxruntime does not implement.
        keep = (keep & finite) | (_at_or_above_scaled_mean(x, top, valid, count, dim) & ~finite)
    return valid, has_valid, shifted, keep


def composed_support(x: torch.Tensor, dim: int, where: torch.Tensor | None) -> torch.Tensor:
    """The support of ev-softmax along ``dim`` (valid entries at or above the threshold).

    The same statistics as :func:`composed_forward`, so ``torch.compile`` and the
    tracers record it; rows with a valid NaN or +inf have an empty support.
    """
    x = x.to(accumulation_dtype(x.dtype))
    valid, _has_valid, shifted, keep = _row_statistics(x, dim, where)
    poisoned = (torch.isnan(shifted) & valid).any(dim, keepdim=True)
    return keep & valid & ~poisoned


def composed_forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    r"""ev-softmax (or its log) of ``x`` along ``dim`` from plain torch ops, for any layout.

    The recipe of DESIGN §4, in ops that ``torch.compile`` (Inductor fuses them
    into the loops of a compiled softmax: row statistics, weights and their
    sum, output), ``torch.export``, the ONNX exporters and ``torch.jit.trace``
    all record: shift the valid entries by their maximum; the threshold is the
    sum of the shifted scores divided once by the valid count; entries at or
    above it (the maximum always, as the shifted sum is ``<= 0``) weigh
    :math:`e^{x - \max}`, the others :math:`\frac{\varepsilon}{1+\varepsilon} e^{x - \max}`.
    ``dim`` may be negative (a traced graph then follows the input's rank).
    """
    out_dtype = x.dtype
    x = x.to(accumulation_dtype(out_dtype))
    valid, has_valid, shifted, keep = _row_statistics(x, dim, where)
    ratio, log_ratio = _off_support_weights(epsilon, x)
    exp = torch.exp(shifted)
    weights = torch.where(valid, torch.where(keep, exp, exp * ratio), 0.0)
    total = weights.sum(dim, keepdim=True)
    if log:
        log_weights = torch.where(keep, shifted, shifted + log_ratio)
        # A row with no valid entry has -inf log-weights; a total of 1 keeps them -inf.
        log_total = torch.log(torch.where(has_valid, total, 1.0))
        # Masked after the normalizer, so that autograd of this composition (under
        # compile around torch.func) sends no cotangent of an invalid entry to it;
        # invalid entries are -inf, or NaN in a NaN row (-inf - NaN).
        out = torch.where(valid, log_weights - log_total, _NEG_INF - log_total.detach())
    else:
        # A row with no valid entry has zero weights; an infinite total keeps them 0 (not
        # 0/0). Times the reciprocal, as torch.softmax and the C kernel normalize.
        out = weights * torch.where(has_valid, total, math.inf).reciprocal()
    return out.to(out_dtype)


def _finite(t: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(t)`` as two ops: traced graphs record isfinite as four.

    (``x == x`` and ``|x| != inf``, then their conjunction; ``|x| < inf`` is false
    for NaN too.) Every traced or compiled call records this recipe, so its node
    count is what ``torch.compile`` and the exporters spend their time on.
    """
    return t.abs() < math.inf


def _at_or_above_scaled_mean(
    x: torch.Tensor, top: torch.Tensor, valid: torch.Tensor, count: torch.Tensor, dim: int
) -> torch.Tensor:
    """The support, for rows whose shift ``x - max`` or its sum overflows.

    Only rows whose valid range exceeds the dtype's maximum overflow. Their
    scores are compared unshifted (the shift no longer makes the summands
    smaller, and without it an exact mean such as 0 for ``[m, -m, 0]`` is
    summed exactly): float32 scores in float64, where they cannot overflow,
    float64 scores scaled by :data:`_OVERFLOW_SCALE` first. The maximum is
    always in.
    """
    scaled = x.double() * _OVERFLOW_SCALE if x.dtype == torch.float64 else x.double()
    scaled = torch.where(valid, scaled, 0.0)
    top_in = (x == top) & _finite(top)
    return (scaled >= scaled.sum(dim, keepdim=True) / count.double()) | top_in


def fast_path_applies(x: torch.Tensor, where: torch.Tensor | None) -> bool:
    """Whether :func:`cpu_rows_forward` may run: an eager, plain CPU tensor (and mask)."""
    return (
        type(x) is torch.Tensor
        and x.device.type == "cpu"
        and (where is None or (type(where) is torch.Tensor and where.device.type == "cpu"))
        and not torch.compiler.is_compiling()
    )


def as_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` as contiguous ``(rows, length)`` rows along ``dim`` (a view when already so)."""
    if dim == x.ndim - 1 and x.is_contiguous():  # the common case, in one cheap op
        return x.view(-1, x.shape[dim])
    return x.movedim(dim, -1).contiguous().view(-1, x.shape[dim])


def from_rows(rows: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """Undo :func:`as_rows`: ``rows`` back as a contiguous tensor of ``shape``."""
    if dim == len(shape) - 1:
        return rows.view(shape)
    moved = (*shape[:dim], *shape[dim + 1 :], shape[dim])
    return rows.view(moved).movedim(-1, dim).contiguous()


def _softmax_from(scores: torch.Tensor, out: torch.Tensor, log: bool) -> None:
    """Write the (log-)softmax along the last axis of contiguous ``scores`` into ``out``."""
    if out.dtype != scores.dtype:  # half precision output of a float32 block
        _softmax_from(scores, scores, log)
        out.copy_(scores)
    elif log:
        torch._log_softmax(scores, -1, False, out=out)
    else:
        torch._softmax(scores, -1, False, out=out)


def _block_scores(
    xb: torch.Tensor,
    threshold: torch.Tensor,
    scores: torch.Tensor,
    below: torch.Tensor,
    shift: float,
) -> None:
    """Fill ``threshold`` with a row block's cuts and ``scores`` with its ev-softmax scores.

    The recipe: ``scores`` are the entries shifted by the row maximum, the cut
    is their sum divided once by the row length, and scores below it are
    lowered by ``shift`` (``-inf`` for epsilon = 0). The shifted sum is ``<= 0``,
    so the maximum (shifted to 0) is always in the support.
    """
    # A float32 maximum makes the shift of half precision rows float32 (no overflow).
    torch.sub(xb, xb.amax(-1, keepdim=True).to(scores.dtype), out=scores)
    torch.sum(scores, -1, keepdim=True, out=threshold)
    threshold.div_(xb.shape[-1])
    torch.lt(scores, threshold, out=below)
    if shift == _NEG_INF:
        scores.masked_fill_(below, _NEG_INF)
    else:
        scores.add_(below, alpha=shift)


def _rows_per_block(rows: int, length: int, itemsize: int) -> int:
    per_block = max(_BLOCK_BYTES // max(length * itemsize, 1), torch.get_num_threads(), 1)
    return min(rows, per_block)


def cpu_rows_forward(
    x: torch.Tensor, dim: int, epsilon: float, log: bool, where: torch.Tensor | None = None
) -> torch.Tensor:
    """ev-softmax (or its log) along ``dim`` of a CPU tensor, with an optional CPU mask.

    With the compiled kernel of :mod:`evsoftmax._ext` (one fused pass per row, on
    ``torch.get_num_threads()`` threads) every axis, layout, broadcast mask and
    floating dtype is read in place and the output is written in ``x``'s layout
    (:func:`torch.empty_like`): no other full-size buffer is made. Without it,
    unmasked rows go to :func:`_blocked_rows_forward` (other axes and
    non-contiguous rows copied into contiguous rows first) and masked ones to
    :func:`composed_forward`.
    """
    if kernel_applies(x):
        return _kernel_forward(x, dim, epsilon, where, log)
    if where is not None:
        return composed_forward(x, dim, epsilon, where, log)
    rows = as_rows(x, dim)
    return from_rows(_blocked_rows_forward(rows, epsilon, log), x.shape, dim)


_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def kernel_applies(x: torch.Tensor) -> bool:
    """Whether the compiled kernel takes ``x`` (built, a dtype it reads, 1 to 32 dims)."""
    return kernel_dtype_applies(x.dtype, x.ndim)


def kernel_dtype_applies(dtype: torch.dtype, ndim: int) -> bool:
    """:func:`kernel_applies` for a tensor of ``dtype`` with ``ndim`` dimensions."""
    name = _DTYPE_NAMES.get(dtype)
    return name is not None and 1 <= ndim <= 32 and name in _ext.strided_dtypes()


def _kernel_forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    """The compiled kernel on ``x`` and ``where`` through their strides (module docstring)."""
    return _kernel_call(x, dim, epsilon, where, log, scan=False)[0]


def kernel_log_forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """log ev-softmax with the compiled kernel (:func:`kernel_applies`), and whether it holds -inf.

    The kernel looks at each block of rows it wrote while the block is in cache,
    so the answer costs a small fraction of the forward pass, where a scan of
    the output afterwards (:func:`may_hold_minus_inf`) would cost about as much
    as the forward pass itself.
    """
    return _kernel_call(x, dim, epsilon, where, True, scan=True)


def _kernel_call(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool, scan: bool
) -> tuple[torch.Tensor, bool]:
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out, False
    mask_ptr, mask_strides = _kernel_mask(where, x)
    found = _ext.ev_softmax_strided(
        x.data_ptr(),
        mask_ptr,
        out.data_ptr(),
        shape=tuple(x.shape),
        strides=x.stride(),
        mask_strides=mask_strides,
        out_strides=out.stride(),
        axis=dim,
        dtype=_DTYPE_NAMES[x.dtype],
        epsilon=epsilon,
        log=log,
        threads=torch.get_num_threads(),
        parallel=_openmp_parallel(),
        scan=scan,
    )
    return out, found


@functools.cache
def _openmp_parallel() -> int:
    """Address of ``GOMP_parallel`` in the libgomp that runs PyTorch's intra-op threads, or 0.

    The compiled kernel runs its threads there: threads of its own would compete
    for the cores with OpenMP workers that spin for a while after every parallel
    PyTorch op (on a 2-core machine that halves the kernel's speed).
    """
    openmp = torch.backends.openmp.is_available()  # type: ignore[no-untyped-call]
    if not sys.platform.startswith("linux") or not openmp:
        return 0
    candidates = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    for path in [*map(str, candidates), "libgomp.so.1"]:
        try:  # RTLD_NOLOAD: only a library that is already loaded, i.e. torch's own
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return ctypes.cast(library.GOMP_parallel, ctypes.c_void_p).value or 0
        except (OSError, AttributeError):
            continue
    return 0


def _blocked_rows_forward(rows: torch.Tensor, epsilon: float, log: bool) -> torch.Tensor:
    """ev-softmax of contiguous rows from torch ops, when the compiled kernel is missing.

    Rows are processed in blocks that stay in cache: row sums (the one read of
    the input from memory), scores written into a scratch block reused across
    blocks, then one softmax from the scratch block into the output.
    """
    length = rows.shape[1]
    acc = accumulation_dtype(rows.dtype)
    out = torch.empty_like(rows)
    threshold = torch.empty((rows.shape[0], 1), dtype=acc)
    step = _rows_per_block(rows.shape[0], length, acc.itemsize)
    scratch = torch.empty((step, length), dtype=acc)
    below_scratch = torch.empty((step, length), dtype=torch.bool)
    shift = off_support_shift(epsilon)
    blocks: Any = [(rows, out, threshold)]
    if step < rows.shape[0]:
        split = (torch.split(t, step) for t in (rows, out, threshold))
        blocks = zip(*split, strict=True)
    for xb, ob, tb in blocks:
        n = xb.shape[0]
        _block_scores(xb, tb, scratch[:n], below_scratch[:n], shift)
        _softmax_from(scratch[:n], ob, log)
    if not math.isfinite(float(threshold.sum())):
        _repair_rows(rows, out, threshold, epsilon, log)
    return out


def _repair_rows(
    rows: torch.Tensor, out: torch.Tensor, threshold: torch.Tensor, epsilon: float, log: bool
) -> None:
    """Recompute with :func:`composed_forward` the rows whose cut is not finite.

    Those hold -inf (masked), NaN or +inf entries, or a range whose shift
    overflows: cases the shortcut leaves to the full recipe.
    """
    bad = ~torch.isfinite(threshold[:, 0])
    index = bad.nonzero()[:, 0]
    out[index] = composed_forward(rows[index], 1, epsilon, None, log)


# --- closed-form derivatives ------------------------------------------------------


def _in_accumulation_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in float32 when half precision, for the softmax backward kernels.

    Eager CPU tensors of one half precision dtype stay as they are: torch's own
    CPU kernels accumulate such rows in float32 (as ``torch.softmax``'s backward
    does), with the same results as on converted copies and without the two
    full-size float32 copies and the conversion of the result. So do CPU and CUDA
    tensors under ``torch.compile``: Inductor's decompositions of the backward ops
    compute half precision in float32 inside their loops, and the graph then holds
    the same backward as a compiled softmax's, with no conversion nodes around it.
    """
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and dtypes <= set(_HALF) and (_eager_cpu(*tensors) or _compiled(*tensors)):
        return list(tensors)
    return [t.to(accumulation_dtype(t.dtype)) for t in tensors]


def _compiled(*tensors: torch.Tensor) -> bool:
    return torch.compiler.is_compiling() and all(t.device.type in ("cpu", "cuda") for t in tensors)


def _eager_cpu(*tensors: torch.Tensor) -> bool:
    return not torch.compiler.is_compiling() and all(
        type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors
    )


def ev_softmax_vjp(probs: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`p \odot (g - \langle p, g\rangle)`: the VJP and (symmetric Jacobian) the JVP."""
    p, g = _in_accumulation_dtype(probs, grad)
    out = torch._softmax_backward_data(g, p, dim, p.dtype)
    return out.to(grad.dtype)


def may_hold_minus_inf(logp: torch.Tensor) -> bool:
    """False only when ``logp`` is known to hold no ``-inf`` (then no masking is needed)."""
    if torch.compiler.is_compiling() or logp.device.type != "cpu":
        return True
    try:
        # (Not amin() == -inf: a NaN row would hide a fully masked one.)
        return bool((logp == _NEG_INF).any())
    except RuntimeError:  # functorch's vmap refuses data-dependent control flow
        return True


def _invalid(logp: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return logp == _NEG_INF if valid is None else ~valid


def log_ev_softmax_vjp(
    logp: torch.Tensor, grad: torch.Tensor, dim: int, valid: torch.Tensor | None
) -> torch.Tensor:
    r""":math:`g - p \sum g` over the valid entries of each row, exactly 0 on the others.

    ``valid`` is the validity mask; None means the invalid entries are exactly
    those where ``logp`` is ``-inf`` (a valid entry whose probability underflows
    is -inf too, so the autograd Functions keep the mask). Eager CPU tensors of a
    dtype the compiled kernel reads take :func:`kernel_log_vjp` (one pass);
    the others, and a backward that is itself differentiated, torch ops.
    """
    if _log_vjp_kernel_applies(logp, grad, valid):
        return kernel_log_vjp(logp, grad, dim, None, valid)
    if valid is not None or may_hold_minus_inf(logp):
        grad = torch.where(_invalid(logp, valid), 0.0, grad)
    lp, g = _in_accumulation_dtype(logp, grad)
    out = torch._log_softmax_backward_data(g, lp, dim, lp.dtype)
    return out.to(grad.dtype)


def _log_vjp_kernel_applies(
    logp: torch.Tensor, grad: torch.Tensor, valid: torch.Tensor | None
) -> bool:
    """Whether :func:`kernel_log_vjp` serves this backward (eager, not differentiated)."""
    tensors = (logp, grad) if valid is None else (logp, grad, valid)
    return (
        not torch.is_grad_enabled()
        and _eager_cpu(*tensors)
        and not torch._C._are_functorch_transforms_active()
        # (Batched tensors of the legacy vmap, as gradcheck uses, have no storage.)
        and all(torch._C._has_storage(t) for t in tensors)
        and grad.dtype == logp.dtype
        and grad.shape == logp.shape
        and kernel_applies(logp)
    )


def _laid_out_as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of ``like`` (itself when it has them, else a copy)."""
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like).copy_(t)


def kernel_log_vjp(
    logp: torch.Tensor,
    grad: torch.Tensor,
    dim: int,
    x: torch.Tensor | None,
    valid: torch.Tensor | None,
) -> torch.Tensor:
    r""":func:`log_ev_softmax_vjp` with the compiled kernel: :math:`g - e^{\log p}\sum g`.

    One read of ``logp`` and ``grad`` per row (CPU tensors of one dtype the
    kernel reads). The validity of a row's entries is read only in rows whose
    ``logp`` holds ``-inf`` or NaN, the others being all valid: from ``valid``
    (a boolean mask broadcastable to ``logp``) and the input ``x`` (entries
    ``-inf`` are invalid), either may be None; with neither, the ``-inf``
    entries of ``logp`` are the invalid ones. ``grad`` and ``x`` are read in
    ``logp``'s layout (copied into it when theirs differs: an expanded
    cotangent, say).
    """
    dim = dim % logp.ndim
    out = torch.empty_like(logp)
    if out.numel() == 0:
        return out
    grad = _laid_out_as(grad, logp)
    x = None if x is None else _laid_out_as(x, logp)  # (kept referenced while the kernel runs)
    x_ptr = 0 if x is None else x.data_ptr()
    mask_ptr, mask_strides = _kernel_mask(valid, logp)
    _ext.log_ev_softmax_vjp_strided(
        logp.data_ptr(),
        grad.data_ptr(),
        x_ptr,
        mask_ptr,
        out.data_ptr(),
        shape=tuple(logp.shape),
        strides=logp.stride(),
        mask_strides=mask_strides,
        out_strides=out.stride(),
        axis=dim,
        dtype=_DTYPE_NAMES[logp.dtype],
        threads=torch.get_num_threads(),
        parallel=_openmp_parallel(),
    )
    return out


def log_ev_softmax_jvp(
    logp: torch.Tensor, tangent: torch.Tensor, dim: int, valid: torch.Tensor | None
) -> torch.Tensor:
    r""":math:`t - \langle p, t\rangle` on the valid entries of each row, exactly 0 elsewhere."""
    invalid = _invalid(logp, valid)
    lp, t = _in_accumulation_dtype(logp, torch.where(invalid, 0.0, tangent))
    inner = (lp.exp() * t).sum(dim, keepdim=True)
    return torch.where(invalid, 0.0, t - inner).to(tangent.dtype)
