"""Public baselines: softmax, sparsemax, entmax and post-hoc evidential sparsification.

The delegation layer in front of the array-API implementations in
``_softmax``, ``_sparsemax``, ``_entmax`` and ``_evidential``: infer ``xp``,
validate, short-circuit empty input, then call the adapter of the input's
framework (autodiff hooks) or the array-API implementation.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from . import _entmax, _evidential, _softmax, _sparsemax
from ._dispatch import call, implementation
from ._lib._compat import device
from ._lib._prepare import prepare
from ._lib._typing import Array, Namespace
from ._lib._validation import namespace_of, validate_input

__all__ = [
    "entmax15",
    "entmax_bisect",
    "evidential_sparsification",
    "log_softmax",
    "softmax",
    "sparsemax",
]


def softmax(
    x: Array, /, *, axis: int = -1, where: Any = None, xp: Namespace | None = None
) -> Array:
    r"""Softmax along ``axis`` over the included entries.

    .. math::

        p_k = \frac{e^{x_k}}{\sum_{l \in V} e^{x_l}}, \qquad
        V = \{l : \text{where}_l \text{ and } x_l \ne -\infty\}

    Parameters
    ----------
    x : array
        Scores (logits). Integer arrays are promoted to the namespace's default
        floating dtype; float16/bfloat16 are accumulated in float32.
    axis : int, default -1
        The axis to normalize over.
    where : bool array, optional
        Entries to include, broadcastable to ``x``. Entries equal to ``-inf``
        are excluded too. Excluded entries get probability 0; a row with no
        included entry returns all zeros (with zero gradient).
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Probabilities of ``x``'s shape, dtype and device; dense on the included entries.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.softmax(np.array([0.4, 1.4, -0.8])).round(2)
    array([0.25, 0.68, 0.07])
    """
    x, axis, where, xp = prepare(x, axis, where, xp)
    return call("softmax", _softmax.softmax, x, xp=xp, axis=axis, where=where)


def log_softmax(
    x: Array, /, *, axis: int = -1, where: Any = None, xp: Namespace | None = None
) -> Array:
    r"""Logarithm of :func:`softmax`, computed in log space.

    .. math::

        \log p_k = x_k - \log \sum_{l \in V} e^{x_l}

    Excluded entries (``where=False`` or ``-inf``) are ``-inf``; a row with no
    included entry is all ``-inf``.

    Parameters
    ----------
    x : array
        Scores (logits).
    axis : int, default -1
        The axis to normalize over.
    where : bool array, optional
        Entries to include, broadcastable to ``x``.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Log-probabilities of ``x``'s shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.log_softmax(np.array([0.4, 1.4, -0.8]), where=np.array([True, True, False])).round(2)
    array([-1.31, -0.31,  -inf])
    """
    x, axis, where, xp = prepare(x, axis, where, xp)
    return call("log_softmax", _softmax.log_softmax, x, xp=xp, axis=axis, where=where)


def sparsemax(
    x: Array, /, *, axis: int = -1, where: Any = None, xp: Namespace | None = None
) -> Array:
    r"""Sparsemax along ``axis``: the Euclidean projection onto the probability simplex.

    .. math::

        \operatorname{sparsemax}(x) = \operatorname*{argmin}_{p \in \Delta}
            \lVert p - x \rVert^2 = [x - \tau]_+

    (Martins & Astudillo 2016), computed exactly by sorting (O(K log K)).
    Entries more than 1 below the row maximum get exactly 0, so scaling the
    scores up collapses it onto the maximum. Its gradient is
    :math:`g_S - \operatorname{mean}(g_S)` on the support :math:`S` and 0 elsewhere.

    Parameters
    ----------
    x : array
        Scores (logits).
    axis : int, default -1
        The axis to normalize over.
    where : bool array, optional
        Entries to include, broadcastable to ``x``; ``-inf`` entries are
        excluded too. A row with no included entry returns all zeros.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Probabilities of ``x``'s shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.sparsemax(np.array([0.4, 1.4, -0.8])).round(3)
    array([0., 1., 0.])
    >>> evs.sparsemax(np.array([0.4, 0.6, -0.8]))
    array([0.4, 0.6, 0. ])
    """
    x, axis, where, xp = prepare(x, axis, where, xp)
    return call("sparsemax", _sparsemax.sparsemax, x, xp=xp, axis=axis, where=where)


def entmax15(
    x: Array, /, *, axis: int = -1, where: Any = None, xp: Namespace | None = None
) -> Array:
    r"""1.5-entmax along ``axis`` (Peters, Niculae & Martins 2019), exact and sort-based.

    .. math::

        \operatorname{entmax}_{1.5}(x) = \operatorname*{argmax}_{p \in \Delta}
            \langle p, x \rangle + \frac{1 - \sum_k p_k^{3/2}}{3/4}
        = \bigl[x/2 - \tau\bigr]_+^2

    Sparse like sparsemax but smoother. Its gradient is
    :math:`s \odot g - s \langle s, g\rangle / \sum_k s_k` with
    :math:`s = \sqrt{p}`.

    Parameters
    ----------
    x : array
        Scores (logits).
    axis : int, default -1
        The axis to normalize over.
    where : bool array, optional
        Entries to include, broadcastable to ``x``; ``-inf`` entries are
        excluded too. A row with no included entry returns all zeros.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Probabilities of ``x``'s shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.entmax15(np.array([0.4, 1.4, -0.8])).round(3)
    array([0.169, 0.831, 0.   ])
    """
    x, axis, where, xp = prepare(x, axis, where, xp)
    return call("entmax15", _entmax.entmax15, x, xp=xp, axis=axis, where=where)


def _validate_alpha(alpha: Any) -> float:
    """``alpha`` as a Python float, raising ``ValueError`` unless finite and > 1."""
    real = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
    value = float(alpha) if real else math.nan
    if not math.isfinite(value) or value <= 1.0:
        raise ValueError(
            f"alpha must be a finite float > 1 (alpha = 1 is softmax: use softmax), got {alpha!r}"
        )
    return value


def _validate_n_iter(n_iter: Any) -> int:
    """``n_iter`` as a positive int, raising ``TypeError``/``ValueError`` otherwise."""
    if isinstance(n_iter, bool):
        raise TypeError(f"n_iter must be an int, got a bool ({n_iter!r})")
    try:
        value = operator.index(n_iter)
    except TypeError:
        raise TypeError(f"n_iter must be an int, got {type(n_iter).__name__}") from None
    if value < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter!r}")
    return value


def entmax_bisect(
    x: Array,
    /,
    *,
    alpha: float = 1.5,
    axis: int = -1,
    n_iter: int = 50,
    where: Any = None,
    xp: Namespace | None = None,
) -> Array:
    r"""alpha-entmax along ``axis``, its threshold found by bisection (Peters et al. 2019).

    .. math::

        \operatorname{entmax}_\alpha(x) = \operatorname*{argmax}_{p \in \Delta}
            \langle p, x \rangle + \frac{1 - \sum_k p_k^\alpha}{\alpha(\alpha - 1)}
        = \bigl[(\alpha - 1) x - \tau\bigr]_+^{1/(\alpha - 1)}

    ``alpha = 2`` is :func:`sparsemax`, ``alpha = 1.5`` is :func:`entmax15`
    and ``alpha -> 1`` tends to :func:`softmax`. After ``n_iter`` halvings of
    the bracket of :math:`\tau` the result is renormalized to sum to one.
    Its gradient is the closed form of :func:`entmax15` with
    :math:`s = p^{2-\alpha}` (the gradient with respect to ``alpha`` is not provided).

    Parameters
    ----------
    x : array
        Scores (logits).
    alpha : float, default 1.5
        The entmax parameter, finite and ``> 1``.
    axis : int, default -1
        The axis to normalize over.
    n_iter : int, default 50
        Number of bisection steps (each halves the error on the threshold).
    where : bool array, optional
        Entries to include, broadcastable to ``x``; ``-inf`` entries are
        excluded too. A row with no included entry returns all zeros.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Probabilities of ``x``'s shape, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.entmax_bisect(np.array([0.4, 1.4, -0.8]), alpha=2.0).round(3)
    array([0., 1., 0.])
    >>> evs.entmax_bisect(np.array([0.4, 1.4, -0.8]), alpha=1.5).round(3)
    array([0.169, 0.831, 0.   ])
    """
    x, axis, where, xp = prepare(x, axis, where, xp)
    alpha = _validate_alpha(alpha)
    n_iter = _validate_n_iter(n_iter)
    return call(
        "entmax_bisect",
        _entmax.entmax_bisect,
        x,
        xp=xp,
        alpha=alpha,
        axis=axis,
        n_iter=n_iter,
        where=where,
    )


def _check_shapes(features: Array, weight: Array, bias: Array) -> None:
    """Raise ``ValueError`` unless features (..., J), weight (J, K) and bias (K,) agree."""
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-d (J, K), got shape {tuple(weight.shape)}")
    if bias.ndim != 1:
        raise ValueError(f"bias must be 1-d (K,), got shape {tuple(bias.shape)}")
    j, k = weight.shape
    if features.shape[-1] != j:
        raise ValueError(
            f"features must have J = {j} entries on the last axis to match weight "
            f"{tuple(weight.shape)}, got shape {tuple(features.shape)}"
        )
    if bias.shape[0] != k:
        raise ValueError(
            f"bias must have K = {k} entries to match weight {tuple(weight.shape)}, "
            f"got shape {tuple(bias.shape)}"
        )


def evidential_sparsification(
    features: Array, weight: Array, bias: Array, /, *, xp: Namespace | None = None
) -> Array:
    r"""Post-hoc evidential sparsification (Itkina et al. 2021) of a linear softmax layer.

    The method of Chen et al. 2021, Eqs. 4-6, implemented literally: for the
    scores :math:`v = b + \phi W` it forms the mean-centred evidential weights
    :math:`w = v - \bar v`, their positive and negative parts
    :math:`w^\pm`, the Dempster-Shafer singleton masses

    .. math::

        m_k = e^{-w^-_k} \Bigl(e^{w^+_k} - 1 + \prod_{l \ne k} (1 - e^{-w^-_l})\Bigr),

    and returns :math:`p_k \propto 1\{m_k \ne 0\}\, e^{w_k}`. When no score ties
    with its row mean this equals ``ev_softmax(bias + features @ weight)``
    (Theorem 3.1 of Chen et al.), which costs O(K) per row instead of
    O(JK + K^2). If every score ties with the mean (all :math:`w = 0`) no
    class holds mass, the evidence is vacuous, and the result is uniform.

    Parameters
    ----------
    features : array, shape (..., J)
        Features :math:`\phi` feeding the last (linear) layer.
    weight : array, shape (J, K)
        The layer's weights :math:`\hat\beta_{1:}`.
    bias : array, shape (K,)
        The layer's bias :math:`\hat\beta_0`.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array, shape (..., K)
        Probabilities in the inputs' result dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> features = np.array([1.0, -0.5])
    >>> weight = np.array([[0.2, 0.6, -0.4], [0.4, 0.8, 0.4]])
    >>> bias = np.array([0.4, 1.2, -0.2])
    >>> evs.evidential_sparsification(features, weight, bias).round(2)
    array([0.27, 0.73, 0.  ])
    >>> evs.ev_softmax(bias + features @ weight).round(2)
    array([0.27, 0.73, 0.  ])
    """
    if xp is None:
        xp = namespace_of(("features", features), ("weight", weight), ("bias", bias))
    features = validate_input(features, xp, "features")
    weight = validate_input(weight, xp, "weight")
    bias = validate_input(bias, xp, "bias")
    _check_shapes(features, weight, bias)
    if any(n == 0 for n in features.shape[:-1]) or weight.shape[1] == 0:
        shape = (*features.shape[:-1], weight.shape[1])
        dtype = xp.result_type(features, weight, bias)
        return xp.zeros(shape, dtype=dtype, device=device(features))
    impl = implementation("evidential_sparsification", xp, _evidential.evidential_sparsification)
    return impl(features, weight, bias, xp=xp)
