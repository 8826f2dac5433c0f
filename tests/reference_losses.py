"""Float64 references for the losses, written from their definitions (position by position)."""

from __future__ import annotations

import numpy as np

from . import reference
from . import reference_baselines as ref


def _reduce(loss: np.ndarray, keep: np.ndarray, reduction: str):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum() if keep.sum() else np.nan


def nll(logits, target, axis=-1, eps=1e-6, where=None, ignore_index=None, reduction="mean"):
    """-log p_eps[target] with p_eps from the float64 ev-softmax reference."""
    logits = np.asarray(logits, dtype=np.float64)
    where = None if where is None else np.broadcast_to(where, logits.shape)
    log_p = np.moveaxis(reference.log_ev_softmax(logits, axis, eps, where), axis, -1)
    target = np.asarray(target)
    loss = np.zeros(target.shape)
    keep = np.ones(target.shape, dtype=bool)
    for idx in np.ndindex(*target.shape):
        if ignore_index is not None and target[idx] == ignore_index:
            keep[idx] = False
        else:
            loss[idx] = -log_p[idx][target[idx]]
    return _reduce(loss, keep, reduction)


def kl(logits, q, axis=-1, eps=1e-6, where=None, reduction="mean"):
    logits = np.asarray(logits, dtype=np.float64)
    where = None if where is None else np.broadcast_to(where, logits.shape)
    log_p = np.moveaxis(reference.log_ev_softmax(logits, axis, eps, where), axis, -1)
    q = np.moveaxis(np.asarray(q, dtype=np.float64), axis, -1)
    loss = np.zeros(q.shape[:-1])
    for idx in np.ndindex(*loss.shape):
        for k in range(q.shape[-1]):
            if q[idx][k] > 0:
                loss[idx] += q[idx][k] * (np.log(q[idx][k]) - log_p[idx][k])
    return _reduce(loss, np.ones(loss.shape, dtype=bool), reduction)


def fenchel_young(logits, target, alpha, axis=-1, where=None, ignore_index=None, reduction="mean"):
    """Tsallis-alpha Fenchel-Young loss H(p) + <p - e_y, z>, p = alpha-entmax(z) (reference)."""
    logits = np.asarray(logits, dtype=np.float64)
    if alpha == 2.0:
        probs = ref.sparsemax(logits, axis, where)
    else:
        probs = ref.entmax(logits, alpha, axis, where)
    probs, z = np.moveaxis(probs, axis, -1), np.moveaxis(logits, axis, -1)
    target = np.asarray(target)
    loss = np.zeros(target.shape)
    keep = np.ones(target.shape, dtype=bool)
    for idx in np.ndindex(*target.shape):
        if ignore_index is not None and target[idx] == ignore_index:
            keep[idx] = False
            continue
        p, v = probs[idx], z[idx]
        entropy = (1.0 - (p**alpha).sum()) / (alpha * (alpha - 1.0))
        loss[idx] = entropy + (p[p > 0] * v[p > 0]).sum() - v[target[idx]]
    return _reduce(loss, keep, reduction)
