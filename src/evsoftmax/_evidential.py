r"""Post-hoc evidential sparsification (Itkina et al. 2021), literally from Chen et al.'s Eqs. 4-6.

For features :math:`\phi \in \mathbb{R}^J` and weights
:math:`\hat\beta \in \mathbb{R}^{(J+1) \times K}` (row 0 the bias), the
evidential weights are the mean-centred scores

.. math::

    w_k = \hat\beta_{0k} - \tfrac1K \textstyle\sum_l \hat\beta_{0l}
        + \sum_j \phi_j \bigl(\hat\beta_{jk} - \tfrac1K \textstyle\sum_l \hat\beta_{jl}\bigr),

split into :math:`w^+ = \max(0, w)` and :math:`w^- = \max(0, -w)`. The
Dempster-Shafer mass of the singleton :math:`\{k\}` is

.. math::

    m_k = e^{-w^-_k} \Bigl(e^{w^+_k} - 1 + \prod_{l \ne k} \bigl(1 - e^{-w^-_l}\bigr)\Bigr),

and the sparsified distribution is :math:`p_k \propto 1\{m_k \ne 0\}\, e^{w_k}`.
The product over :math:`l \ne k` is formed explicitly (a K x K matrix per row),
so this costs O(JK + K^2) per row: it is a reference, not a fast path.
"""

from __future__ import annotations

import math

from ._core import accumulation_dtype
from ._lib._compat import device
from ._lib._typing import Array, Namespace

__all__ = ["evidential_sparsification"]


def _evidential_weights(
    features: Array, weight: Array, bias: Array, valid: Array, xp: Namespace
) -> Array:
    """Eq. 4: the scores with the mean over the valid classes removed from every coefficient.

    Excluded classes (``valid`` false) take no part in the means; their own
    weights are set to 0 (they are dropped later).
    """
    count = xp.sum(xp.astype(valid, bias.dtype))
    count = xp.where(count == 0.0, 1.0, count)
    bias = xp.where(valid, bias, 0.0)
    weight = xp.where(valid, weight, 0.0)
    centred_bias = bias - xp.sum(bias) / count
    centred_weight = weight - xp.sum(weight, axis=1, keepdims=True) / count
    return xp.where(valid, centred_bias + xp.matmul(features, centred_weight), 0.0)


def _singleton_masses(w: Array, valid: Array, xp: Namespace) -> Array:
    """Eq. 5: the mass :math:`m_k` of each class ``k`` along the last axis (0 if excluded)."""
    w_plus = xp.maximum(w, 0.0)
    w_minus = xp.maximum(-w, 0.0)
    # 1 - exp(-w^-_l); an excluded class is no evidence against the others (factor 1).
    conflict = xp.where(valid, -xp.expm1(-w_minus), 1.0)
    k = w.shape[-1]
    others = xp.eye(k, dtype=xp.bool, device=device(w))
    # Row k of the (..., K, K) matrix holds conflict_l for l != k and 1 on the diagonal.
    factors = xp.where(others, 1.0, xp.expand_dims(conflict, axis=-2))
    masses = xp.exp(-w_minus) * (xp.expm1(w_plus) + xp.prod(factors, axis=-1))
    return xp.where(valid, masses, 0.0)


def evidential_sparsification(
    features: Array, weight: Array, bias: Array, *, xp: Namespace
) -> Array:
    """Eq. 6: :math:`p_k \\propto 1\\{m_k \\ne 0\\} e^{w_k}` along the last axis.

    A class whose bias is ``-inf`` is excluded, as a ``-inf`` score is in
    :func:`evsoftmax.ev_softmax` of ``bias + features @ weight``: it gets
    probability 0 and takes no part in the means; with no class left the
    result is all zeros.
    """
    out_dtype = xp.result_type(features, weight, bias)
    acc = accumulation_dtype(out_dtype, xp)
    features, weight, bias = (xp.astype(a, acc, copy=False) for a in (features, weight, bias))
    valid = bias != -math.inf
    w = _evidential_weights(features, weight, bias, valid, xp)
    keep = _singleton_masses(w, valid, xp) != 0.0
    # No singleton holds mass only when every score ties with the mean (all w = 0):
    # the evidence is vacuous and nothing is removed.
    keep = keep | (valid & ~xp.any(keep, axis=-1, keepdims=True))
    top = xp.max(xp.where(valid, w, -math.inf), axis=-1, keepdims=True)
    top = xp.where(top == -math.inf, 0.0, top)
    exp = xp.where(keep, xp.exp(xp.where(valid, w, top) - top), 0.0)
    total = xp.sum(exp, axis=-1, keepdims=True)
    probs = exp / xp.where(total == 0.0, 1.0, total)
    return xp.astype(probs, out_dtype, copy=False)
