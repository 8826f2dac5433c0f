r"""ev-softmax on torch tensors without autograd: forward passes and closed-form derivatives.

Everything here takes and returns plain tensors; ``autograd`` wraps it in an
``autograd.Function``. Three forward implementations agree with ``evsoftmax._core``
(the Triton kernels in ``triton`` are a fourth):

* :func:`composed_forward`: eager torch ops for every layout, mask and device
  (masked inputs, meta tensors, subclasses, CUDA without triton). It is the
  core's algorithm (shift by the valid maximum, compare with the mean of the
  shifted scores) ending in ``torch.softmax`` of scores whose entries outside the
  support are lowered by :math:`\log\frac{\varepsilon}{1+\varepsilon}`
  (``-inf`` for :math:`\varepsilon = 0`): softmax is shift invariant, so
  :math:`\operatorname{softmax}(z) \propto (1\{k \in S\} + \varepsilon) e^{x_k}`.
* :func:`cpu_rows_forward`: the eager CPU fast path for unmasked inputs: the
  fused C kernel of :mod:`evsoftmax._ext` when it is built, else row sums,
  shift and threshold into a scratch block that stays in cache, then PyTorch's
  softmax kernel into the output. Rows where the second shortcut is not exact
  (non-finite entries, or a rounded mean above every entry) are detected from
  O(rows) data and recomputed with :func:`composed_forward`.
* :func:`traced_forward`: the form ``torch.compile`` traces, which Inductor
  fuses into one kernel with the loop structure of a compiled softmax.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ... import _ext

__all__ = [
    "accumulation_dtype",
    "as_rows",
    "composed_forward",
    "cpu_rows_forward",
    "ev_softmax_vjp",
    "fast_path_applies",
    "from_rows",
    "traced_forward",
    "log_ev_softmax_jvp",
    "log_ev_softmax_vjp",
    "off_support_shift",
    "valid_mask",
]

_NEG_INF = -math.inf
_HALF = (torch.float16, torch.bfloat16)
_NEG_TINY = {dtype: -torch.finfo(dtype).tiny for dtype in (torch.float32, torch.float64)}
# Row blocks of about this many bytes keep the shift, threshold and softmax passes in
# cache; larger blocks mean fewer ops (each a parallel region when multithreaded).
_BLOCK_BYTES = 1 << 22


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


def composed_forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    """ev-softmax (or its log) of ``x`` along ``dim`` from plain torch ops, for any layout."""
    out_dtype = x.dtype
    x = x.to(accumulation_dtype(out_dtype))
    valid = valid_mask(x, where)
    has_valid = valid.any(dim, keepdim=True)
    row_max = torch.where(valid, x, _NEG_INF).amax(dim, keepdim=True)
    row_max = torch.where(has_valid, row_max, 0.0)
    # A valid NaN or +inf makes row_max or the shifted row NaN, and with it the whole output row.
    shifted = torch.where(valid, x - row_max, 0.0)
    count = valid.sum(dim, keepdim=True, dtype=x.dtype).clamp_min(1.0)
    below = shifted < shifted.sum(dim, keepdim=True) / count
    scores = torch.where(below, shifted + off_support_shift(epsilon), shifted)
    scores = torch.where(valid, scores, _NEG_INF)
    out = torch.log_softmax(scores, dim) if log else torch.softmax(scores, dim)
    out = torch.where(has_valid, out, _NEG_INF if log else 0.0)
    return out.to(out_dtype)


def traced_forward(
    x: torch.Tensor, dim: int, epsilon: float, where: torch.Tensor | None, log: bool
) -> torch.Tensor:
    """ev-softmax (or its log) written for ``torch.compile``: Inductor fuses it into one kernel.

    Three loops over each row, like a compiled softmax: the row statistics (max,
    share of valid entries, mean), the weights and their sum, the output. The
    mean is a sum of ``x / length`` (it cannot overflow); the cut is clamped to
    the row maximum, which is always in the support. ``epsilon`` enters through
    a tensor, so that a float Dynamo made symbolic (one that changes between
    calls) neither breaks the graph nor recompiles it.
    """
    out_dtype = x.dtype
    x = x.to(accumulation_dtype(out_dtype))
    length = x.shape[dim]
    valid = x != _NEG_INF
    if where is None:
        top = x.amax(dim, keepdim=True)
    else:
        valid = valid & where
        top = torch.where(valid, x, _NEG_INF).amax(dim, keepdim=True)
    share = valid.sum(dim, keepdim=True, dtype=x.dtype) / length
    has_valid = share > 0
    scaled_sum = torch.where(valid, x * (1.0 / length), 0.0).sum(dim, keepdim=True)
    top = torch.where(has_valid, top, 0.0)
    cut = torch.minimum(scaled_sum / torch.where(has_valid, share, 1.0), top)
    shifted = x - top
    keep = x >= cut
    eps = torch.scalar_tensor(epsilon, dtype=x.dtype, device=x.device)
    ratio = eps / (1.0 + eps)  # weight outside the support relative to inside
    exp = torch.exp(shifted)
    weights = torch.where(keep, exp, exp * ratio)
    if where is not None:
        weights = torch.where(valid, weights, 0.0)
    total = weights.sum(dim, keepdim=True)
    if log:
        log_weights = torch.where(keep, shifted, shifted + torch.log(ratio))
        if where is not None:
            log_weights = torch.where(valid, log_weights, _NEG_INF)
        # An empty row has -inf log-weights; a total of 1 keeps them -inf.
        out = log_weights - torch.log(torch.where(has_valid, total, 1.0))
    else:
        # An empty row has zero weights; an infinite total keeps them 0 (not 0/0).
        out = weights / torch.where(has_valid, total, math.inf)
    return out.to(out_dtype)


def fast_path_applies(x: torch.Tensor, where: torch.Tensor | None) -> bool:
    """Whether :func:`cpu_rows_forward` may run: an eager, unmasked, plain CPU tensor."""
    return (
        where is None
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
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
    xb: torch.Tensor, threshold: torch.Tensor, scores: torch.Tensor, shift: float
) -> None:
    """Fill ``threshold`` with a row block's cuts and ``scores`` with ev-softmax scores.

    ``threshold`` holds the row sums on entry. Scores are x - mean with -inf below 0
    (epsilon = 0) or x lowered by ``shift`` below the cut (epsilon > 0).
    """
    threshold.div_(xb.shape[-1])
    if shift == _NEG_INF:
        torch.sub(xb, threshold, out=scores)
        # The cut is the smallest normal number below 0 rather than -0.0, so that
        # flush-to-zero modes cannot drop entries equal to the mean.
        torch.threshold_(scores, _NEG_TINY[scores.dtype], _NEG_INF)
        return
    # With epsilon > 0 an empty support would not show up as NaN later, so the
    # cut is clamped to the row maximum, which is always in the support.
    torch.minimum(threshold, xb.amax(-1, keepdim=True), out=threshold)
    torch.lt(xb, threshold, out=scores)
    torch.add(xb, scores, alpha=shift, out=scores)


def _rows_per_block(rows: int, length: int, itemsize: int) -> int:
    per_block = max(_BLOCK_BYTES // max(length * itemsize, 1), torch.get_num_threads(), 1)
    return min(rows, per_block)


def cpu_rows_forward(x: torch.Tensor, dim: int, epsilon: float, log: bool) -> torch.Tensor:
    """ev-softmax (or its log) along ``dim`` of an unmasked CPU tensor.

    Other axes than the last, and non-contiguous rows, are first copied into
    contiguous rows, so every layout gives the same bits. The rows then go to
    the compiled kernel of :mod:`evsoftmax._ext` when it is built (one fused
    pass per row, on ``torch.get_num_threads()`` threads), else to
    :func:`_blocked_rows_forward`.
    """
    rows = as_rows(x, dim)
    if _ext.available():
        out = _kernel_rows_forward(rows, epsilon, log)
    else:
        out = _blocked_rows_forward(rows, epsilon, log)
    return from_rows(out, x.shape, dim)


def _kernel_rows_forward(rows: torch.Tensor, epsilon: float, log: bool) -> torch.Tensor:
    """The compiled kernel on contiguous rows (half precision computed in float32)."""
    acc = accumulation_dtype(rows.dtype)
    src = rows.to(acc)
    out = torch.empty_like(src)
    if out.numel() > 0:
        _ext.ev_softmax_rows(
            src.data_ptr(),
            out.data_ptr(),
            rows=src.shape[0],
            length=src.shape[1],
            itemsize=acc.itemsize,
            epsilon=epsilon,
            log=log,
            threads=torch.get_num_threads(),
            parallel=_openmp_parallel(),
        )
    return out.to(rows.dtype)


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
    shift = off_support_shift(epsilon)
    blocks: Any = [(rows, out, threshold)]
    if step < rows.shape[0]:
        split = (torch.split(t, step) for t in (rows, out, threshold))
        blocks = zip(*split, strict=True)
    for xb, ob, tb in blocks:
        scores = scratch[: xb.shape[0]]
        torch.sum(xb, -1, keepdim=True, dtype=acc, out=tb)
        _block_scores(xb, tb, scores, shift)
        _softmax_from(scores, ob, log)
    if _suspect(threshold, out, epsilon):
        _repair_rows(rows, out, threshold, epsilon, log)
    return out


def _suspect(threshold: torch.Tensor, out: torch.Tensor, epsilon: float) -> bool:
    """Cheap O(rows) test for rows the shortcut may have got wrong (false alarms are fine).

    A non-finite threshold flags -inf (masked) entries, NaN, +inf or overflow; with
    ``epsilon == 0`` a rounded mean above every entry leaves an empty support, which
    softmax turns into a NaN row, visible in its first column.
    """
    total = threshold.sum()
    if epsilon == 0.0:
        total = total + out[:, 0].sum()
    return not math.isfinite(float(total))


def _repair_rows(
    rows: torch.Tensor, out: torch.Tensor, threshold: torch.Tensor, epsilon: float, log: bool
) -> None:
    """Recompute with :func:`composed_forward` the rows flagged by :func:`_suspect`."""
    bad = ~torch.isfinite(threshold[:, 0])
    if epsilon == 0.0:
        bad |= torch.isnan(out[:, 0])
    if bool(bad.any()):
        index = bad.nonzero()[:, 0]
        out[index] = composed_forward(rows[index], 1, epsilon, None, log)


# --- closed-form derivatives ------------------------------------------------------


def _in_accumulation_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(accumulation_dtype(t.dtype)) for t in tensors]


def ev_softmax_vjp(probs: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`p \odot (g - \langle p, g\rangle)`: the VJP and (symmetric Jacobian) the JVP."""
    p, g = _in_accumulation_dtype(probs, grad)
    out = torch._softmax_backward_data(g, p, dim, p.dtype)
    return out.to(grad.dtype)


