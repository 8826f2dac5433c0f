"""Public ev-softmax functions: the delegation layer in front of the core and adapters."""

from __future__ import annotations

from typing import Any

from . import _core
from ._dispatch import call, implementation
from ._lib._compat import array_namespace
from ._lib._prepare import empty_like, is_empty, prepare
from ._lib._typing import Array, Namespace
from ._lib._validation import normalize_axis, validate_epsilon, validate_input

__all__ = ["ev_softmax", "ev_softmax_jvp", "ev_softmax_support", "log_ev_softmax"]


def _compiled_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor seen by ``torch.compile`` (Dynamo) or ``torch.jit.trace``.

    The generic path (namespace lookup, lazy adapter import) is not traceable;
    :mod:`evsoftmax.torch` is, and gives the same results. Only the type's
    module is inspected, so this never imports torch.
    """
    if not type(x).__module__.startswith("torch"):
        return False
    import torch

    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]


def ev_softmax(
    x: Array,
    /,
    *,
    axis: int = -1,
    epsilon: float = 0.0,
    where: Any = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Evidential softmax along ``axis``: softmax over the entries at or above the mean.

    .. math::

        p_k \propto \bigl(1\{x_k \ge \bar x\} + \varepsilon\bigr)\, e^{x_k},
        \qquad \bar x = \text{mean of the valid entries of the row}

    With ``epsilon = 0`` (ev-softmax, Chen et al. 2021, Eq. 7) entries below the
    row mean get exactly zero probability; ``epsilon > 0`` gives the paper's
    training-time family (Eq. 10), which has full support and converges to
    ev-softmax as ``epsilon -> 0``.

    Parameters
    ----------
    x : array
        Scores (logits). Integer arrays are promoted to the namespace's default
        floating dtype; float16/bfloat16 are accumulated in float32. The mask
        of a NumPy masked array acts as ``where=False`` (the result is then a
        plain ndarray).
    axis : int, default -1
        The axis to normalize over.
    epsilon : float, default 0.0
        Weight of the entries outside the support; finite and ``>= 0``. Any
        finite value gives finite probabilities (computed with the weights
        ``1`` and ``epsilon / (1 + epsilon)``, which Eq. 10 is proportional to).
    where : bool array, optional
        Entries to include, broadcastable to ``x``; an array of another library
        is converted (DLPack, else NumPy). Entries equal to ``-inf``
        are excluded too. Excluded entries get probability 0; a row with no
        included entry returns all zeros.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Probabilities of ``x``'s shape, dtype and device; each row sums to 1.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.ev_softmax(np.array([0.4, 1.4, -0.8])).round(2)
    array([0.27, 0.73, 0.  ])
    """
    if _compiled_torch(x):
        from .torch import ev_softmax as torch_ev_softmax

        return torch_ev_softmax(x, dim=axis, epsilon=epsilon, where=where)
    x, axis, where, xp = prepare(x, axis, where, xp)
    epsilon = validate_epsilon(epsilon)
    return call("ev_softmax", _core.ev_softmax, x, xp=xp, axis=axis, epsilon=epsilon, where=where)


