# mypy: disable-error-code="no-untyped-def, untyped-decorator, no-untyped-call"
r"""The CUDA path of torch ev-attention: flash-style Triton kernels, forward and backward.

One program per block of ``BLOCK_M`` queries (forward, ``dq``) or ``BLOCK_N``
keys (``dk``, ``dv``) of one (batch, head); the ``L x S`` matrix is never
formed: memory beyond inputs and output is O(L) per (batch, head) (the row
statistics) plus the key sums, ``(E,)``, or under a causal mask without
``attn_mask`` the key prefix sums ``(S, E)`` in float32.

Forward, per query row (DESIGN §4 "Attention"):

* the threshold is the mean of the valid scores. Without a mask it comes from
  the key identity ``mean_j s_ij = scale * q_i · mean_j k_j`` (prefix means when
  causal): the kernel takes the key sums (prefix sums) and forms ``q·Σk``
  itself, in float32, divided once by the count; with a mask it sums the valid
  scores in a first sweep over the keys (the mask decides which keys count);
* one sweep with a running maximum and normaliser (online softmax) weights the
  keys ``>= threshold`` by 1 and the others by ``eps/(1+eps)`` (added as its log,
  ``-inf`` for ``eps = 0``), as the CPU adapter's ``_probabilities`` does;
* the row maximum is always in the support: a row whose maximum ends up below
  its (rounded) threshold, which only near-constant rows reach, is swept again
  with the cut ``min(threshold, row max)``; only blocks holding such a row pay;
* a query with no valid key has normaliser 0 and outputs zeros; its
  log-normaliser is stored as ``+inf`` so the backward's probabilities are 0.

Backward: the flash-attention backward with the support indicator,
``dS = P * (dP - rowsum(dO * O))``, ``dq = scale·dS k``, ``dk = scale·dSᵀ q``,
``dv = Pᵀ dO``, with ``P`` recomputed from the stored cut and log-normaliser in
the same tiles as the forward (the same dot on the same tiles gives the same
scores, so the support is the forward's). Two kernels, one over key blocks
(``dk``, ``dv``) and one over query blocks (``dq``): no atomics, deterministic.

Half precision loads half tiles and accumulates in float32 (the ``P V`` and
``dSᵀ q`` products take ``P``/``dS`` rounded to the input dtype, as flash
attention does); float32 uses IEEE dots (no TF32); float64 runs in float64 (the
interpreter tests use it; on a GPU float64 goes to the CPU adapter's algorithm).

The kernels also run on CPU tensors under ``TRITON_INTERPRET=1``, which is how
the test suite checks them without a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from .triton import _float32_pair

__all__ = ["MAX_HEAD_DIM", "attention", "supports"]

MAX_HEAD_DIM = 256
# (BLOCK_M, BLOCK_N, num_warps) by padded head dimension on a GPU; the same
# tiles in all three kernels (see the module docstring).
GPU_BLOCKS = {64: (64, 64, 4), 128: (64, 32, 4), 256: (32, 32, 4)}
# Tiles under the interpreter: small, so that small test shapes span several.
INTERPRETER_BLOCKS = (16, 16, 1)
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supports(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether the kernels serve tensors of this dtype and these head dimensions.

    float64 and head dimensions above :data:`MAX_HEAD_DIM` stay on the blocked
    torch algorithm (which also runs on CUDA).
    """
    return query.dtype in _GPU_DTYPES and max(query.shape[-1], value.shape[-1]) <= MAX_HEAD_DIM


def _acc(dtype: torch.dtype) -> Any:
    return tl.float64 if dtype == torch.float64 else tl.float32


# --- shared tile code -------------------------------------------------------------


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """``a @ b`` accumulated in float32 (or float64); IEEE: no TF32 rounding of float32 inputs."""
    if IEEE == 2:
        # Triton's interpreter mishandles bfloat16 dots; their products are exact in float32.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _load_tile(PTR, rows, n_rows, n_cols, BLOCK_C: tl.constexpr):
    """Rows ``rows`` of a contiguous ``(n_rows, n_cols)`` matrix, zero-padded to BLOCK_C columns."""
    cols = tl.arange(0, BLOCK_C)
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(PTR + rows[:, None] * n_cols + cols[None, :], mask=inside, other=0.0)


