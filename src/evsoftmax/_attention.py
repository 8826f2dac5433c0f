r"""ev-attention: scaled dot-product attention with ev-softmax, in O(L + S) memory.

For queries :math:`q_i`, keys :math:`k_j` and values :math:`v_j`, the scores are
:math:`s_{ij} = \text{scale}\, q_i \cdot k_j + b_{ij}` (``b`` an optional
additive mask) over the valid keys :math:`V_i` of query ``i`` (boolean mask
true, additive mask not ``-inf``, ``j <= i`` when causal). Each query row is
then DESIGN §4's ev-softmax recipe, and the output is those probabilities times
the values. The threshold is linear in the keys,

.. math::

    \frac{1}{|V_i|}\sum_{j \in V_i} s_{ij}
    = \frac{\text{scale}\; q_i \cdot \sum_{j \in V_i} k_j + \sum_{j \in V_i} b_{ij}}{|V_i|},

so it is known before any score is formed: one sum of the keys (prefix sums
for a causal mask, one matrix product with a boolean mask), divided once by the
valid count. The scores are then formed one block of queries at a time and
never as the whole ``L x S`` matrix.

This module holds the public function, the argument checks every path shares,
and the array-API implementation (NumPy, array-api-strict, Dask, CuPy, ...).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._core import accumulation_dtype
from ._dispatch import implementation
from ._lib._compat import array_namespace, device
from ._lib._typing import Array, Namespace
from ._lib._validation import broadcast_shapes_to, check_floating, validate_epsilon

__all__ = ["ev_attention"]

# Scores formed at once by one query block (all batch entries together): the
# block's temporaries stay a few MiB whatever L and S are.
_BLOCK_ELEMENTS = 1 << 19


def _batch_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """Broadcast the leading (batch) dimensions of ``shapes``, raising on a mismatch."""
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(ndim):
        sizes = {s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ValueError(
                "query, key and value have batch dimensions that do not broadcast: "
                + ", ".join(str(s) for s in shapes)
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def check_shapes(
    query: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...]
) -> tuple[int, ...]:
    """Check ``(..., L, E)``, ``(..., S, E)``, ``(..., S, Ev)``; return the batch shape."""
    for name, shape in (("query", query), ("key", key), ("value", value)):
        if len(shape) < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions (..., length, features), got shape {shape}"
            )
    if key[-1] != query[-1]:
        raise ValueError(
            f"key must have query's feature size {query[-1]} in its last dimension, "
            f"got key shape {key} for query shape {query}"
        )
    if value[-2] != key[-2]:
        raise ValueError(
            f"value must have key's length {key[-2]} in dimension -2, "
            f"got value shape {value} for key shape {key}"
        )
    return _batch_shape(query[:-2], key[:-2], value[:-2])


def check_scale(scale: Any, features: int) -> float:
    """``scale`` as a finite float (default ``1/sqrt(E)``), else ``ValueError``."""
    if scale is None:
        return 1.0 / math.sqrt(features) if features else 1.0
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale must be a finite float or None, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def check_flag(value: Any, name: str) -> bool:
    """A bool argument, else ``TypeError`` naming it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_mask_shape(mask: tuple[int, ...], target: tuple[int, ...], name: str = "mask") -> None:
    """Raise ``ValueError`` unless a mask of shape ``mask`` broadcasts to ``target``."""
    if not broadcast_shapes_to(mask, target):
        raise ValueError(
            f"{name} with shape {mask} does not broadcast to the scores' shape {target} (..., L, S)"
        )


def _validate_mask(mask: Any, like: Array, target: tuple[int, ...], xp: Namespace) -> Array | None:
    """``mask`` as a boolean or real floating array of ``xp`` broadcasting to ``target``."""
    if mask is None:
        return None
    if not hasattr(mask, "dtype"):
        raise TypeError(f"mask must be a boolean or floating array, got {type(mask).__name__}")
    try:
        mask = xp.asarray(mask, device=device(like))
    except Exception:
        mask = xp.asarray(mask)
    if not (xp.isdtype(mask.dtype, "bool") or xp.isdtype(mask.dtype, "real floating")):
        raise TypeError(f"mask must be a boolean or real floating array, got dtype {mask.dtype}")
    check_mask_shape(tuple(mask.shape), target)
    return mask


def _default_int(xp: Namespace, dev: Any) -> Any:
    info = getattr(xp, "__array_namespace_info__", None)
    return xp.int64 if info is None else info().default_dtypes(device=dev)["integral"]


