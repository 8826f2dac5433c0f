# mypy: disable-error-code="no-untyped-def, untyped-decorator, no-untyped-call"
r"""Triton kernels for ev-softmax on CUDA tensors: forward (epsilon- and mask-aware) and backward.

Rows are normalized along the last axis of a contiguous ``(rows, length)`` view.

* Rows of up to :data:`SINGLE_PASS_MAX` entries: one program per row holds the
  row in registers, so the input is read once and the output written once
  (plus one byte per entry for a mask).
* Longer rows are split over several programs, each owning a chunk of
  :data:`CHUNK` entries, in three launches: per-chunk statistics (count, max,
  sum of shifted scores, NaN/+inf flag); per-chunk normalizers after combining
  the row's statistics; the output. The chunk is read three times (from L2 for
  all but the first on large GPUs), the output written once.

The math is the core's (``evsoftmax._core``): shift by the valid maximum,
compare with the mean of the shifted scores, weights
:math:`(1\{k \in S\} + \varepsilon) e^{s_k}` (here scaled by
:math:`1/(1+\varepsilon)`), accumulated in float32 for half precision and in
float64 for float64. The backward kernels compute :math:`p \odot (g - \langle
p, g\rangle)` and, for the log form, :math:`g - p \sum g` over valid entries.

The kernels also run on CPU tensors under ``TRITON_INTERPRET=1``, which is how
the test suite checks them without a GPU.
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from .ops import as_rows, from_rows

__all__ = ["CHUNK", "SINGLE_PASS_MAX", "forward", "log_softmax_vjp", "softmax_vjp", "supports"]

SINGLE_PASS_MAX = 8192
CHUNK = 4096
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NEG_INF = -math.inf


def supports(x: torch.Tensor) -> bool:
    """Whether the kernels handle ``x``: a CUDA tensor of a floating dtype."""
    return x.is_cuda and x.dtype in _DTYPES


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


# --- forward ---------------------------------------------------------------------


@triton.jit
def _load_row(
    X, MASK, row, x_stride, mask_stride, cols, n_cols, HAS_MASK: tl.constexpr, ACC: tl.constexpr
):
    """Scores and validity of the entries ``cols`` of ``row``; poison marks valid NaN/+inf."""
    inside = cols < n_cols
    x = tl.load(X + row * x_stride + cols, mask=inside, other=0.0).to(ACC)
    valid = inside & (x != float("-inf"))
    if HAS_MASK:
        keep = tl.load(MASK + row * mask_stride + cols, mask=inside, other=0)
        valid = valid & (keep != 0)
    poison = valid & ((x != x) | (x == float("inf")))
    return x, valid, poison


@triton.jit
def _weights(s, valid, below, ratio):
    """Unnormalized probabilities: e^s in the support, ratio * e^s outside, 0 if invalid."""
    e = tl.where(valid, tl.exp(s), 0.0)
    return tl.where(below, e * ratio, e)


@triton.jit
def _outputs(s, valid, below, ratio, log_ratio, total, LOG: tl.constexpr):
    """(log-)probabilities from shifted scores, support and the row's weight sum ``total``."""
    if LOG:
        log_w = tl.where(below, s + log_ratio, s)
        return tl.where(valid, log_w - tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    return _weights(s, valid, below, ratio) / tl.where(total > 0, total, 1.0)


@triton.jit
def _single_pass_kernel(
    X, MASK, Y, ratio_hi, ratio_lo, log_hi, log_lo, x_stride, mask_stride, y_stride, n_cols,
    HAS_MASK: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x, valid, poison = _load_row(X, MASK, row, x_stride, mask_stride, cols, n_cols, HAS_MASK, ACC)
    ratio = tl.cast(ratio_hi, ACC) + tl.cast(ratio_lo, ACC)
    log_ratio = tl.cast(log_hi, ACC) + tl.cast(log_lo, ACC)
    count = tl.sum(valid.to(ACC), 0)
    top = tl.max(tl.where(valid, x, float("-inf")), 0)
    top = tl.where(count > 0, top, 0.0)
    s = tl.where(valid, x - top, 0.0)
    below = s < tl.sum(s, 0) / tl.maximum(count, 1.0)
    total = tl.sum(_weights(s, valid, below, ratio), 0)
    y = _outputs(s, valid, below, ratio, log_ratio, total, LOG)
    y = tl.where(tl.max(poison.to(tl.int32), 0) > 0, float("nan"), y)
    tl.store(Y + row * y_stride + cols, y.to(Y.dtype.element_ty), mask=cols < n_cols)


@triton.jit
def _chunk_stats_kernel(
    X, MASK, STATS, x_stride, mask_stride, n_cols, n_chunks,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, CHUNK_SIZE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    x, valid, poison = _load_row(X, MASK, row, x_stride, mask_stride, cols, n_cols, HAS_MASK, ACC)
    count = tl.sum(valid.to(ACC), 0)
    top = tl.max(tl.where(valid, x, float("-inf")), 0)
    shifted_sum = tl.sum(tl.where(valid, x - tl.where(count > 0, top, 0.0), 0.0), 0)
    base = STATS + (row * n_chunks + chunk) * 4
    tl.store(base, count)
    tl.store(base + 1, top)
    tl.store(base + 2, shifted_sum)
    tl.store(base + 3, tl.max(poison.to(ACC), 0))


@triton.jit
def _row_stats(STATS, row, n_chunks, ACC: tl.constexpr, CHUNKS: tl.constexpr):
    """Combine a row's chunk statistics: (top, mean of shifted scores, poisoned)."""
    idx = tl.arange(0, CHUNKS)
    present = idx < n_chunks
    base = STATS + (row * n_chunks + idx) * 4
    counts = tl.load(base, mask=present, other=0.0)
    tops = tl.load(base + 1, mask=present, other=float("-inf"))
    sums = tl.load(base + 2, mask=present, other=0.0)
    poisoned = tl.max(tl.load(base + 3, mask=present, other=0.0), 0) > 0
    count = tl.sum(counts, 0)
    top = tl.max(tops, 0)
    top = tl.where(count > 0, top, 0.0)
    # Each chunk summed x - (its own max); re-base those sums on the row maximum.
    rebased = tl.where(counts > 0, sums + counts * (tl.where(counts > 0, tops, top) - top), 0.0)
    mean = tl.sum(rebased, 0) / tl.maximum(count, 1.0)
    return top, mean, poisoned


@triton.jit
def _chunk_totals_kernel(
    X, MASK, STATS, TOTALS, ratio_hi, ratio_lo, x_stride, mask_stride, n_cols, n_chunks,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, CHUNK_SIZE: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    top, mean, _ = _row_stats(STATS, row, n_chunks, ACC, CHUNKS)
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    x, valid, _ = _load_row(X, MASK, row, x_stride, mask_stride, cols, n_cols, HAS_MASK, ACC)
    s = tl.where(valid, x - top, 0.0)
    w = _weights(s, valid, s < mean, tl.cast(ratio_hi, ACC) + tl.cast(ratio_lo, ACC))
    tl.store(TOTALS + row * n_chunks + chunk, tl.sum(w, 0))


@triton.jit
def _chunk_write_kernel(
    X, MASK, STATS, TOTALS, Y, ratio_hi, ratio_lo, log_hi, log_lo,
    x_stride, mask_stride, y_stride, n_cols, n_chunks,
    HAS_MASK: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
    CHUNK_SIZE: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    top, mean, poisoned = _row_stats(STATS, row, n_chunks, ACC, CHUNKS)
    idx = tl.arange(0, CHUNKS)
    total = tl.sum(tl.load(TOTALS + row * n_chunks + idx, mask=idx < n_chunks, other=0.0), 0)
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    x, valid, _ = _load_row(X, MASK, row, x_stride, mask_stride, cols, n_cols, HAS_MASK, ACC)
    s = tl.where(valid, x - top, 0.0)
    ratio = tl.cast(ratio_hi, ACC) + tl.cast(ratio_lo, ACC)
    log_ratio = tl.cast(log_hi, ACC) + tl.cast(log_lo, ACC)
    y = _outputs(s, valid, s < mean, ratio, log_ratio, total, LOG)
    y = tl.where(poisoned, float("nan"), y)
    tl.store(Y + row * y_stride + cols, y.to(Y.dtype.element_ty), mask=cols < n_cols)


def _float32_pair(value: float) -> tuple[float, float]:
    """``(hi, lo)``, both float32 numbers, with ``hi + lo`` equal to ``value`` to ~48 bits."""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    lo = value - hi if math.isfinite(value) else 0.0
    return hi, struct.unpack("f", struct.pack("f", lo))[0]


def _mask_rows(where: torch.Tensor | None, x: torch.Tensor, dim: int) -> torch.Tensor | None:
    if where is None:
        return None
    return as_rows(torch.broadcast_to(where.to(x.device), x.shape), dim).view(torch.uint8)


def forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    """ev-softmax (or its log) of ``x`` along ``dim``, computed by the Triton kernels."""
    rows = as_rows(x, dim)
    out = torch.empty_like(rows)
    mask = _mask_rows(where, x, dim)
    n_rows, n_cols = rows.shape
    acc = _acc(x.dtype)
    ratio = epsilon / (1.0 + epsilon)
    log_ratio = math.log(ratio) if epsilon > 0.0 else _NEG_INF
    # Scalars reach kernels as float32: pass each as a float32 pair summing to the float64
    # value (no host-to-device copy, which would stall the host).
    params = (*_float32_pair(ratio), *_float32_pair(log_ratio))
    mask_arg = rows if mask is None else mask  # a dummy pointer when there is no mask
    mask_stride = 0 if mask is None else mask.stride(0)
    flags = {"HAS_MASK": mask is not None, "ACC": _tl_acc(x.dtype)}
    if n_rows == 0 or n_cols == 0:
        return from_rows(out, x.shape, dim)
    if n_cols <= SINGLE_PASS_MAX:
        block = triton.next_power_of_2(n_cols)
        _single_pass_kernel[(n_rows,)](
            rows, mask_arg, out, *params, rows.stride(0), mask_stride, out.stride(0), n_cols,
            LOG=log, BLOCK=block, num_warps=_warps(block), **flags,
        )  # fmt: skip
        return from_rows(out, x.shape, dim)
    n_chunks = triton.cdiv(n_cols, CHUNK)
    chunks = triton.next_power_of_2(n_chunks)
    stats = torch.empty((n_rows, n_chunks, 4), dtype=acc, device=x.device)
    totals = torch.empty((n_rows, n_chunks), dtype=acc, device=x.device)
    grid = (n_rows, n_chunks)
    warps = _warps(CHUNK)
    _chunk_stats_kernel[grid](
        rows, mask_arg, stats, rows.stride(0), mask_stride, n_cols, n_chunks,
        CHUNK_SIZE=CHUNK, num_warps=warps, **flags,
    )  # fmt: skip
    _chunk_totals_kernel[grid](
        rows, mask_arg, stats, totals, *params[:2], rows.stride(0), mask_stride, n_cols, n_chunks,
        CHUNK_SIZE=CHUNK, CHUNKS=chunks, num_warps=warps, **flags,
    )  # fmt: skip
    _chunk_write_kernel[grid](
        rows, mask_arg, stats, totals, out, *params, rows.stride(0), mask_stride, out.stride(0),
        n_cols, n_chunks, LOG=log, CHUNK_SIZE=CHUNK, CHUNKS=chunks, num_warps=warps, **flags,
    )  # fmt: skip
    return from_rows(out, x.shape, dim)


# --- backward --------------------------------------------------------------------


@triton.jit
def _vjp_terms(P, G, VALID, row, p_stride, g_stride, v_stride, cols, n_cols,
               LOG: tl.constexpr, HAS_VALID: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """Per-entry ``(p, g, keep)`` and the term whose row sum the VJP needs."""
    inside = cols < n_cols
    out = tl.load(P + row * p_stride + cols, mask=inside, other=0.0).to(ACC)
    g = tl.load(G + row * g_stride + cols, mask=inside, other=0.0).to(ACC)
    if LOG:
        keep = inside & (out != float("-inf"))
        if HAS_VALID:
            keep = inside & (tl.load(VALID + row * v_stride + cols, mask=inside, other=0) != 0)
        g = tl.where(keep, g, 0.0)
        return tl.exp(out), g, keep, g
    return out, g, inside, out * g


@triton.jit
def _vjp_result(p, g, keep, total, LOG: tl.constexpr):
    if LOG:
        return tl.where(keep, g - p * total, 0.0)
    return p * (g - total)


@triton.jit
def _vjp_single_pass_kernel(
    P, G, VALID, OUT, p_stride, g_stride, v_stride, o_stride, n_cols,
    LOG: tl.constexpr, HAS_VALID: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    p, g, keep, term = _vjp_terms(
        P, G, VALID, row, p_stride, g_stride, v_stride, cols, n_cols, LOG, HAS_VALID, ACC
    )
    total = tl.sum(term, 0)
    result = _vjp_result(p, g, keep, total, LOG)
    tl.store(OUT + row * o_stride + cols, result.to(OUT.dtype.element_ty), mask=cols < n_cols)


@triton.jit
def _vjp_chunk_sums_kernel(
    P, G, VALID, SUMS, p_stride, g_stride, v_stride, n_cols, n_chunks,
    LOG: tl.constexpr, HAS_VALID: tl.constexpr, ACC: tl.constexpr, CHUNK_SIZE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    _, _, _, term = _vjp_terms(
        P, G, VALID, row, p_stride, g_stride, v_stride, cols, n_cols, LOG, HAS_VALID, ACC
    )
    tl.store(SUMS + row * n_chunks + chunk, tl.sum(term, 0))


@triton.jit
def _vjp_chunk_write_kernel(
    P, G, VALID, SUMS, OUT, p_stride, g_stride, v_stride, o_stride, n_cols, n_chunks,
    LOG: tl.constexpr, HAS_VALID: tl.constexpr, ACC: tl.constexpr,
    CHUNK_SIZE: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    idx = tl.arange(0, CHUNKS)
    total = tl.sum(tl.load(SUMS + row * n_chunks + idx, mask=idx < n_chunks, other=0.0), 0)
    cols = chunk * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE)
    p, g, keep, _ = _vjp_terms(
        P, G, VALID, row, p_stride, g_stride, v_stride, cols, n_cols, LOG, HAS_VALID, ACC
    )
    result = _vjp_result(p, g, keep, total, LOG)
    tl.store(OUT + row * o_stride + cols, result.to(OUT.dtype.element_ty), mask=cols < n_cols)


def _vjp(
    out: torch.Tensor, grad: torch.Tensor, dim: int, valid: torch.Tensor | None, log: bool
) -> torch.Tensor:
    rows = as_rows(out, dim)
    grads = as_rows(grad.to(out.dtype), dim)
    result = torch.empty_like(rows)
    valid_rows = None if valid is None else _mask_rows(valid, out, dim)
    valid_arg = rows if valid_rows is None else valid_rows
    v_stride = 0 if valid_rows is None else valid_rows.stride(0)
    n_rows, n_cols = rows.shape
    flags = {"LOG": log, "HAS_VALID": valid_rows is not None, "ACC": _tl_acc(out.dtype)}
    strides = (rows.stride(0), grads.stride(0), v_stride)
    if n_rows == 0 or n_cols == 0:
        pass
    elif n_cols <= SINGLE_PASS_MAX:
        block = triton.next_power_of_2(n_cols)
        _vjp_single_pass_kernel[(n_rows,)](
            rows, grads, valid_arg, result, *strides, result.stride(0), n_cols,
            BLOCK=block, num_warps=_warps(block), **flags,
        )  # fmt: skip
    else:
        n_chunks = triton.cdiv(n_cols, CHUNK)
        sums = torch.empty((n_rows, n_chunks), dtype=_acc(out.dtype), device=out.device)
        grid = (n_rows, n_chunks)
        _vjp_chunk_sums_kernel[grid](
            rows, grads, valid_arg, sums, *strides, n_cols, n_chunks,
            CHUNK_SIZE=CHUNK, num_warps=_warps(CHUNK), **flags,
        )  # fmt: skip
        _vjp_chunk_write_kernel[grid](
            rows, grads, valid_arg, sums, result, *strides, result.stride(0), n_cols, n_chunks,
            CHUNK_SIZE=CHUNK, CHUNKS=triton.next_power_of_2(n_chunks),
            num_warps=_warps(CHUNK), **flags,
        )  # fmt: skip
    return from_rows(result, out.shape, dim).to(grad.dtype)


def softmax_vjp(probs: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`p \odot (g - \langle p, g\rangle)` along ``dim`` (not differentiable)."""
    return _vjp(probs, grad, dim, None, False)


def log_softmax_vjp(
    logp: torch.Tensor, grad: torch.Tensor, dim: int, valid: torch.Tensor | None
) -> torch.Tensor:
    r""":math:`g - p \sum g` over the valid entries along ``dim``, 0 elsewhere (not differentiable).

    Valid entries are ``valid`` when given, else those where ``logp > -inf``.
    """
    return _vjp(logp, grad, dim, valid, True)
