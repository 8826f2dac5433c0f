r"""PyTorch ev-attention: blocked over queries, with the closed-form (flash) backward.

Registered in ``_dispatch.ADAPTER_MODULES["torch"]``. The forward forms the
scores of one block of queries at a time (never the ``L x S`` matrix), applies
DESIGN §4's recipe with the threshold from the key identity (see
``evsoftmax._attention``), and keeps per query only the row maximum, the
threshold and the normalizer. The backward recomputes each block's
probabilities ``P`` from those and applies the flash-attention backward with
the support indicator: ``dS = P * (dP - rowsum(dO * O))`` with
``dP = dO v^T`` (the eps family has the same Jacobian, ``P`` being the
eps-probabilities), ``dq = scale·dS k``, ``dk = scale·dS^T q``, ``dv = P^T dO``.
No gradient flows through the threshold nor into the mask. Fully masked
queries have ``P = 0``, so zero output and zero gradient.

On the CPU in eager mode (float32/float64, compiled kernel built, support
sizes not asked for) each block's probabilities come from the fused row
kernel of :mod:`evsoftmax._ext` instead of five torch ops: it takes the
threshold as the mean of the block's valid scores, the same number as the key
identity up to rounding, and the backward recomputes ``P`` with it, so both
passes see one support. Blocks are large (about ``8 x _BLOCK_ELEMENTS``
scores, still a constant, so memory stays O(L + S)): each block costs a few
parallel regions, and on a loaded machine every region waits for its slowest
thread, so fewer, larger ones are what keeps two threads faster than one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ... import _attention, _ext
from .ops import _openmp_parallel

__all__ = ["attention", "ev_attention"]


def _block_rows(length: int, keys: int, batch: int) -> int:
    """Queries per block: ``KERNEL_BLOCK_SCALE * _BLOCK_ELEMENTS`` scores (4 Mi) at once.

    In units of the array-API path's ``_BLOCK_ELEMENTS``, which tests shrink to
    force many blocks.
    """
    return _attention.block_rows(length, keys, batch, _attention.KERNEL_BLOCK_SCALE)


def _kernel_applies(q: torch.Tensor, need_sizes: bool) -> bool:
    """Whether the fused row kernel computes the blocks (see the module docstring).

    Not inside ``torch.compile`` or ``torch.func`` (the kernel reads raw
    pointers), and not when support sizes are asked for (they come from the cut).
    """
    return (
        not need_sizes
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.float64)
        and _ext.available()
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    )


def _kernel_probabilities(scores: torch.Tensor, epsilon: float) -> torch.Tensor:
    """ev-softmax of each (contiguous) row of ``scores`` over its finite entries, by the kernel."""
    scores = scores.contiguous()
    out = torch.empty_like(scores)
    cols = scores.shape[-1]
    _ext.ev_softmax_rows(
        scores.data_ptr(),
        out.data_ptr(),
        rows=scores.numel() // cols,
        length=cols,
        itemsize=scores.element_size(),
        epsilon=epsilon,
        log=False,
        threads=torch.get_num_threads(),
        parallel=_openmp_parallel(),
    )
    return out


def _acc(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision, else the dtype itself."""
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


