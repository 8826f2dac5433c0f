r"""JAX ev-attention: blocked over queries with ``lax.map``/``lax.scan``, closed-form VJP.

Registered in ``_dispatch.ADAPTER_MODULES["jax"]``. The same recipe as the
torch path (``adapters/torch/attention.py``) and the array-API one
(``evsoftmax._attention``): the threshold of each query comes from the key
identity before any score is formed, scores are formed one block of queries at
a time (``lax.map`` in the forward, ``lax.scan`` in the backward, so memory is
O(L + S) per (batch, head) beyond inputs and output), the row maximum is
always in the support, and the backward is the flash-attention one with the
support indicator, ``dS = P * (dP - rowsum(dO * O))``, through a
``jax.custom_vjp``. Works under ``jit``, ``vmap`` and ``grad``. A boolean mask
is used as the additive mask ``0 / -inf`` (the same valid set and a zero bias
mean); the mask receives no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ..._attention import block_rows as _block_rows

__all__ = ["ev_attention"]


def _blocks(x: jax.Array, step: int, count: int) -> jax.Array:
    """``(..., L, F)`` -> ``(count, ..., step, F)``, padding L with zeros."""
    pad = count * step - x.shape[-2]
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)])
    x = x.reshape(*x.shape[:-2], count, step, x.shape[-1])
    return jnp.moveaxis(x, -3, 0)


def _unblocks(x: jax.Array, length: int) -> jax.Array:
    """Inverse of :func:`_blocks`: ``(count, ..., step, F)`` -> ``(..., L, F)``."""
    x = jnp.moveaxis(x, 0, -3)
    return x.reshape(*x.shape[:-3], -1, x.shape[-1])[..., :length, :]


class _Plan:
    """Static description of one call: shapes, block size, which threshold form applies."""

    def __init__(self, q: jax.Array, k: jax.Array, bias: jax.Array | None, is_causal: bool):
        self.length, self.keys = q.shape[-2], k.shape[-2]
        self.step = _block_rows(self.length, self.keys, math.prod(q.shape[:-2]))
        self.count = -(-self.length // self.step)
        self.is_causal = is_causal
        self.bias_rows = bias is not None and bias.shape[-2] != 1


def _scores(
    plan: _Plan, qb: jax.Array, k: jax.Array, bb: jax.Array | None, index: jax.Array
) -> tuple[jax.Array, jax.Array | None]:
    """Scores of one block (masked ones -inf) and their validity (None: all valid)."""
    scores = qb @ jnp.swapaxes(k, -1, -2)
    valid = None
    if bb is not None:
        scores = scores + bb
        valid = jnp.broadcast_to(bb != -jnp.inf, scores.shape)
    if plan.is_causal:
        rows = index * plan.step + jnp.arange(plan.step)
        causal = jnp.arange(plan.keys)[None, :] <= rows[:, None]
        valid = causal if valid is None else valid & causal
    if valid is not None:
        scores = jnp.where(valid, scores, -jnp.inf)
    return scores, valid


def _threshold(
    plan: _Plan,
    qb: jax.Array,
    k: jax.Array,
    bb: jax.Array | None,
    valid: jax.Array | None,
    prefix: tuple[jax.Array, jax.Array] | None,
) -> jax.Array:
    """Valid score means of one block (keepdims): (q·Σk + Σb) divided once by the count."""
    if valid is None:
        return (qb @ k.sum(-2)[..., None]) / plan.keys
    if prefix is not None and bb is None:
        # Causal only: prefix sums of the keys, query i sees min(i + 1, S) keys.
        count = jnp.minimum(jnp.arange(plan.step) + 1 + prefix[1] * plan.step, plan.keys).astype(
            qb.dtype
        )
        return (qb * prefix[0]).sum(-1, keepdims=True) / count[:, None]
    weights = valid.astype(qb.dtype)
    count = weights.sum(-1, keepdims=True)
    total = (qb * (weights @ k)).sum(-1, keepdims=True)
    if bb is not None:
        total = total + jnp.where(valid, bb, 0.0).sum(-1, keepdims=True)
    return total / jnp.where(count == 0.0, 1.0, count)


def _weights(scores: jax.Array, cut: jax.Array, shift: jax.Array, off: float) -> jax.Array:
    """DESIGN §4 weights: exp(s - shift) where s >= cut (min(threshold, row max)), off* it below."""
    exp = jnp.exp(scores - shift)
    below = scores < cut
    return jnp.where(below, 0.0, exp) if off == 0.0 else jnp.where(below, off * exp, exp)


def _prefix(plan: _Plan, k: jax.Array) -> jax.Array:
    """Causal key sums ``sum_{j <= min(i, S-1)} k_j`` for every query, shape (..., L, E)."""
    rows = jnp.minimum(jnp.arange(plan.length), plan.keys - 1)
    return jnp.take(jnp.cumsum(k, axis=-2), rows, axis=-2)


def _forward(
    plan: _Plan, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, off: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Output, support sizes and per-query (cut, log-normalizer) from blocks of queries."""
    qs = _blocks(q, plan.step, plan.count)
    bs = _blocks(bias, plan.step, plan.count) if bias is not None and plan.bias_rows else None
    causal_only = plan.is_causal and bias is None
    ps = _blocks(_prefix(plan, k), plan.step, plan.count) if causal_only else None

    def one(args: tuple[Any, ...]) -> tuple[jax.Array, ...]:
        index, qb, bb, pb = args
        bb = bias if bb is None else bb
        scores, valid = _scores(plan, qb, k, bb, index)
        thr = _threshold(plan, qb, k, bb, valid, None if pb is None else (pb, index))
        row_max = scores.max(-1, keepdims=True)
        row_max = jnp.where(row_max == -jnp.inf, 0.0, row_max)
        cut = jnp.minimum(thr, row_max)
        weights = _weights(scores, cut, row_max, off)
        total = weights.sum(-1, keepdims=True)
        total = jnp.where(total == 0.0, 1.0, total)
        out = (weights @ v) / total
        size = (scores >= cut).sum(-1, keepdims=True)
        return out, size, cut, row_max + jnp.log(total)

    outs = jax.lax.map(one, (jnp.arange(plan.count), qs, bs, ps))
    out, size, cut, lse = (_unblocks(x, plan.length) for x in outs)
    return out, size[..., 0], cut, lse