def log_ev_softmax(
    x: Array,
    /,
    *,
    axis: int = -1,
    epsilon: float = 0.0,
    where: Any = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Logarithm of :func:`ev_softmax`, computed in log space.

    .. math::

        \log p_k = \log\bigl(1\{x_k \ge \bar x\} + \varepsilon\bigr) + x_k
                   - \log \sum_{l} \bigl(1\{x_l \ge \bar x\} + \varepsilon\bigr) e^{x_l}

    For ``epsilon > 0`` every valid entry is finite, even for logits such as
    ``[1000, -1000, 0]``; with ``epsilon = 0`` entries outside the support are
    ``-inf``. Excluded entries (``where=False`` or ``-inf``) are ``-inf``.

    Parameters
    ----------
    x : array
        Scores (logits); a NumPy masked array's mask acts as ``where=False``.
    axis : int, default -1
        The axis to normalize over.
    epsilon : float, default 0.0
        Weight of the entries outside the support; finite and ``>= 0``.
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
    >>> evs.log_ev_softmax(np.array([1000.0, -1000.0, 0.0]), epsilon=1e-6).round(2)
    array([    0.  , -2013.82, -1000.  ])
    """
    if _compiled_torch(x):
        from .torch import log_ev_softmax as torch_log_ev_softmax

        return torch_log_ev_softmax(x, dim=axis, epsilon=epsilon, where=where)
    x, axis, where, xp = prepare(x, axis, where, xp)
    epsilon = validate_epsilon(epsilon)
    return call(
        "log_ev_softmax", _core.log_ev_softmax, x, xp=xp, axis=axis, epsilon=epsilon, where=where
    )


def ev_softmax_support(
    x: Array,
    /,
    *,
    axis: int = -1,
    where: Any = None,
    xp: Namespace | None = None,
) -> Array:
    """Boolean mask of the entries ev-softmax keeps: valid entries at or above the row mean.

    The row maximum is always included; rows with NaN or +inf have an empty support.

    Parameters
    ----------
    x : array
        Scores (logits); a NumPy masked array's mask acts as ``where=False``.
    axis : int, default -1
        The axis the mean is taken over.
    where : bool array, optional
        Entries to include, broadcastable to ``x``.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        A boolean array of ``x``'s shape.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> evs.ev_softmax_support(np.array([0.4, 1.4, -0.8]))
    array([ True,  True, False])
    """
    if _compiled_torch(x):
        from .torch import ev_softmax_support as torch_ev_softmax_support

        return torch_ev_softmax_support(x, dim=axis, where=where)
    x, axis, where, xp = prepare(x, axis, where, xp)
    return call(
        "ev_softmax_support",
        _core.ev_softmax_support,
        x,
        xp=xp,
        empty_dtype=xp.bool,
        axis=axis,
        where=where,
    )


def ev_softmax_jvp(
    probs: Array,
    tangent: Array,
    /,
    *,
    axis: int = -1,
    xp: Namespace | None = None,
) -> Array:
    r"""Jacobian-vector product of ev-softmax: :math:`p \odot (t - \langle p, t \rangle)`.

    The Jacobian :math:`\partial p_i / \partial x_j = p_i(\delta_{ij} - p_j)` is
    symmetric and the same for every ``epsilon`` (the support indicator is
    locally constant), so this is also the vector-Jacobian product.

    Parameters
    ----------
    probs : array
        The output of :func:`ev_softmax` (any ``epsilon``).
    tangent : array
        The tangent (JVP) or cotangent (VJP), of ``probs``'s shape.
    axis : int, default -1
        The normalized axis.
    xp : namespace, optional
        The array namespace; inferred from the inputs when omitted.

    Returns
    -------
    array
        An array of ``probs``'s shape.

    Examples
    --------
    >>> import numpy as np
    >>> import evsoftmax as evs
    >>> p = evs.ev_softmax(np.array([0.0, 0.0, -5.0]))
    >>> evs.ev_softmax_jvp(p, np.array([1.0, 0.0, 1.0]))
    array([ 0.25, -0.25,  0.  ])
    """
    xp = array_namespace(probs, tangent) if xp is None else xp
    probs = validate_input(probs, xp, "probs")
    tangent = validate_input(tangent, xp, "tangent")
    if tuple(probs.shape) != tuple(tangent.shape):
        raise ValueError(
            f"tangent must have the shape of probs {tuple(probs.shape)}, got {tuple(tangent.shape)}"
        )
    axis = normalize_axis(axis, probs.ndim)
    if is_empty(probs):
        return empty_like(probs, xp, dtype=xp.result_type(probs, tangent))
    impl = implementation("ev_softmax_jvp", xp, _core.ev_softmax_jvp)
    return impl(probs, tangent, axis=axis, xp=xp)