def _thresholds_from_keys(q: torch.Tensor, k: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """Valid score means ``(..., L)`` without a mask: q·Σk divided once by the count.

    ``q`` is already scaled, so the scores are ``q kᵀ``.
    """
    length, keys = q.shape[-2], k.shape[-2]
    if not is_causal:
        return torch.matmul(q, k.sum(-2).unsqueeze(-1)).squeeze(-1) / keys
    # Prefix sums of the keys: query i sees keys 0..min(i, S-1).
    rows = torch.arange(length, device=q.device).clamp(max=keys - 1)
    count = (rows + 1).to(q.dtype)
    return (q * k.cumsum(-2).index_select(-2, rows)).sum(-1) / count


def _columns(keys: int, is_causal: bool, i1: int) -> int:
    """Keys a query block can see: a causal block ending at query ``i1`` sees only ``j < i1``."""
    return min(keys, i1) if is_causal else keys


def _block(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    i0: int,
    i1: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Scores of queries ``i0:i1`` (masked ones ``-inf``), their validity, and the mask block.

    Only the keys the block can see are formed (see :func:`_columns`).
    """
    cols = _columns(k.shape[-2], is_causal, i1)
    scores = torch.matmul(q[..., i0:i1, :], k[..., :cols, :].transpose(-1, -2))
    valid = None
    mb = None
    if mask is not None:
        mb = mask if mask.shape[-2] == 1 else mask[..., i0:i1, :]
        mb = mb if mask.shape[-1] == 1 else mb[..., :cols]
        if mb.dtype == torch.bool:
            valid = mb
        else:
            scores = scores.add_(mb)
            valid = mb != -math.inf
    if is_causal and i0 + 1 < cols:
        rows = torch.arange(i0, i1, device=q.device).unsqueeze(-1)
        causal = torch.arange(cols, device=q.device) <= rows
        valid = causal if valid is None else valid & causal
    if valid is not None:
        scores = scores.masked_fill_(~valid, -math.inf)
    return scores, valid, mb


def _masked_thresholds(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    mb: torch.Tensor | None,
    i0: int,
    i1: int,
    cols: int,
) -> torch.Tensor:
    """Valid score means of queries ``i0:i1`` (keys ``:cols``) under a mask: mask @ k."""
    shape = (*q.shape[:-2], i1 - i0, cols)
    weights = valid.expand(shape).to(q.dtype)
    count = weights.sum(-1)
    total = (q[..., i0:i1, :] * torch.matmul(weights, k[..., :cols, :])).sum(-1)
    if mb is not None and mb.dtype != torch.bool:
        total = total + torch.where(valid, mb, 0.0).expand(shape).sum(-1)
    return total / torch.where(count == 0.0, 1.0, count)


def _row_max(scores: torch.Tensor) -> torch.Tensor:
    """Row maxima over the valid (finite-masked) scores; 0 for a row with none."""
    row_max = scores.amax(-1, keepdim=True)
    return torch.where(row_max == -math.inf, 0.0, row_max)


def _probabilities(
    scores: torch.Tensor, cut: torch.Tensor, empty: torch.Tensor | None, log_off: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DESIGN §4 probabilities of one block, ``(probs, below)``; works in place on ``scores``.

    ``cut`` is ``min(threshold, row max)`` per row, so ``s < cut`` is "below the
    threshold and not the maximum": the row maximum is always in the support.
    Masked scores are -inf, below every cut. Keys below get ``log(eps/(1+eps))``
    added (or -inf), and one fused softmax normalizes relative to the support;
    ``empty`` marks rows without a valid key, whose softmax is 0/0.
    """
    below = scores < cut
    if log_off == -math.inf:
        scores = scores.masked_fill_(below, -math.inf)
    else:
        scores = torch.where(below, scores + log_off, scores)
    probs = torch.softmax(scores, -1)
    return (probs if empty is None else probs.masked_fill_(empty, 0.0)), below


def _log_off(off: float) -> float:
    return math.log(off) if off > 0.0 else -math.inf


def _kernel_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    epsilon: float,
) -> torch.Tensor:
    """The output, each block's probabilities from the fused row kernel."""
    length, keys = q.shape[-2], k.shape[-2]
    step = _block_rows(length, keys, math.prod(q.shape[:-2]))
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    for i0 in range(0, length, step):
        i1 = min(length, i0 + step)
        scores, _valid, _mb = _block(q, k, mask, is_causal, i0, i1)
        probs = _kernel_probabilities(scores, epsilon)
        out[..., i0:i1, :] = torch.matmul(probs, v[..., : scores.shape[-1], :])
    return out


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    off: float,
    need_sizes: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Output, support sizes, per-query cut and empty-row flags (None without a mask)."""
    length, keys = q.shape[-2], k.shape[-2]
    step = _block_rows(length, keys, math.prod(q.shape[:-2]))
    thresholds = None if mask is not None else _thresholds_from_keys(q, k, is_causal)
    log_off = _log_off(off)
    outs, sizes, cuts, empties = [], [], [], []
    for i0 in range(0, length, step):
        i1 = min(length, i0 + step)
        scores, valid, mb = _block(q, k, mask, is_causal, i0, i1)
        if thresholds is None:
            assert valid is not None
            thr = _masked_thresholds(q, k, valid, mb, i0, i1, scores.shape[-1])
        else:
            thr = thresholds[..., i0:i1]
        row_max = scores.amax(-1, keepdim=True)
        # Only a mask can leave a query without keys (causal rows always see key 0).
        empty = None if mask is None else row_max == -math.inf
        cut = torch.minimum(thr.unsqueeze(-1), row_max)
        probs, below = _probabilities(scores, cut, empty, log_off)
        cols = scores.shape[-1]
        outs.append(torch.matmul(probs, v[..., :cols, :]))
        if need_sizes:
            size = cols - below.sum(-1)
            sizes.append(size if empty is None else size.masked_fill_(empty[..., 0], 0))
        cuts.append(cut)
        if empty is not None:
            empties.append(empty)
    out = torch.cat(outs, -2)
    size = torch.cat(sizes, -1) if need_sizes else out.new_zeros((0,), dtype=torch.int64)
    return out, size, torch.cat(cuts, -2), (torch.cat(empties, -2) if empties else None)


class _EvAttention(torch.autograd.Function):
    """ev-attention with the flash-style closed-form backward (see the module docstring).

    Takes the already scaled queries, so ``dq = dS k`` and ``dk = dSᵀ q``.
    """

    # torch.func.vmap runs forward and backward under vmap (the torch-op blocks).
    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        epsilon: float,
        need_sizes: bool,
        kernel: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if kernel:
            out = _kernel_forward(q, k, v, mask, is_causal, epsilon)
            # No cut: the backward recomputes the support with the kernel.
            return out, out.new_zeros((0,), dtype=torch.int64), out.new_zeros((0,)), None
        return _forward(q, k, v, mask, is_causal, epsilon / (1.0 + epsilon), need_sizes)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        q, k, v, mask, is_causal, epsilon, _need_sizes, _kernel = inputs
        out, sizes, cut, empty = output
        ctx.save_for_backward(q, k, v, mask, out, cut, empty)
        ctx.is_causal, ctx.epsilon = is_causal, epsilon
        ctx.mark_non_differentiable(*(t for t in (sizes, cut, empty) if t is not None))

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor, *_unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, mask, out, cut, empty = ctx.saved_tensors
        is_causal, epsilon = ctx.is_causal, ctx.epsilon
        log_off = _log_off(epsilon / (1.0 + epsilon))
        # The forward left no cut when the kernel gave its probabilities.
        kernel = cut.dim() == 1
        d_out = d_out.to(q.dtype)
        length, keys = q.shape[-2], k.shape[-2]
        step = _block_rows(length, keys, math.prod(q.shape[:-2]))
        # rowsum(dO * O), the inner product of the softmax-Jacobian form.
        inner = (d_out * out).sum(-1, keepdim=True)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for i0 in range(0, length, step):
            i1 = min(length, i0 + step)
            scores, _valid, _mb = _block(q, k, mask, is_causal, i0, i1)
            cols = scores.shape[-1]
            if kernel:
                probs = _kernel_probabilities(scores, epsilon)
            else:
                empty_b = None if empty is None else empty[..., i0:i1, :]
                probs, _below = _probabilities(scores, cut[..., i0:i1, :], empty_b, log_off)
            do_b = d_out[..., i0:i1, :]
            dv[..., :cols, :] += torch.matmul(probs.transpose(-1, -2), do_b)
            d_scores = torch.matmul(do_b, v[..., :cols, :].transpose(-1, -2))
            d_scores = d_scores.sub_(inner[..., i0:i1, :]).mul_(probs)
            dq[..., i0:i1, :] = torch.matmul(d_scores, k[..., :cols, :])
            dk[..., :cols, :] += torch.matmul(d_scores.transpose(-1, -2), q[..., i0:i1, :])
        return dq, dk, dv, None, None, None, None, None


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
    need_sizes: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ev-attention on validated tensors of one floating dtype; ``(out, support size)``.

    Batch dimensions are broadcast here (``expand``, so autograd sums the
    gradients back); half precision runs in float32.
    """
    dtype = query.dtype
    acc = _acc(dtype)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])  # type: ignore[no-untyped-call]
    q = query.to(acc).expand(*batch, *query.shape[-2:])
    k = key.to(acc).expand(*batch, *key.shape[-2:])
    v = value.to(acc).expand(*batch, *value.shape[-2:])
    if mask is not None:
        while mask.dim() < 2:
            mask = mask.unsqueeze(0)
        if mask.dtype != torch.bool:
            mask = mask.to(acc)
    q = q * scale
    # Decided here, outside the Function: under torch.func its forward sees plain
    # tensors but its backward wrapped ones, which the kernel cannot read.
    kernel = _kernel_applies(q, need_sizes)
    out, sizes, _cut, _empty = _EvAttention.apply(  # type: ignore[no-untyped-call]
        q, k, v, mask, is_causal, epsilon, need_sizes, kernel
    )
    return out.to(dtype), sizes


