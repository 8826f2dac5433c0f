"""Dense float64 reference for ev-attention, written from DESIGN §4 "Attention".

Forms the whole score matrix (``scale * q @ k.T`` plus an additive mask), marks
each query's valid keys (boolean mask true, additive mask not -inf, ``j <= i``
when causal), applies the float64 ev-softmax of ``tests/reference.py`` to each
query row over its valid keys, and multiplies by the values.
"""

from __future__ import annotations

import numpy as np

from . import reference


def scores_and_valid(q, k, mask=None, is_causal=False, scale=None):
    """The (..., L, S) float64 scores and validity of a dense attention call."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = scale * np.einsum("...le,...se->...ls", q, k)
    valid = np.ones(scores.shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype == bool:
            valid = valid & mask
        else:
            scores = scores + mask.astype(np.float64)
            valid = valid & (np.broadcast_to(mask, scores.shape) != -np.inf)
    if is_causal:
        length, keys = scores.shape[-2:]
        valid = valid & np.tril(np.ones((length, keys), dtype=bool))
    valid = np.broadcast_to(valid, scores.shape)
    return scores, valid


def probabilities(q, k, mask=None, is_causal=False, scale=None, eps=0.0):
    """The (..., L, S) float64 ev-softmax attention weights."""
    scores, valid = scores_and_valid(q, k, mask, is_causal, scale)
    rows = scores.reshape(-1, scores.shape[-1])
    vrows = valid.reshape(-1, valid.shape[-1])
    probs = [reference.ev_softmax_row(r, m, eps) for r, m in zip(rows, vrows, strict=True)]
    return np.stack(probs).reshape(scores.shape)


def ev_attention(q, k, v, mask=None, is_causal=False, scale=None, eps=0.0):
    """Output ``(..., L, Ev)`` and support size ``(..., L)`` of ev-attention, in float64."""
    probs = probabilities(q, k, mask, is_causal, scale, eps)
    scores, valid = scores_and_valid(q, k, mask, is_causal, scale)
    rows = scores.reshape(-1, scores.shape[-1])
    vrows = valid.reshape(-1, valid.shape[-1])
    sizes = np.array([reference.support_row(r, m).sum() for r, m in zip(rows, vrows, strict=True)])
    out = probs @ np.asarray(v, np.float64)
    return out, sizes.reshape(scores.shape[:-1])