def _may_hold_invalid(logp: torch.Tensor) -> bool:
    """False only when ``logp`` is known to hold no ``-inf`` (then no masking is needed)."""
    if torch.compiler.is_compiling() or logp.device.type != "cpu":
        return True
    try:
        return bool(logp.amin() == _NEG_INF)
    except RuntimeError:  # functorch's vmap refuses data-dependent control flow
        return True


def _invalid(logp: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return logp == _NEG_INF if valid is None else ~valid


def log_ev_softmax_vjp(
    logp: torch.Tensor, grad: torch.Tensor, dim: int, valid: torch.Tensor | None
) -> torch.Tensor:
    r""":math:`g - p \sum g` over the valid entries of each row, exactly 0 on the others.

    ``valid`` is None when the invalid entries are exactly those where ``logp`` is
    ``-inf`` (always the case for ``epsilon > 0``).
    """
    if valid is not None or _may_hold_invalid(logp):
        grad = torch.where(_invalid(logp, valid), 0.0, grad)
    lp, g = _in_accumulation_dtype(logp, grad)
    out = torch._log_softmax_backward_data(g, lp, dim, lp.dtype)
    return out.to(grad.dtype)


def log_ev_softmax_jvp(
    logp: torch.Tensor, tangent: torch.Tensor, dim: int, valid: torch.Tensor | None
) -> torch.Tensor:
    r""":math:`t - \langle p, t\rangle` on the valid entries of each row, exactly 0 elsewhere."""
    invalid = _invalid(logp, valid)
    lp, t = _in_accumulation_dtype(logp, torch.where(invalid, 0.0, tangent))
    inner = (lp.exp() * t).sum(dim, keepdim=True)
    return torch.where(invalid, 0.0, t - inner).to(tangent.dtype)
