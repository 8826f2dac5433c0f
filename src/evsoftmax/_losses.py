r"""Training losses: ev-softmax NLL and KL; Fenchel-Young losses of sparsemax and 1.5-entmax.

Each normalizer has its natural loss. ev-softmax is trained with the
log-likelihood of its ε-family (paper Eq. 10), whose gradient tends to the
softmax cross-entropy form ``p - onehot(target)`` as ε -> 0 (Eq. 12).
Sparsemax and entmax assign zero probability to classes, so their
log-likelihood is -inf; they are trained with the Fenchel-Young loss
(Blondel, Martins & Niculae 2020)

.. math::

    L(z; y) = H^T_\alpha(p^\star) + \langle p^\star - e_y, z \rangle,
    \qquad p^\star = \operatorname{entmax}_\alpha(z),

which is >= 0, zero exactly when :math:`p^\star = e_y`, and has gradient
:math:`p^\star - e_y`.

Class-index targets have the logits' shape without ``axis`` (the class axis),
so the class axis may be anywhere, as in ``torch.nn.CrossEntropyLoss``
(``axis=1``). Positions whose target equals ``ignore_index`` contribute 0 and
are left out of the mean; if every position is ignored the mean is NaN (0/0,
as in PyTorch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _core, _entmax, _sparsemax
from ._dispatch import implementation
from ._lib._compat import device
from ._lib._prepare import empty_like, is_empty, prepare
from ._lib._typing import Array, Namespace
from ._lib._validation import (
    check_floating,
    index_dtype,
    namespace_of,
    validate_epsilon,
    validate_index,
)

__all__ = ["entmax15_loss", "ev_softmax_kl_div", "ev_softmax_nll_loss", "sparsemax_loss"]

_REDUCTIONS = ("mean", "sum", "none")


# -- validation at the public edge -------------------------------------------------------


def _validate_reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return str(reduction)


def _validate_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    return validate_index(ignore_index, "ignore_index")


def _require_array(value: Any, name: str, what: str) -> None:
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name} must be an array of {what}, got {type(value).__name__}")


def _validate_target(target: Any, logits: Array, axis: int, xp: Namespace) -> Array:
    """Class indices of the logits' shape without ``axis``, as the default integer dtype.

    Narrow or unsigned targets (uint8 with 300 classes, torch uint32) are
    widened once here, so that every comparison with class numbers is exact.
    """
    if isinstance(target, np.ma.MaskedArray):
        raise TypeError("target must be a plain integer array, got a masked array")
    if xp.isdtype(target.dtype, "bool") or not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    expected = tuple(logits.shape[:axis]) + tuple(logits.shape[axis + 1 :])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} (the logits' shape {tuple(logits.shape)} "
            f"without axis {axis}), got {tuple(target.shape)}"
        )
    return xp.astype(target, index_dtype(xp, device(target)), copy=False)


def _out_of_range(target: Array, n_classes: int, ignore_index: int | None) -> Array:
    """Positions whose target is neither a class index in ``[0, n_classes)`` nor ignored."""
    bad = (target < 0) | (target >= n_classes)
    return bad if ignore_index is None else bad & (target != ignore_index)


def _check_target_range(
    target: Array, n_classes: int, ignore_index: int | None, xp: Namespace
) -> None:
    """Raise ``ValueError`` for out-of-range targets when the values are known.

    Under tracing (``jax.jit``, ``torch.func.vmap``) the values are not known;
    the loss of those positions is then NaN instead (see ``_class_loss``).
    """
    bad = xp.any(_out_of_range(target, n_classes, ignore_index))
    try:
        found = bool(bad)
    except Exception:  # a tracer: no concrete value to check
        return
    if found:
        low, high = int(xp.min(target)), int(xp.max(target))
        allowed = f"[0, {n_classes})" + ("" if ignore_index is None else f" or {ignore_index}")
        raise ValueError(
            f"target must hold class indices in {allowed} (ignore_index), "
            f"got values in [{low}, {high}]"
        )


def _prepare_class_loss(
    logits: Any, target: Any, axis: Any, where: Any, ignore_index: Any, reduction: Any, xp: Any
) -> tuple[Array, Array, int, Array | None, int | None, str, Namespace]:
    """Validate the arguments every class-index loss shares."""
    _require_array(target, "target", "class indices")
    xp = namespace_of(("logits", logits), ("target", target)) if xp is None else xp
    logits, axis, where, xp = prepare(logits, axis, where, xp, "logits")
    target = _validate_target(target, logits, axis, xp)
    ignore_index = _validate_ignore_index(ignore_index)
    reduction = _validate_reduction(reduction)
    _check_target_range(target, logits.shape[axis], ignore_index, xp)
    return logits, target, axis, where, ignore_index, reduction, xp


# -- array-API implementations (validated arguments) ------------------------------------


def _normalized(
    name: str, fallback: Callable[..., Array], x: Array, xp: Namespace, **kw: Any
) -> Array:
    """The public normalizer ``name`` (adapter or array-API fallback) of validated ``x``."""
    if is_empty(x):
        return empty_like(x, xp)
    return implementation(name, xp, fallback)(x, xp=xp, **kw)


def _pick(values: Array, target: Array, axis: int, xp: Namespace) -> Array:
    """``values`` at the target class of each position (a one-hot sum, no gather)."""
    shape = [1] * values.ndim
    shape[axis] = values.shape[axis]
    # target has the default integer dtype (see _validate_target): no class number wraps.
    classes = xp.arange(values.shape[axis], dtype=target.dtype, device=device(target))
    onehot = xp.expand_dims(target, axis=axis) == xp.reshape(classes, tuple(shape))
    return xp.sum(xp.where(onehot, values, 0.0), axis=axis)


def _reduce(loss: Array, count: Array | None, reduction: str, xp: Namespace) -> Array:
    """Apply ``reduction``; the mean divides by ``count`` (default: the number of positions)."""
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    if count is None:
        count = xp.asarray(math.prod(loss.shape), dtype=loss.dtype, device=device(loss))
    return xp.where(count == 0, math.nan, total / xp.where(count == 0, 1.0, count))


def _class_loss(
    loss: Array,
    target: Array,
    n_classes: int,
    ignore_index: int | None,
    reduction: str,
    dtype: object,
    xp: Namespace,
) -> Array:
    """Zero the ignored positions, mark out-of-range targets NaN, reduce, cast to ``dtype``."""
    loss = xp.where(_out_of_range(target, n_classes, ignore_index), math.nan, loss)
    if ignore_index is None:
        return xp.astype(_reduce(loss, None, reduction, xp), dtype, copy=False)
    keep = target != ignore_index
    loss = xp.where(keep, loss, 0.0)
    count = xp.sum(xp.astype(keep, loss.dtype))
    return xp.astype(_reduce(loss, count, reduction, xp), dtype, copy=False)


def _accumulate(x: Array, xp: Namespace) -> Array:
    return xp.astype(x, _core.accumulation_dtype(x.dtype, xp), copy=False)


def _nll(
    logits: Array,
    target: Array,
    *,
    axis: int,
    epsilon: float,
    where: Array | None,
    ignore_index: int | None,
    reduction: str,
    xp: Namespace,
) -> Array:
    log_probs = _normalized(
        "log_ev_softmax", _core.log_ev_softmax, logits, xp, axis=axis, epsilon=epsilon, where=where
    )
    loss = -_pick(_accumulate(log_probs, xp), target, axis, xp)
    n_classes = logits.shape[axis]
    return _class_loss(loss, target, n_classes, ignore_index, reduction, logits.dtype, xp)


def _kl(
    logits: Array,
    target_probs: Array,
    *,
    axis: int,
    epsilon: float,
    where: Array | None,
    reduction: str,
    xp: Namespace,
) -> Array:
    log_probs = _normalized(
        "log_ev_softmax", _core.log_ev_softmax, logits, xp, axis=axis, epsilon=epsilon, where=where
    )
    log_probs = _accumulate(log_probs, xp)
    q = xp.astype(target_probs, log_probs.dtype, copy=False)
    positive = q > 0.0
    # 0 log 0 = 0. Placeholders keep the unused branch finite (-inf log-probabilities
    # where q = 0), so no 0 * inf reaches the gradient.
    log_q = xp.log(xp.where(positive, q, 1.0))
    log_p = xp.where(positive, log_probs, 0.0)
    loss = xp.sum(xp.where(positive, q * (log_q - log_p), 0.0), axis=axis)
    return xp.astype(_reduce(loss, None, reduction, xp), logits.dtype, copy=False)


def _tsallis_sparsemax(p: Array, axis: int, xp: Namespace) -> Array:
    """Tsallis 2-entropy (Gini): :math:`(1 - \\sum p^2) / 2`."""
    return (1.0 - xp.sum(p * p, axis=axis)) / 2.0


def _tsallis_entmax15(p: Array, axis: int, xp: Namespace) -> Array:
    """Tsallis 1.5-entropy: :math:`(1 - \\sum p^{3/2}) / (3/4)`."""
    # p ** 1.5 (not p * sqrt(p)) keeps the derivative finite at p = 0.
    return (1.0 - xp.sum(p**1.5, axis=axis)) / 0.75


def _fenchel_young(
    probs: Array,
    entropy: Callable[[Array, int, Namespace], Array],
    logits: Array,
    target: Array,
    axis: int,
    where: Array | None,
    xp: Namespace,
) -> Array:
    """Per-position :math:`H(p) + \\langle p, z \\rangle - z_y` (before reduction).

    Excluded classes count as ``z = -inf``: a target there has an infinite loss.
    """
    p = _accumulate(probs, xp)
    z = _accumulate(logits, xp)
    if where is not None:
        z = xp.where(where, z, -math.inf)
    # Off the support p = 0 while z may be -inf (excluded): keep 0 * -inf out of the sum.
    on_support = p > 0.0
    inner = xp.sum(p * xp.where(on_support, z, 0.0), axis=axis)
    return entropy(p, axis, xp) + inner - _pick(z, target, axis, xp)


def _fenchel_young_loss(
    name: str, fallback: Callable[..., Array], entropy: Callable[[Array, int, Namespace], Array]
) -> Callable[..., Array]:
    """The array-API Fenchel-Young loss of the normalizer ``name`` with Tsallis ``entropy``."""

    def loss(
        logits: Array,
        target: Array,
        *,
        axis: int,
        where: Array | None,
        ignore_index: int | None,
        reduction: str,
        xp: Namespace,
    ) -> Array:
        probs = _normalized(name, fallback, logits, xp, axis=axis, where=where)
        per_position = _fenchel_young(probs, entropy, logits, target, axis, where, xp)
        n_classes = logits.shape[axis]
        return _class_loss(
            per_position, target, n_classes, ignore_index, reduction, logits.dtype, xp
        )

    return loss


_sparsemax_loss = _fenchel_young_loss("sparsemax", _sparsemax.sparsemax, _tsallis_sparsemax)
_entmax15_loss = _fenchel_young_loss("entmax15", _entmax.entmax15, _tsallis_entmax15)


def _class_loss_call(
    name: str, fallback: Callable[..., Array], args: tuple[Any, ...], **options: Any
) -> Array:
    """Validate ``(logits, target, axis, where, ignore_index, reduction, xp)`` and dispatch."""
    logits, target, axis, where, ignore_index, reduction, xp = _prepare_class_loss(*args)
    impl = implementation(name, xp, fallback)
    return impl(
        logits,
        target,
        axis=axis,
        where=where,
        ignore_index=ignore_index,
        reduction=reduction,
        xp=xp,
        **options,
    )


# -- public functions ----------------------------------------------------------------------


def ev_softmax_nll_loss(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    epsilon: float = 1e-6,
    where: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    xp: Namespace | None = None,
) -> Array:
    r"""Negative log-likelihood of class indices under ev-softmax's training family (Eq. 10).

    .. math::

        \ell = -\log p_\varepsilon[y], \qquad
        p_\varepsilon \propto (1\{x \ge \bar x\} + \varepsilon)\, e^{x}

    Finite for every ``epsilon > 0``; its gradient is
    :math:`\nabla_x \ell = p_\varepsilon - e_y` on the support, which tends to the
    softmax cross-entropy form :math:`p - e_y` as ``epsilon -> 0`` (paper Eq. 12).

    Parameters
    ----------
    logits : array
        Scores, with the classes along ``axis``.
    target : integer array
        Class indices, of the logits' shape without ``axis``.
    axis : int, default -1
        The class axis (``1`` for PyTorch's ``(N, C, ...)`` layout).
    epsilon : float, default 1e-6
        The training-time ε of the paper (finite, ``>= 0``; 0 gives an infinite
        loss whenever the target is outside the support).
    where : bool array, optional
        Classes to include, broadcastable to ``logits``; ``-inf`` logits are
        excluded too. A target on an excluded class has an infinite loss.
    ignore_index : int, optional
        Target value whose positions contribute 0 and are left out of the mean.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the loss of every position (the target's shape).
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array
        The loss, in the logits' dtype: 0-d for ``"mean"`` and ``"sum"``.

    Raises
    ------
    TypeError
        If ``target`` is not an integer array.
    ValueError
        If ``target`` has the wrong shape or (when its values are known, i.e.
        not under tracing) holds values outside ``[0, C)`` other than
        ``ignore_index``. Under ``jax.jit`` those positions give NaN instead.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> logits = np.array([[0.4, 1.4, -0.8], [0.0, 0.0, 3.0]])
    >>> evs.ev_softmax_nll_loss(logits, np.array([1, 2]), reduction="none").round(3)
    array([0.313, 0.   ])
    """
    args = (logits, target, axis, where, ignore_index, reduction, xp)
    epsilon = validate_epsilon(epsilon)
    return _class_loss_call("ev_softmax_nll_loss", _nll, args, epsilon=epsilon)


def ev_softmax_kl_div(
    logits: Array,
    target_probs: Array,
    /,
    *,
    axis: int = -1,
    epsilon: float = 1e-6,
    where: Any = None,
    reduction: str = "mean",
    xp: Namespace | None = None,
) -> Array:
    r"""KL divergence :math:`\mathrm{KL}(q \,\|\, p_\varepsilon)` of ev-softmax from a target.

    .. math::

        \mathrm{KL}(q \,\|\, p_\varepsilon) = \sum_k q_k (\log q_k - \log p_{\varepsilon,k}),
        \qquad 0 \log 0 = 0

    Finite for ``epsilon > 0`` whenever ``q`` lives on the included classes;
    its gradient with respect to the logits is :math:`p_\varepsilon \sum_k q_k - q`.

    Parameters
    ----------
    logits : array
        Scores, with the classes along ``axis``.
    target_probs : array
        Target distribution :math:`q`, of the logits' shape (not checked to sum
        to one; cast to the logits' floating dtype).
    axis : int, default -1
        The class axis.
    epsilon : float, default 1e-6
        The training-time ε of the paper (finite, ``>= 0``).
    where : bool array, optional
        Classes to include, broadcastable to ``logits``; ``-inf`` logits are
        excluded too. Target mass on an excluded class gives an infinite loss.
    reduction : {"mean", "sum", "none"}, default "mean"
        Over the rows (positions), not the elements: ``"mean"`` is PyTorch's
        ``"batchmean"``; ``"none"`` returns one value per row.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array
        The divergence in the logits' dtype: 0-d for ``"mean"`` and ``"sum"``,
        else the logits' shape without ``axis``.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> q = np.array([0.5, 0.5, 0.0])
    >>> evs.ev_softmax_kl_div(np.array([1.0, 1.0, -2.0]), q).round(6)
    np.float64(0.0)
    """
    _require_array(target_probs, "target_probs", "probabilities")
    xp = namespace_of(("logits", logits), ("target_probs", target_probs)) if xp is None else xp
    logits, axis, where, xp = prepare(logits, axis, where, xp, "logits")
    target_probs = check_floating(target_probs, xp, "target_probs")
    if tuple(target_probs.shape) != tuple(logits.shape):
        raise ValueError(
            f"target_probs must have the logits' shape {tuple(logits.shape)}, "
            f"got {tuple(target_probs.shape)}"
        )
    epsilon = validate_epsilon(epsilon)
    reduction = _validate_reduction(reduction)
    impl = implementation("ev_softmax_kl_div", xp, _kl)
    return impl(
        logits, target_probs, axis=axis, epsilon=epsilon, where=where, reduction=reduction, xp=xp
    )


def sparsemax_loss(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    where: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    xp: Namespace | None = None,
) -> Array:
    r"""Sparsemax loss: the Fenchel-Young loss of :func:`sparsemax` (Martins & Astudillo 2016).

    .. math::

        \ell(z; y) = \frac{1 - \lVert p^\star \rVert^2}{2}
                     + \langle p^\star - e_y, z \rangle,
        \qquad p^\star = \operatorname{sparsemax}(z)

    Non-negative, zero exactly when ``sparsemax(z)`` is the one-hot target,
    and its gradient is :math:`p^\star - e_y`. Arguments and results follow
    :func:`ev_softmax_nll_loss` (without ``epsilon``).

    Parameters
    ----------
    logits : array
        Scores, with the classes along ``axis``.
    target : integer array
        Class indices, of the logits' shape without ``axis``.
    axis : int, default -1
        The class axis.
    where : bool array, optional
        Classes to include, broadcastable to ``logits``; ``-inf`` logits are
        excluded too. A target on an excluded class has an infinite loss.
    ignore_index : int, optional
        Target value whose positions contribute 0 and are left out of the mean.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the loss of every position (the target's shape).
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array
        The loss, in the logits' dtype: 0-d for ``"mean"`` and ``"sum"``.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> logits = np.array([[0.4, 1.4, -0.8], [0.4, 1.4, -0.8]])
    >>> evs.sparsemax_loss(logits, np.array([1, 0]), reduction="none")
    array([0., 1.])
    """
    args = (logits, target, axis, where, ignore_index, reduction, xp)
    return _class_loss_call("sparsemax_loss", _sparsemax_loss, args)


def entmax15_loss(
    logits: Array,
    target: Array,
    /,
    *,
    axis: int = -1,
    where: Any = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    xp: Namespace | None = None,
) -> Array:
    r"""1.5-entmax loss: the Fenchel-Young loss of :func:`entmax15` (Peters et al. 2019).

    .. math::

        \ell(z; y) = \frac{1 - \sum_k (p^\star_k)^{3/2}}{3/4}
                     + \langle p^\star - e_y, z \rangle,
        \qquad p^\star = \operatorname{entmax}_{1.5}(z)

    Non-negative, zero exactly when ``entmax15(z)`` is the one-hot target, and
    its gradient is :math:`p^\star - e_y`. Arguments and results follow
    :func:`ev_softmax_nll_loss` (without ``epsilon``).

    Parameters
    ----------
    logits : array
        Scores, with the classes along ``axis``.
    target : integer array
        Class indices, of the logits' shape without ``axis``.
    axis : int, default -1
        The class axis.
    where : bool array, optional
        Classes to include, broadcastable to ``logits``; ``-inf`` logits are
        excluded too. A target on an excluded class has an infinite loss.
    ignore_index : int, optional
        Target value whose positions contribute 0 and are left out of the mean.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the loss of every position (the target's shape).
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array
        The loss, in the logits' dtype: 0-d for ``"mean"`` and ``"sum"``.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.entmax15_loss(np.array([[0.0, 3.0, -1.0]]), np.array([1])).round(6)
    np.float64(0.0)
    """
    args = (logits, target, axis, where, ignore_index, reduction, xp)
    return _class_loss_call("entmax15_loss", _entmax15_loss, args)
