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

from ._core import accumulation_dtype
from ._lib._compat import device
from ._lib._typing import Array, Namespace

__all__ = ["evidential_sparsification"]


def _evidential_weights(features: Array, weight: Array, bias: Array, xp: Namespace) -> Array:
    """Eq. 4: the scores with the mean over the K classes removed from every coefficient."""
    centred_bias = bias - xp.mean(bias)
    centred_weight = weight - xp.mean(weight, axis=1, keepdims=True)
    return centred_bias + xp.matmul(features, centred_weight)


def _singleton_masses(w: Array, xp: Namespace) -> Array:
    """Eq. 5: the mass :math:`m_k` of each class ``k`` along the last axis."""
    w_plus = xp.maximum(w, 0.0)
    w_minus = xp.maximum(-w, 0.0)
    conflict = -xp.expm1(-w_minus)  # 1 - exp(-w^-_l)
    k = w.shape[-1]
    others = xp.eye(k, dtype=xp.bool, device=device(w))
    # Row k of the (..., K, K) matrix holds conflict_l for l != k and 1 on the diagonal.
    factors = xp.where(others, 1.0, xp.expand_dims(conflict, axis=-2))
    return xp.exp(-w_minus) * (xp.expm1(w_plus) + xp.prod(factors, axis=-1))


def evidential_sparsification(
    features: Array, weight: Array, bias: Array, *, xp: Namespace
) -> Array:
    """Eq. 6: :math:`p_k \\propto 1\\{m_k \\ne 0\\} e^{w_k}` along the last axis."""
    out_dtype = xp.result_type(features, weight, bias)
    acc = accumulation_dtype(out_dtype, xp)
    features, weight, bias = (xp.astype(a, acc, copy=False) for a in (features, weight, bias))
    w = _evidential_weights(features, weight, bias, xp)
    keep = _singleton_masses(w, xp) != 0.0
    # No singleton holds mass only when every score ties with the mean (all w = 0):
    # the evidence is vacuous and nothing is removed.
    keep = keep | ~xp.any(keep, axis=-1, keepdims=True)
    exp = xp.where(keep, xp.exp(w - xp.max(w, axis=-1, keepdims=True)), 0.0)
    return xp.astype(exp / xp.sum(exp, axis=-1, keepdims=True), out_dtype, copy=False)