def block_rows(length: int, keys: int, batch: int, scale: int = 1) -> int:
    """Queries per block so that a block forms about ``scale * _BLOCK_ELEMENTS`` scores.

    The row-kernel paths (NumPy, torch CPU) take ``scale = KERNEL_BLOCK_SCALE``:
    with two buffers per block instead of about eight, bigger blocks fit the
    same memory, and fewer blocks mean fewer per-block overheads.
    """
    return max(1, min(length, scale * _BLOCK_ELEMENTS // max(1, keys * batch)))


KERNEL_BLOCK_SCALE = 8
"""Block size of the row-kernel paths, in units of ``_BLOCK_ELEMENTS`` (4 Mi scores)."""


def _causal(i0: int, i1: int, keys: int, xp: Namespace, dev: Any) -> Array:
    """Top-left aligned causal mask of query rows ``i0:i1``: key ``j`` is kept when ``j <= i``."""
    rows = xp.arange(i0, i1, device=dev)[:, None]
    return xp.arange(keys, device=dev)[None, :] <= rows


def _prefix_key_sums(key: Array, length: int, xp: Namespace) -> Array:
    """``sum_{j <= min(i, S-1)} k_j`` for every query ``i < L``: the causal key sums."""
    prefix = xp.cumulative_sum(key, axis=-2)
    keys = key.shape[-2]
    if length <= keys:
        return prefix[..., :length, :]
    tail = xp.broadcast_to(
        prefix[..., keys - 1 : keys, :], (*prefix.shape[:-2], length - keys, key.shape[-1])
    )
    return xp.concat([prefix, tail], axis=-2)


def _attend_block(
    scores: Array,
    valid: Array | None,
    threshold: Array,
    value: Array,
    off: float,
    xp: Namespace,
) -> tuple[Array, Array]:
    """DESIGN §4's recipe on one block of score rows; return ``(output, support size)``.

    ``threshold`` is the valid mean of each row (from the key identity). The row
    maximum is always in the support, whatever the rounding of the identity.
    """
    if valid is None:
        valid = xp.ones(scores.shape, dtype=xp.bool, device=device(scores))
    row_max = xp.max(xp.where(valid, scores, -math.inf), axis=-1, keepdims=True)
    row_max = xp.where(xp.any(valid, axis=-1, keepdims=True), row_max, 0.0)
    exp = xp.exp(xp.where(valid, scores, row_max) - row_max)
    keep = valid & ((scores >= threshold[..., None]) | (scores == row_max))
    weights = xp.where(keep, exp, 0.0) if off == 0.0 else xp.where(keep, exp, off * exp)
    weights = xp.where(valid, weights, 0.0)
    total = xp.sum(weights, axis=-1, keepdims=True)
    out = (weights @ value) / xp.where(total == 0.0, 1.0, total)
    return out, xp.sum(xp.astype(keep, xp.int32), axis=-1)


def _threshold(
    q: Array,
    key_sum: Array,
    bias_sum: Array | None,
    count: Array | float,
    scale: float,
    xp: Namespace,
) -> Array:
    """The valid mean of each score row: (scale q·Σk + Σb) divided once by the count."""
    total = scale * xp.sum(q * key_sum, axis=-1)
    if bias_sum is not None:
        total = total + bias_sum
    return total / count


def attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None,
    is_causal: bool,
    scale: float,
    epsilon: float,
    return_support: bool,
    xp: Namespace,
) -> Any:
    """Array-API ev-attention over validated arguments (a common floating dtype)."""
    out_dtype = query.dtype
    acc = accumulation_dtype(out_dtype, xp)
    q, k, v = (xp.astype(a, acc, copy=False) for a in (query, key, value))
    dev = device(q)
    length, keys = q.shape[-2], k.shape[-2]
    batch = _batch_shape(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    is_bool = mask is not None and xp.isdtype(mask.dtype, "bool")
    while mask is not None and mask.ndim < 2:
        mask = mask[None, ...]
    bias = None if mask is None or is_bool else xp.astype(mask, acc, copy=False)
    off = epsilon / (1.0 + epsilon)
    prefix = _prefix_key_sums(k, length, xp) if is_causal and mask is None else None
    key_total = xp.sum(k, axis=-2) if mask is None and not is_causal else None
    kt = xp.matrix_transpose(k)
    step = block_rows(length, keys, math.prod(batch))
    outs, sizes = [], []
    for i0 in range(0, length, step):
        i1 = min(length, i0 + step)
        qb = q[..., i0:i1, :]
        scores = scale * (qb @ kt)
        valid = None
        if is_causal:
            valid = _causal(i0, i1, keys, xp, dev)
        if mask is not None:
            mb = mask[..., i0:i1, :] if mask.shape[-2] != 1 else mask
            if is_bool:
                valid = mb if valid is None else valid & mb
            else:
                scores = scores + mb
                finite = mb != -math.inf
                valid = finite if valid is None else valid & finite
        if key_total is not None:
            threshold = _threshold(qb, key_total[..., None, :], None, keys, scale, xp)
        elif prefix is not None:
            count = xp.astype(xp.minimum(xp.arange(i0 + 1, i1 + 1, device=dev), keys), acc)
            threshold = _threshold(qb, prefix[..., i0:i1, :], None, count, scale, xp)
        else:
            weights = xp.astype(xp.broadcast_to(valid, scores.shape), acc)
            count = xp.sum(weights, axis=-1)
            bias_sum = None
            if bias is not None:
                bias_sum = xp.sum(xp.where(valid, xp.broadcast_to(mb, scores.shape), 0.0), axis=-1)
            threshold = _threshold(
                qb, weights @ k, bias_sum, xp.where(count == 0.0, 1.0, count), scale, xp
            )
        out, size = _attend_block(scores, valid, threshold, v, off, xp)
        outs.append(xp.broadcast_to(out, (*batch, i1 - i0, v.shape[-1])))
        sizes.append(xp.broadcast_to(size, (*batch, i1 - i0)))
    out = xp.astype(xp.concat(outs, axis=-2), out_dtype, copy=False)
    if not return_support:
        return out
    return out, xp.astype(xp.concat(sizes, axis=-1), _default_int(xp, dev))


def _empty_result(
    query: Array, value: Array, batch: tuple[int, ...], return_support: bool, xp: Namespace
) -> Any:
    """Zeros for an empty call: no queries, no keys (every query fully masked) or no batch."""
    dev = device(query)
    length = query.shape[-2]
    out = xp.zeros((*batch, length, value.shape[-1]), dtype=query.dtype, device=dev)
    if not return_support:
        return out
    return out, xp.zeros((*batch, length), dtype=_default_int(xp, dev), device=dev)


def _compiled_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor seen by ``torch.compile`` while it traces."""
    if not type(x).__module__.startswith("torch"):
        return False
    import torch

    return torch.compiler.is_compiling()


def ev_attention(
    query: Array,
    key: Array,
    value: Array,
    /,
    *,
    mask: Any = None,
    is_causal: bool = False,
    scale: float | None = None,
    epsilon: float = 0.0,
    return_support: bool = False,
    xp: Namespace | None = None,
) -> Any:
    r"""Scaled dot-product attention with ev-softmax over each query's valid keys.

    .. math::

        s_{ij} = \text{scale}\; q_i \cdot k_j + b_{ij}, \qquad
        o_i = \sum_{j \in V_i} \text{ev\_softmax}(s_{i\cdot})_j \, v_j

    where :math:`V_i` are query ``i``'s valid keys and the ev-softmax threshold
    is the mean of the scores over :math:`V_i` only. Memory is O(L + S) per
    (batch, head) beyond inputs and output: the threshold is computed from the
    identity :math:`\operatorname{mean}_j s_{ij} = \text{scale}\, q_i \cdot
    \operatorname{mean}_j k_j` (plus the mean of the additive mask) before the
    scores are formed, one block of queries at a time. A score equal to its
    row's mean in exact arithmetic may round to either side of the identity's
    value: such ties are decided by the identity, and the row maximum is always
    in the support.

    Parameters
    ----------
    query : array, shape (..., L, E)
    key : array, shape (..., S, E)
    value : array, shape (..., S, Ev)
        Batch dimensions broadcast. Integers are promoted to the default
        floating dtype; float16/bfloat16 are accumulated in float32.
    mask : bool or floating array, optional
        Broadcastable to ``(..., L, S)``. Boolean: ``True`` keys take part.
        Floating: added to the scores; ``-inf`` entries are masked.
    is_causal : bool, default False
        Keep only keys ``j <= i`` (top-left aligned, as ``tril(ones(L, S))``);
        combines with ``mask``.
    scale : float, optional
        Score scale, finite; default ``1/sqrt(E)``.
    epsilon : float, default 0.0
        Weight of the keys outside the support (the training-time family);
        finite and ``>= 0``.
    return_support : bool, default False
        Also return the number of keys each query attends to.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    out : array, shape (..., L, Ev)
        A query with no valid key gives zeros.
    support_size : int array, shape (..., L)
        Only with ``return_support=True``.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> q = np.array([[1.0, 0.0]])
    >>> k = np.array([[2.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])
    >>> v = np.array([[1.0], [2.0], [3.0]])
    >>> out, size = evs.ev_attention(q, k, v, scale=1.0, return_support=True)
    >>> out.round(3), size
    (array([[1.119]]), array([2]))
    """
    if _compiled_torch(query):
        from ._torch_attention import ev_attention as torch_ev_attention

        return torch_ev_attention(
            query, key, value, mask, is_causal, scale, epsilon, return_support=return_support
        )
    xp = array_namespace(query, key, value) if xp is None else xp
    arrays = []
    for name, a in (("query", query), ("key", key), ("value", value)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
        arrays.append(check_floating(a, xp, name))
    dtype = xp.result_type(*arrays)
    query, key, value = (xp.astype(a, dtype, copy=False) for a in arrays)
    batch = check_shapes(tuple(query.shape), tuple(key.shape), tuple(value.shape))
    mask = _validate_mask(mask, query, (*batch, query.shape[-2], key.shape[-2]), xp)
    is_causal = check_flag(is_causal, "is_causal")
    return_support = check_flag(return_support, "return_support")
    scale = check_scale(scale, query.shape[-1])
    epsilon = validate_epsilon(epsilon)
    if 0 in (*batch, query.shape[-2], key.shape[-2]):
        return _empty_result(query, value, batch, return_support, xp)
    run = implementation("ev_attention", xp, attention)
    return run(
        query,
        key,
        value,
        mask=mask,
        is_causal=is_causal,
        scale=scale,
        epsilon=epsilon,
        return_support=return_support,
        xp=xp,
    )