@triton.jit
def _scores(
    q, k, MASK, mask_base, msl, mss, offs_m, offs_n, L, S, scale,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Scores of one tile (masked ones -inf) and their validity; every kernel forms them here."""
    s = _dot(q, tl.trans(k), IEEE).to(ACC) * scale
    inside = (offs_m[:, None] < L) & (offs_n[None, :] < S)
    valid = inside
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    if HAS_MASK:
        where = MASK + mask_base + offs_m[:, None].to(tl.int64) * msl + offs_n[None, :] * mss
        mv = tl.load(where, mask=inside, other=0)
        if MASK_BOOL:
            valid = valid & (mv != 0)
        else:
            mv = mv.to(ACC)
            s = s + mv
            valid = valid & (mv != float("-inf"))
    return tl.where(valid, s, float("-inf")), valid


@triton.jit
def _constants(
    scale_hi, scale_lo, log_off_hi, log_off_lo, MOFF, z, HAS_MASK: tl.constexpr, ACC: tl.constexpr
):
    """The scale and log(eps/(1+eps)) from their float32 pairs, and the mask offset of slice z."""
    mask_base = 0
    if HAS_MASK:
        mask_base = tl.load(MOFF + z)
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    return scale, tl.cast(log_off_hi, ACC) + tl.cast(log_off_lo, ACC), mask_base


@triton.jit
def _weighted(s, valid, cut, log_off):
    """Scores with the log weight added: unchanged in the support, + log(eps/(1+eps)) below."""
    return tl.where(valid & (s >= cut[:, None]), s, s + log_off)


# --- forward ----------------------------------------------------------------------


@triton.jit
def _forward_sweep(
    q, K, V, MASK, mask_base, msl, mss, offs_m, cut, n_end, L, S, E, EV, scale, log_off,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, ACC: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_EV: tl.constexpr,
):  # fmt: skip
    """One online-softmax sweep over the keys with the cut ``cut``: (acc, norm, max, size)."""
    m = tl.full([BLOCK_M], float("-inf"), ACC)
    norm = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_EV], ACC)
    size = tl.zeros([BLOCK_M], tl.int32)
    for n0 in range(0, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(K, offs_n, S, E, BLOCK_E)
        s, valid = _scores(
            q, k, MASK, mask_base, msl, mss, offs_m, offs_n, L, S, scale,
            HAS_MASK, MASK_BOOL, CAUSAL, ACC, IEEE,
        )  # fmt: skip
        size += tl.sum((valid & (s >= cut[:, None])).to(tl.int32), 1)
        m_new = tl.maximum(m, tl.max(s, 1))
        # A row without a valid key so far keeps 0 as its reference: exp(-inf - 0) = 0.
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - ref)
        p = tl.exp(_weighted(s, valid, cut, log_off) - ref[:, None])
        norm = norm * alpha + tl.sum(p, 1)
        v = _load_tile(V, offs_n, S, EV, BLOCK_EV)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE).to(ACC)
        m = m_new
    return acc, norm, m, size


@triton.jit
def _key_mean_thresholds(
    KSUM, z, q, offs_m, L, S, E, scale, CAUSAL: tl.constexpr, ACC: tl.constexpr,
    BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Valid score means without a mask: ``scale * q·Σk`` divided once by the key count.

    ``KSUM`` holds the key sums ``(Z, E)``, or their prefix sums ``(Z, S, E)`` when
    causal (query ``i`` sees keys ``0..min(i, S-1)``).
    """
    cols = tl.arange(0, BLOCK_E)
    if CAUSAL:
        rows = tl.minimum(offs_m, S - 1)
        inside = (offs_m[:, None] < L) & (cols[None, :] < E)
        where = KSUM + z * S * E + rows[:, None] * E + cols[None, :]
        sums = tl.load(where, mask=inside, other=0.0)
        return tl.sum(q.to(ACC) * sums, 1) * scale / (rows + 1).to(ACC)
    sums = tl.load(KSUM + z * E + cols, mask=cols < E, other=0.0)
    return tl.sum(q.to(ACC) * sums[None, :], 1) * scale / S


@triton.jit
def _forward_kernel(
    Q, K, V, KSUM, MASK, MOFF, OUT, LSE, CUT, SIZE, L, S, E, EV, msl, mss,
    scale_hi, scale_lo, log_off_hi, log_off_lo,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, ACC: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_EV: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    Q += z * L * E
    K += z * S * E
    V += z * S * EV
    scale, log_off, mask_base = _constants(
        scale_hi, scale_lo, log_off_hi, log_off_lo, MOFF, z, HAS_MASK, ACC
    )
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_tile(Q, offs_m, L, E, BLOCK_E)
    n_end = S
    if CAUSAL:
        n_end = tl.minimum(S, (pid + 1) * BLOCK_M)
    if HAS_MASK:
        # The mask decides which keys count: the kernel sums the valid scores itself.
        total = tl.zeros([BLOCK_M], ACC)
        count = tl.zeros([BLOCK_M], ACC)
        for n0 in range(0, n_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k = _load_tile(K, offs_n, S, E, BLOCK_E)
            s, valid = _scores(
                q, k, MASK, mask_base, msl, mss, offs_m, offs_n, L, S, scale,
                HAS_MASK, MASK_BOOL, CAUSAL, ACC, IEEE,
            )  # fmt: skip
            total += tl.sum(tl.where(valid, s, 0.0), 1)
            count += tl.sum(valid.to(ACC), 1)
        thr = total / tl.maximum(count, 1.0)
    else:
        thr = _key_mean_thresholds(KSUM, z, q, offs_m, L, S, E, scale, CAUSAL, ACC, BLOCK_E)
    acc, norm, m, size = _forward_sweep(
        q, K, V, MASK, mask_base, msl, mss, offs_m, thr, n_end, L, S, E, EV, scale, log_off,
        HAS_MASK, MASK_BOOL, CAUSAL, ACC, IEEE, BLOCK_M, BLOCK_N, BLOCK_E, BLOCK_EV,
    )  # fmt: skip
    cut = tl.minimum(thr, m)
    # The row maximum must be in the support: rows whose maximum is below the rounded mean.
    redo = (m < thr) & (m > float("-inf"))
    if tl.max(redo.to(tl.int32), 0) > 0:
        acc, norm, m, size = _forward_sweep(
            q, K, V, MASK, mask_base, msl, mss, offs_m, cut, n_end, L, S, E, EV, scale, log_off,
            HAS_MASK, MASK_BOOL, CAUSAL, ACC, IEEE, BLOCK_M, BLOCK_N, BLOCK_E, BLOCK_EV,
        )  # fmt: skip
    out = acc / tl.where(norm > 0, norm, 1.0)[:, None]
    lse = tl.where(norm > 0, m + tl.log(tl.where(norm > 0, norm, 1.0)), float("inf"))
    cols = tl.arange(0, BLOCK_EV)
    rows = offs_m < L
    where = OUT + z * L * EV + offs_m[:, None] * EV + cols[None, :]
    tl.store(where, out.to(OUT.dtype.element_ty), mask=rows[:, None] & (cols[None, :] < EV))
    tl.store(LSE + z * L + offs_m, lse, mask=rows)
    tl.store(CUT + z * L + offs_m, cut, mask=rows)
    tl.store(SIZE + z * L + offs_m, size, mask=rows)


# --- backward ---------------------------------------------------------------------


@triton.jit
def _row_stats(LSE, CUT, DELTA, offs_m, L):
    rows = offs_m < L
    lse = tl.load(LSE + offs_m, mask=rows, other=float("inf"))
    cut = tl.load(CUT + offs_m, mask=rows, other=0.0)
    delta = tl.load(DELTA + offs_m, mask=rows, other=0.0)
    return lse, cut, delta


@triton.jit
def _backward_kv_kernel(
    Q, K, V, DO, LSE, CUT, DELTA, MASK, MOFF, DK, DV, L, S, E, EV, msl, mss,
    scale_hi, scale_lo, log_off_hi, log_off_lo,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, ACC: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_EV: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    Q += z * L * E
    DO += z * L * EV
    K += z * S * E
    V += z * S * EV
    LSE += z * L
    CUT += z * L
    DELTA += z * L
    scale, log_off, mask_base = _constants(
        scale_hi, scale_lo, log_off_hi, log_off_lo, MOFF, z, HAS_MASK, ACC
    )
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_tile(K, offs_n, S, E, BLOCK_E)
    v = _load_tile(V, offs_n, S, EV, BLOCK_EV)
    dk = tl.zeros([BLOCK_N, BLOCK_E], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_EV], ACC)
    m_start = 0
    if CAUSAL:
        # Key j is seen by queries i >= j only; start at the query block holding j.
        m_start = (pid * BLOCK_N // BLOCK_M) * BLOCK_M
    for m0 in range(m_start, L, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = _load_tile(Q, offs_m, L, E, BLOCK_E)
        do = _load_tile(DO, offs_m, L, EV, BLOCK_EV)
        lse, cut, delta = _row_stats(LSE, CUT, DELTA, offs_m, L)
        s, valid = _scores(
            q, k, MASK, mask_base, msl, mss, offs_m, offs_n, L, S, scale,
            HAS_MASK, MASK_BOOL, CAUSAL, ACC, IEEE,
        )  # fmt: skip
        p = tl.exp(_weighted(s, valid, cut, log_off) - lse[:, None])
        dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE).to(ACC)
        dp = _dot(do, tl.trans(v), IEEE).to(ACC)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE).to(ACC)
    dk = dk * scale
    cols_e = tl.arange(0, BLOCK_E)
    cols_v = tl.arange(0, BLOCK_EV)
    keys = offs_n[:, None] < S
    tl.store(
        DK + z * S * E + offs_n[:, None] * E + cols_e[None, :],
        dk.to(DK.dtype.element_ty),
        mask=keys & (cols_e[None, :] < E),
    )
    tl.store(
        DV + z * S * EV + offs_n[:, None] * EV + cols_v[None, :],
        dv.to(DV.dtype.element_ty),
        mask=keys & (cols_v[None, :] < EV),
    )


@triton.jit
def _backward_q_kernel(
    Q, K, V, DO, LSE, CUT, DELTA, MASK, MOFF, DQ, L, S, E, EV, msl, mss,
    scale_hi, scale_lo, log_off_hi, log_off_lo,
    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, CAUSAL: tl.constexpr, ACC: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_EV: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    Q += z * L * E
    DO += z * L * EV
    K += z * S * E
    V += z * S * EV
    scale, log_off, mask_base = _constants(
        scale_hi, scale_lo, log_off_hi, log_off_lo, MOFF, z, HAS_MASK, ACC
    )
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_tile(Q, offs_m, L, E, BLOCK_E)
    do = _load_tile(DO, offs_m, L, EV, BLOCK_EV)
    lse, cut, delta = _row_stats(LSE + z * L, CUT + z * L, DELTA + z * L, offs_m, L)
    dq = tl.zeros([BLOCK_M, BLOCK_E], ACC)
    n_end = S
    if CAUSAL:
        n_end = tl.minimum(S, (pid + 1) * BLOCK_M)
    for n0 in range(0, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(K, offs_n, S, E, BLOCK_E)
        v = _load_tile(V, offs_n, S, EV, BLOCK_EV)
        s, valid = _scores(
            q, k, MASK, mask_base, msl, mss, offs_m, offs_n, L, S, scale,
            HAS_MASK, MASK_BOOL, CAUSAL, ACC, IEEE,
        )  # fmt: skip
        p = tl.exp(_weighted(s, valid, cut, log_off) - lse[:, None])
        dp = _dot(do, tl.trans(v), IEEE).to(ACC)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE).to(ACC)
    dq = dq * scale
    cols = tl.arange(0, BLOCK_E)
    tl.store(
        DQ + z * L * E + offs_m[:, None] * E + cols[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=(offs_m[:, None] < L) & (cols[None, :] < E),
    )


# --- host side --------------------------------------------------------------------


def _blocks(device: torch.device, head: int) -> tuple[int, int, int]:
    if device.type != "cuda":
        return INTERPRETER_BLOCKS
    return GPU_BLOCKS[min(b for b in GPU_BLOCKS if b >= head)]


def _key_sums(k: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """Key sums ``(Z, E)``, or prefix sums ``(Z, S, E)`` when causal, in float32 or float64."""
    acc = torch.float64 if k.dtype == torch.float64 else torch.float32
    return k.cumsum(-2, dtype=acc) if is_causal else k.sum(-2, dtype=acc)


def _mask_args(mask: torch.Tensor | None, batch: tuple[int, ...], length: int, keys: int) -> Any:
    """(mask tensor, per-(batch, head) offsets, row stride, key stride) of a broadcast mask.

    The mask is only expanded (never copied): each flattened batch index gets the
    element offset of its ``(L, S)`` slice, so any broadcast pattern works.
    """
    if mask is None:
        return None, None, 0, 0
    full = mask.expand(*batch, length, keys)
    offsets = torch.zeros(batch, dtype=torch.int64, device=mask.device)
    for dim, (n, stride) in enumerate(zip(batch, full.stride()[:-2], strict=True)):
        shape = [1] * len(batch)
        shape[dim] = n
        offsets = offsets + (torch.arange(n, device=mask.device) * stride).reshape(shape)
    if full.dtype == torch.bool:
        full = full.view(torch.uint8)
    return full, offsets.reshape(-1), full.stride(-2), full.stride(-1)


def _meta(q: torch.Tensor, v: torch.Tensor, mask: Any, is_causal: bool) -> dict[str, Any]:
    block_m, block_n, warps = _blocks(q.device, max(q.shape[-1], v.shape[-1]))
    return {
        "HAS_MASK": mask is not None,
        "MASK_BOOL": mask is not None and mask.dtype == torch.uint8,
        "CAUSAL": is_causal,
        "ACC": _acc(q.dtype),
        # 1: IEEE dots (no TF32); 2: bfloat16 operands widened (the interpreter).
        "IEEE": int(q.dtype in (torch.float32, torch.float64))
        or 2 * int(q.dtype == torch.bfloat16 and q.device.type != "cuda"),
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_E": max(16, triton.next_power_of_2(q.shape[-1])),
        "BLOCK_EV": max(16, triton.next_power_of_2(v.shape[-1])),
        "num_warps": warps,
    }


class _EvAttentionCuda(torch.autograd.Function):
    """ev-attention of contiguous ``(Z, L, E)``, ``(Z, S, E)``, ``(Z, S, Ev)`` tensors."""

    @staticmethod
    def forward(q, k, v, mask, offsets, msl, mss, is_causal, scale, log_off):  # type: ignore[override]
        z, length, _ = q.shape
        keys, values = k.shape[1], v.shape[2]
        meta = _meta(q, v, mask, is_causal)
        out = q.new_empty((z, length, values))
        stats = q.new_empty(
            (2, z, length), dtype=torch.float64 if q.dtype == torch.float64 else torch.float32
        )
        lse, cut = stats[0], stats[1]
        sums = None if mask is not None else _key_sums(k, is_causal)
        sizes = torch.empty((z, length), dtype=torch.int32, device=q.device)
        grid = (triton.cdiv(length, meta["BLOCK_M"]), z)
        _forward_kernel[grid](
            q, k, v, sums, mask, offsets, out, lse, cut, sizes, length, keys, q.shape[2], values,
            msl, mss, *_float32_pair(scale), *_float32_pair(log_off), **meta,
        )  # fmt: skip
        return out, sizes, lse, cut

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        # A separate setup_context lets torch.func transforms (grad, vjp) use the Function.
        q, k, v, mask, offsets, msl, mss, is_causal, scale, log_off = inputs
        out, sizes, lse, cut = output
        ctx.save_for_backward(q, k, v, out, lse, cut, mask, offsets)
        ctx.args = (msl, mss, scale, log_off, _meta(q, v, mask, is_causal))
        ctx.mark_non_differentiable(sizes, lse, cut)

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor, *_unused: Any) -> tuple[Any, ...]:  # type: ignore[override]
        q, k, v, out, lse, cut, mask, offsets = ctx.saved_tensors
        msl, mss, scale, log_off, meta = ctx.args
        d_out = d_out.to(q.dtype).contiguous()
        delta = (d_out.to(lse.dtype) * out.to(lse.dtype)).sum(-1)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        z, length, feats = q.shape
        keys, values = k.shape[1], v.shape[2]
        pairs = (*_float32_pair(scale), *_float32_pair(log_off))
        _backward_kv_kernel[(triton.cdiv(keys, meta["BLOCK_N"]), z)](
            q, k, v, d_out, lse, cut, delta, mask, offsets, dk, dv, length, keys, feats, values,
            msl, mss, *pairs, **meta,
        )  # fmt: skip
        _backward_q_kernel[(triton.cdiv(length, meta["BLOCK_M"]), z)](
            q, k, v, d_out, lse, cut, delta, mask, offsets, dq, length, keys, feats, values,
            msl, mss, *pairs, **meta,
        )  # fmt: skip
        return dq, dk, dv, None, None, None, None, None, None, None


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

    The same contract as :func:`evsoftmax.adapters.torch.attention.attention`
    (batch dimensions broadcast; ``mask`` boolean or additive, broadcastable to
    ``(..., L, S)``; no gradient into the mask), on the Triton kernels.
    """
    length, keys = query.shape[-2], key.shape[-2]
    batch = tuple(torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2]))  # type: ignore[no-untyped-call]

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.expand(*batch, *x.shape[-2:]).reshape(-1, *x.shape[-2:]).contiguous()

    mask_t, offsets, msl, mss = _mask_args(mask, batch, length, keys)
    off = epsilon / (1.0 + epsilon)
    log_off = math.log(off) if off > 0.0 else -math.inf
    out, sizes, _lse, _cut = _EvAttentionCuda.apply(
        flat(query), flat(key), flat(value), mask_t, offsets, msl, mss, is_causal, scale, log_off
    )
    return out.reshape(*batch, length, value.shape[-1]), sizes.to(torch.int64).reshape(
        *batch, length
    )