def _backward(
    plan: _Plan,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    off: float,
    out: jax.Array,
    cut: jax.Array,
    lse: jax.Array,
    d_out: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The flash-attention backward with the support indicator, scanned over query blocks."""
    inner = (d_out * out).sum(-1, keepdims=True)
    blocks = [_blocks(x, plan.step, plan.count) for x in (q, d_out, inner, cut, lse)]
    bs = _blocks(bias, plan.step, plan.count) if bias is not None and plan.bias_rows else None

    def one(carry: tuple[jax.Array, jax.Array], args: tuple[Any, ...]) -> tuple[Any, jax.Array]:
        dk, dv = carry
        index, qb, dob, ib, cb, lb, bb = args
        bb = bias if bb is None else bb
        scores, _ = _scores(plan, qb, k, bb, index)
        probs = _weights(scores, cb, lb, off)
        dv = dv + jnp.swapaxes(probs, -1, -2) @ dob
        d_scores = probs * (dob @ jnp.swapaxes(v, -1, -2) - ib)
        dk = dk + jnp.swapaxes(d_scores, -1, -2) @ qb
        return (dk, dv), d_scores @ k

    init = (jnp.zeros_like(k), jnp.zeros_like(v))
    (dk, dv), dqs = jax.lax.scan(one, init, (jnp.arange(plan.count), *blocks, bs))
    return _unblocks(dqs, plan.length), dk, dv


def _attention(
    q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, is_causal: bool, off: float
) -> tuple[jax.Array, jax.Array]:
    """ev-attention of pre-scaled queries with a custom VJP; ``(out, support sizes)``."""
    plan = _Plan(q, k, bias, is_causal)

    @jax.custom_vjp
    def run(q: jax.Array, k: jax.Array, v: jax.Array, bias: Any) -> tuple[jax.Array, jax.Array]:
        out, size, _, _ = _forward(plan, q, k, v, bias, off)
        return out, size

    def fwd(q: jax.Array, k: jax.Array, v: jax.Array, bias: Any) -> tuple[Any, Any]:
        out, size, cut, lse = _forward(plan, q, k, v, bias, off)
        return (out, size), (q, k, v, bias, out, cut, lse)

    def bwd(res: tuple[Any, ...], cotangents: tuple[Any, Any]) -> tuple[Any, ...]:
        q, k, v, bias, out, cut, lse = res
        dq, dk, dv = _backward(plan, q, k, v, bias, off, out, cut, lse, cotangents[0])
        return dq, dk, dv, None if bias is None else jnp.zeros_like(bias)

    run.defvjp(fwd, bwd)
    return run(q, k, v, bias)


def ev_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
    return_support: bool,
    xp: Any,
) -> Any:
    """The dispatcher's entry: ev-attention of validated JAX arrays."""
    dtype = query.dtype
    acc = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype
    batch = jnp.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    q, k, v = (
        jnp.broadcast_to(a.astype(acc), (*batch, *a.shape[-2:])) for a in (query, key, value)
    )
    bias = None
    if mask is not None:
        mask = jnp.asarray(mask)
        while mask.ndim < 2:
            mask = mask[None]
        if mask.dtype == jnp.bool_:
            mask = jnp.where(mask, jnp.zeros((), acc), -jnp.inf)
        bias = mask.astype(acc)
        shape = (*bias.shape[:-1], k.shape[-2])
        bias = jnp.broadcast_to(bias, (1,) * (len(batch) + 2 - bias.ndim) + shape)
    out, size = _attention(q * scale, k, v, bias, is_causal, epsilon / (1.0 + epsilon))
    out = out.astype(dtype)
    if not return_support:
        return out
    # The default integer dtype: int64 with jax_enable_x64, else int32.
    return out, size.astype(jnp.asarray(0).dtype)
