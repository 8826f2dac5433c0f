r"""Array-API alpha-entmax: exact 1.5-entmax, any alpha by bisection.

alpha-entmax maximizes the score plus a Tsallis entropy over the simplex:

.. math::

    \operatorname{entmax}_\alpha(z) = \operatorname*{argmax}_{p \in \Delta}
        \langle p, z\rangle + H^T_\alpha(p), \qquad
    H^T_\alpha(p) = \frac{1 - \sum_k p_k^\alpha}{\alpha(\alpha - 1)},

whose solution is :math:`p_k = [(\alpha - 1) z_k - \tau]_+^{1/(\alpha - 1)}` with
:math:`\tau` the threshold that makes it sum to one. alpha -> 1 gives softmax and
alpha = 2 sparsemax. Its Jacobian is symmetric:
:math:`J = \operatorname{diag}(s) - s s^\top / \sum_k s_k` with
:math:`s_k = p_k^{2 - \alpha}` on the support and 0 elsewhere, so one formula
(:func:`entmax_jvp`) gives both the JVP and the VJP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._core import accumulation_dtype
from ._lib._typing import Array, Namespace
from ._rows import clipped_scores, finish, positions

__all__ = ["entmax15", "entmax_bisect", "entmax_jvp", "python_fori_loop"]


def _entmax15_threshold(z: Array, axis: int, xp: Namespace) -> Array:
    """Exact threshold of 1.5-entmax for scores ``z`` already halved (sort-based)."""
    ordered = xp.sort(z, axis=axis, descending=True)
    rank = positions(z, axis, xp)
    mean = xp.cumulative_sum(ordered, axis=axis) / rank
    mean_sq = xp.cumulative_sum(ordered * ordered, axis=axis) / rank
    spread = rank * (mean_sq - mean * mean)
    delta = xp.maximum((1.0 - spread) / rank, 0.0)
    candidates = mean - xp.sqrt(delta)
    # The support size is the number of prefixes whose candidate lies below their
    # last entry; the threshold is that prefix's candidate (selected without a gather).
    size = xp.sum(xp.astype(candidates <= ordered, z.dtype), axis=axis, keepdims=True)
    return xp.sum(xp.where(rank == size, candidates, 0.0), axis=axis, keepdims=True)


def entmax15(x: Array, *, axis: int, where: Array | None, xp: Namespace) -> Array:
    """Exact 1.5-entmax over the valid entries of each row."""
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, z, bad = clipped_scores(x, where, axis, 0.5, xp)
    tau = _entmax15_threshold(z, axis, xp)
    gap = xp.maximum(z - tau, 0.0)
    return finish(gap * gap, valid, bad, out_dtype, xp)


def _entmax_weights(gap: Array, alpha: float, xp: Namespace) -> Array:
    """:math:`[g]_+^{1/(\\alpha-1)}` for ``g = (alpha - 1) z - tau``."""
    return xp.maximum(gap, 0.0) ** (1.0 / (alpha - 1.0))


def python_fori_loop(lower: int, upper: int, body: Callable[[int, Any], Any], init: Any) -> Any:
    """``body`` applied for ``i`` in ``range(lower, upper)``: ``jax.lax.fori_loop`` in Python."""
    for i in range(lower, upper):
        init = body(i, init)
    return init


def entmax_bisect(
    x: Array,
    *,
    alpha: float,
    axis: int,
    n_iter: int,
    where: Array | None,
    xp: Namespace,
    fori_loop: Callable[..., Any] = python_fori_loop,
) -> Array:
    """alpha-entmax by ``n_iter`` bisection steps on the threshold, then renormalized.

    ``fori_loop`` runs the steps (``jax.lax.fori_loop`` keeps a traced loop small).
    """
    out_dtype = x.dtype
    x = xp.astype(x, accumulation_dtype(out_dtype, xp), copy=False)
    valid, z, bad = clipped_scores(x, where, axis, alpha - 1.0, xp)
    count = xp.sum(xp.astype(valid, x.dtype), axis=axis, keepdims=True)
    count = xp.where(count > 0, count, 1.0)

    def mass(tau: Array) -> Array:
        return xp.where(valid, _entmax_weights(z - tau, alpha, xp), 0.0)

    def step(_: int, state: tuple[Array, Array]) -> tuple[Array, Array]:
        tau_lo, width = state
        tau_mid = tau_lo + width / 2.0
        enough = xp.sum(mass(tau_mid), axis=axis, keepdims=True) >= 1.0
        return xp.where(enough, tau_mid, tau_lo), width / 2.0

    # max z = 0, so the threshold lies in [-1, -(1/count)^(alpha-1)], where the mass
    # is >= 1 at the lower end; the bisection keeps that invariant.
    width = 1.0 - (1.0 / count) ** (alpha - 1.0)
    tau_lo, _ = fori_loop(0, n_iter, step, (xp.full_like(count, -1.0), width))
    probs = mass(tau_lo)
    total = xp.sum(probs, axis=axis, keepdims=True)
    return finish(probs / xp.where(total > 0, total, 1.0), valid, bad, out_dtype, xp)


def entmax_jvp(probs: Array, tangent: Array, *, alpha: float, axis: int, xp: Namespace) -> Array:
    r"""JVP (and VJP) of alpha-entmax at ``probs``: :math:`s t - s \langle s, t\rangle / \sum s`.

    ``s = probs^(2 - alpha)`` on the support (1 for sparsemax, ``sqrt(p)`` for
    1.5-entmax); rows without support (fully masked) get 0, NaN rows stay NaN.
    """
    out_dtype = xp.result_type(probs, tangent)
    acc = accumulation_dtype(out_dtype, xp)
    probs = xp.astype(probs, acc, copy=False)
    tangent = xp.astype(tangent, acc, copy=False)
    off_support = probs == 0.0
    # Base 1 off the support keeps the power finite (and differentiable) for alpha > 2.
    s = xp.where(off_support, 0.0, xp.where(off_support, 1.0, probs) ** (2.0 - alpha))
    weighted = s * tangent
    total = xp.sum(s, axis=axis, keepdims=True)
    mean = xp.sum(weighted, axis=axis, keepdims=True) / xp.where(total == 0.0, 1.0, total)
    return xp.astype(weighted - mean * s, out_dtype, copy=False)
