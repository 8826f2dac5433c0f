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
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["attention", "ev_attention"]

# Scores formed at once by one query block (all batch entries together).
_BLOCK_ELEMENTS = 1 << 19


def _block_rows(length: int, keys: int, batch: int) -> int:
    return max(1, min(length, _BLOCK_ELEMENTS // max(1, keys * batch)))


def _acc(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision, else the dtype itself."""
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


def _thresholds_from_keys(
    q: torch.Tensor, k: torch.Tensor, is_causal: bool, scale: float
) -> torch.Tensor:
    """Valid score means ``(..., L)`` without a mask: scale·q·Σk divided once by the count."""
    length, keys = q.shape[-2], k.shape[-2]
    if not is_causal:
        total = torch.matmul(q, k.sum(-2).unsqueeze(-1)).squeeze(-1)
        return total * scale / keys
    # Prefix sums of the keys: query i sees keys 0..min(i, S-1).
    prefix = k.cumsum(-2)
    rows = torch.arange(length, device=q.device).clamp(max=keys - 1)
    count = (rows + 1).to(q.dtype)
    return (q * prefix.index_select(-2, rows)).sum(-1) * scale / count


def _block(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    i0: int,
    i1: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Scores of queries ``i0:i1`` (masked ones ``-inf``), their validity, and the mask block."""
    scores = torch.matmul(q[..., i0:i1, :], k.transpose(-1, -2)).mul_(scale)
    valid = None
    mb = None
    if mask is not None:
        mb = mask[..., i0:i1, :] if mask.shape[-2] != 1 else mask
        if mb.dtype == torch.bool:
            valid = mb
        else:
            scores = scores.add_(mb)
            valid = mb != -math.inf
    if is_causal:
        rows = torch.arange(i0, i1, device=q.device).unsqueeze(-1)
        causal = torch.arange(k.shape[-2], device=q.device) <= rows
        valid = causal if valid is None else valid & causal
    if valid is not None:
        scores = scores.masked_fill_(~valid, -math.inf)
    return scores, valid, mb


def _masked_thresholds(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    mb: torch.Tensor | None,
    scale: float,
    i0: int,
    i1: int,
) -> torch.Tensor:
    """Valid score means of queries ``i0:i1`` under a mask: one product of the mask with k."""
    shape = (*q.shape[:-2], i1 - i0, k.shape[-2])
    weights = valid.expand(shape).to(q.dtype)
    count = weights.sum(-1)
    total = (q[..., i0:i1, :] * torch.matmul(weights, k)).sum(-1) * scale
    if mb is not None and mb.dtype != torch.bool:
        total = total + torch.where(valid, mb, 0.0).expand(shape).sum(-1)
    return total / torch.where(count == 0.0, 1.0, count)


def _weights(
    scores: torch.Tensor, threshold: torch.Tensor, row_max: torch.Tensor, off: float
) -> torch.Tensor:
    """DESIGN §4 weights: exp(s - max) on the support (s >= thr, or the max), eps/(1+eps) of it off."""
    keep = (scores >= threshold.unsqueeze(-1)) | (scores == row_max)
    weights = (scores - row_max).exp_()
    if off == 0.0:
        return weights.mul_(keep)
    return torch.where(keep, weights, weights * off)


def _row_max(scores: torch.Tensor) -> torch.Tensor:
    """Row maxima over the valid (finite-masked) scores; 0 for a row with none."""
    row_max = scores.amax(-1, keepdim=True)
    return torch.where(row_max == -math.inf, 0.0, row_max)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    off: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, support sizes, and the per-query (row max, threshold, normalizer)."""
    length, keys = q.shape[-2], k.shape[-2]
    step = _block_rows(length, keys, math.prod(q.shape[:-2]))
    thresholds = None if mask is not None else _thresholds_from_keys(q, k, is_causal, scale)
    outs, sizes, maxes, thrs, totals = [], [], [], [], []
    for i0 in range(0, length, step):
        i1 = min(length, i0 + step)
        scores, valid, mb = _block(q, k, mask, is_causal, scale, i0, i1)
        if thresholds is None:
            assert valid is not None
            thr = _masked_thresholds(q, k, valid, mb, scale, i0, i1)
        else:
            thr = thresholds[..., i0:i1]
        row_max = _row_max(scores)
        weights = _weights(scores, thr, row_max, off)
        total = weights.sum(-1, keepdim=True)
        total = torch.where(total == 0.0, 1.0, total)
        outs.append(torch.matmul(weights, v).div_(total))
        support = (scores >= thr.unsqueeze(-1)) | (scores == row_max)
        if valid is not None:
            support = support & valid
        sizes.append(support.sum(-1))
        maxes.append(row_max)
        thrs.append(thr)
        totals.append(total)
    return (
        torch.cat(outs, -2),
        torch.cat(sizes, -1),
        torch.cat(maxes, -2),
        torch.cat(thrs, -1),
        torch.cat(totals, -2),
    )


class _EvAttention(torch.autograd.Function):
    """ev-attention with the flash-style closed-form backward (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        scale: float,
        off: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, sizes, row_max, thr, total = _forward(q, k, v, mask, is_causal, scale, off)
        ctx.save_for_backward(q, k, v, mask, out, row_max, thr, total)
        ctx.is_causal, ctx.scale, ctx.off = is_causal, scale, off
        ctx.mark_non_differentiable(sizes)
        return out, sizes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_out: torch.Tensor, _d_sizes: Any) -> tuple[Any, ...]:
        q, k, v, mask, out, row_max, thr, total = ctx.saved_tensors
        is_causal, scale, off = ctx.is_causal, ctx.scale, ctx.off
        d_out = d_out.to(q.dtype)
        length, keys = q.shape[-2], k.shape[-2]
        step = _block_rows(length, keys, math.prod(q.shape[:-2]))
        # rowsum(dO * O), the inner product of the softmax-Jacobian form.
        inner = (d_out * out).sum(-1, keepdim=True)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for i0 in range(0, length, step):
            i1 = min(length, i0 + step)
            scores, _valid, _mb = _block(q, k, mask, is_causal, scale, i0, i1)
            probs = _weights(scores, thr[..., i0:i1], row_max[..., i0:i1, :], off)
            probs = probs.div_(total[..., i0:i1, :])
            do_b = d_out[..., i0:i1, :]
            dv += torch.matmul(probs.transpose(-1, -2), do_b)
            d_scores = torch.matmul(do_b, v.transpose(-1, -2)).sub_(inner[..., i0:i1, :])
            d_scores = d_scores.mul_(probs).mul_(scale)
            dq[..., i0:i1, :] = torch.matmul(d_scores, k)
            dk += torch.matmul(d_scores.transpose(-1, -2), q[..., i0:i1, :])
        return dq, dk, dv, None, None, None, None


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ev-attention on validated tensors of one floating dtype; ``(out, support size)``.

    Batch dimensions are broadcast here (``expand``, so autograd sums the
    gradients back); half precision runs in float32.
    """
    dtype = query.dtype
    acc = _acc(dtype)
    batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    q = query.to(acc).expand(*batch, *query.shape[-2:])
    k = key.to(acc).expand(*batch, *key.shape[-2:])
    v = value.to(acc).expand(*batch, *value.shape[-2:])
    if mask is not None:
        while mask.dim() < 2:
            mask = mask.unsqueeze(0)
        if mask.dtype != torch.bool:
            mask = mask.to(acc)
    off = epsilon / (1.0 + epsilon)
    out, sizes = _EvAttention.apply(q, k, v, mask, is_causal, scale, off)
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
    out, sizes = attention(query, key, value, mask, is_causal, scale, epsilon)
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
    length = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    valid = None
    if mask is not None:
        while mask.dim() < 2:
            mask = mask.unsqueeze(0)
        if mask.dtype == torch.bool:
            valid = mask
        else:
            scores = scores + mask
            valid = mask != -math.inf
    if is_causal:
        causal = torch.ones(length, k.shape[-2], dtype=torch.bool, device=q.device).tril()
        valid = causal if valid is None else valid & causal
    if valid is not None:
        scores = scores.masked_fill(~valid, -math.inf)
    with torch.no_grad():
        if mask is None:
            thr = _thresholds_from_keys(q, k, is_causal, scale)
        else:
            assert valid is not None
            mb = mask if mask.dtype != torch.bool else None
            thr = _masked_thresholds(q, k, valid, mb, scale, 0, length)
        row_max = _row_max(scores)
        keep = (scores >= thr.unsqueeze(-1)) | (scores == row_max)
        factor = torch.where(keep, 1.0, epsilon / (1.0 + epsilon))
    weights = torch.exp(scores - row_max) * factor
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total == 0.0, 1.0, total)