def ev_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
    return_support: bool,
    xp: Any,
) -> Any:
    """The dispatcher's entry: ev-attention of validated torch tensors."""
    out, sizes = attention(query, key, value, mask, is_causal, scale, epsilon, return_support)
    return (out, sizes) if return_support else out


def probabilities(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
) -> torch.Tensor:
    """The dense ``(..., L, S)`` attention weights of :func:`attention`, differentiable.

    Only for callers that ask for the weights (``need_weights=True``): it forms
    the whole score matrix. Same support and weights as the blocked path; the
    threshold and row maximum carry no gradient (the Jacobian is ``p(δ - p)``).
    """
    q = q * scale
    off = epsilon / (1.0 + epsilon)
    while mask is not None and mask.dim() < 2:
        mask = mask.unsqueeze(0)
    scores, valid, mb = _block(q, k, mask, is_causal, 0, q.shape[-2])
    with torch.no_grad():
        if mask is None:
            thr = _thresholds_from_keys(q, k, is_causal)
        else:
            assert valid is not None
            thr = _masked_thresholds(q, k, valid, mb, 0, q.shape[-2], scores.shape[-1])
        row_max = _row_max(scores)
        below = scores < torch.minimum(thr.unsqueeze(-1), row_max)
        # Tensors of the scores' dtype: a bare Python float would be a float32 scalar.
        factor = torch.where(below, scores.new_full((), off), scores.new_full((), 1.0))
    weights = torch.exp(scores - row_max) * factor
    total = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(total == 0.0, 1.0, total)
    # A causal block sees keys j < L only; the keys after are masked for every query.
    return torch.nn.functional.pad(probs, (0, k.shape[-2] - probs.shape[-1]))
