"""The compiled baseline kernels of :mod:`evsoftmax._ext` on eager CPU tensors.

``sparsemax``, ``entmax15`` and ``entmax_bisect`` (and their closed-form VJP)
run on contiguous rows along the reduced axis, in float32 or float64 (half
precision is computed in float32, as the torch-op paths accumulate it), on
PyTorch's intra-op threads. They take plain tensors without autograd; the
``autograd.Function`` of :mod:`.baselines` calls them when :func:`applies`
holds, and keeps its torch-op paths for everything else (other devices,
``torch.compile``, ``torch.func`` transforms, double backward).
"""

from __future__ import annotations

import torch

from ... import _ext
from . import ops
from .ops import _openmp_parallel, accumulation_dtype, as_rows, from_rows

__all__ = ["applies", "forward", "vjp"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may run on ``tensors``: eager, plain CPU floating tensors.

    Not while ``torch.compile`` traces or a ``torch.func`` transform is active
    (their tensors have no memory of their own), not while ``torch.jit.trace``
    or ``torch.export`` records (a trace would hold the kernel's output as a
    constant), and not when the kernels are not built or turned off
    (``EVSOFTMAX_NO_CPU_KERNELS``).
    """
    if _ext.baseline_kernels() is None or ops.static_graph() or ops.recording():
        return False
    return all(
        type(t) is torch.Tensor and t.device.type == "cpu" and t.dtype in _FLOATS for t in tensors
    )


def _rows_in(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``x`` as contiguous rows along ``axis`` in the kernels' dtype (float32 or float64)."""
    return as_rows(x.detach(), axis % x.ndim).to(accumulation_dtype(x.dtype))


def _call_args(rows: torch.Tensor) -> dict[str, int]:
    return {
        "rows": rows.shape[0],
        "length": rows.shape[1],
        "itemsize": rows.dtype.itemsize,
        "threads": torch.get_num_threads(),
        "parallel": _openmp_parallel(),
    }


def forward(
    name: str, x: torch.Tensor, axis: int, *, alpha: float = 1.5, n_iter: int = 50
) -> torch.Tensor:
    """The baseline ``name`` (a key of ``_ext.BASELINE_OPS``) of ``x`` along ``axis``.

    ``x`` holds no ``where`` mask (callers fill excluded entries with ``-inf``).
    """
    rows = _rows_in(x, axis)
    out = torch.empty_like(rows)
    if out.numel() > 0:
        args = _call_args(rows)
        _ext.baseline_rows(
            name, rows.data_ptr(), out.data_ptr(), alpha=alpha, n_iter=n_iter, **args
        )
    return from_rows(out, x.shape, axis % x.ndim).to(x.dtype)


def vjp(probs: torch.Tensor, grad: torch.Tensor, axis: int, alpha: float) -> torch.Tensor:
    """The closed-form VJP of alpha-entmax at output ``probs`` for cotangent ``grad``."""
    dtype = torch.promote_types(probs.dtype, grad.dtype)
    p_rows = _rows_in(probs.to(dtype), axis)
    g_rows = _rows_in(grad.to(dtype), axis)
    out = torch.empty_like(p_rows)
    if out.numel() > 0:
        args = _call_args(p_rows)
        ptrs = (p_rows.data_ptr(), g_rows.data_ptr(), out.data_ptr())
        _ext.baseline_vjp_rows(*ptrs, alpha=alpha, **args)
    return from_rows(out, probs.shape, axis % probs.ndim).to(dtype)
