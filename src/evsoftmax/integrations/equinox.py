r"""ev-softmax as Equinox layers: ``EvSoftmax``, ``LogEvSoftmax`` and ``EvMultiheadAttention``.

The paper's protocol, spelled the way ``equinox.nn.Dropout`` spells it: a layer
trains with the full-support family
:math:`p \propto (1\{x \ge \bar x\} + \varepsilon) e^x` (``inference=False``)
and evaluates with :math:`\varepsilon = 0`, the sparse ev-softmax
(``inference=True``). ``equinox.nn.inference_mode(model)`` switches every
layer of a model, and an ``inference=`` argument to the call overrides the
field for that call. ``axis`` and ``epsilon`` are static fields; as with
Dropout, ``inference`` is a Python bool, so use ``equinox.filter_jit`` (or
close over the model) rather than passing the model to ``jax.jit``.

Importing this module imports Equinox and JAX; ``import evsoftmax`` never does.

Examples
--------
>>> import equinox as eqx
>>> import jax.numpy as jnp
>>> import numpy as np
>>> from evsoftmax.integrations.equinox import EvSoftmax
>>> layer = EvSoftmax(epsilon=0.1)
>>> x = jnp.array([0.0, 1.0, 2.0])
>>> print(np.asarray(layer(x)).round(4))                           # training: full support
[0.0089 0.2665 0.7245]
>>> print(np.asarray(eqx.nn.inference_mode(layer)(x)).round(4))    # evaluation: sparse
[0.     0.2689 0.7311]
"""

from __future__ import annotations

from typing import Any

import equinox as eqx

from .._lib._validation import validate_epsilon
from ._modes import heads_attention, normalize

__all__ = ["EvMultiheadAttention", "EvSoftmax", "LogEvSoftmax"]


class _EvSoftmaxBase(eqx.Module):
    axis: int = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)
    inference: bool

    def __init__(self, axis: int = -1, epsilon: float = 1e-6, *, inference: bool = False):
        self.axis = axis
        self.epsilon = validate_epsilon(epsilon)
        self.inference = inference

    def _normalize(self, x: Any, where: Any, inference: bool | None, log: bool) -> Any:
        evaluating = self.inference if inference is None else inference
        return normalize(
            x, axis=self.axis, epsilon=self.epsilon, where=where, evaluating=evaluating, log=log
        )


class EvSoftmax(_EvSoftmaxBase):
    r"""ev-softmax as an Equinox layer: ``epsilon`` while training, sparse in inference mode.

    Parameters
    ----------
    axis : int, default -1
        The axis to normalize over.
    epsilon : float, default 1e-6
        Weight of the entries below the mean while training; finite and ``>= 0``.
    inference : bool, default False
        Evaluation mode (:math:`\varepsilon = 0`); set by
        ``equinox.nn.inference_mode``, like ``equinox.nn.Dropout``'s.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from evsoftmax.integrations.equinox import EvSoftmax
    >>> layer = EvSoftmax(epsilon=0.1)
    >>> print(np.asarray(layer(jnp.array([0.0, 1.0, 2.0]), inference=True)).round(4))
    [0.     0.2689 0.7311]
    """

    def __call__(
        self, x: Any, *, where: Any = None, inference: bool | None = None, key: Any = None
    ) -> Any:
        """Normalize ``x`` along ``axis`` (``key`` is accepted and unused, as layers take one)."""
        return self._normalize(x, where, inference, log=False)


class LogEvSoftmax(_EvSoftmaxBase):
    r"""Logarithm of :class:`EvSoftmax`: ``epsilon`` while training, 0 in inference mode.

    In inference mode, entries below their row's mean are ``-inf``.

    Parameters
    ----------
    axis : int, default -1
        The axis to normalize over.
    epsilon : float, default 1e-6
        Weight of the entries below the mean while training; finite and ``>= 0``.
    inference : bool, default False
        Evaluation mode (:math:`\varepsilon = 0`); set by ``equinox.nn.inference_mode``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from evsoftmax.integrations.equinox import LogEvSoftmax
    >>> layer = LogEvSoftmax(epsilon=0.5)
    >>> print(np.asarray(layer(jnp.array([2.0, 0.0, -2.0]))).round(4))
    [-0.1323 -2.1323 -5.2309]
    """

    def __call__(
        self, x: Any, *, where: Any = None, inference: bool | None = None, key: Any = None
    ) -> Any:
        """Log-probabilities of ``x`` along ``axis`` (``key`` is accepted and unused)."""
        return self._normalize(x, where, inference, log=True)


class EvMultiheadAttention(eqx.Module):
    r"""``equinox.nn.MultiheadAttention`` with ev-softmax over each query's valid keys.

    Wraps a ``MultiheadAttention`` and uses its projections unchanged (so a
    trained layer's weights carry over), but computes the attention with
    :func:`evsoftmax.ev_attention`: O(L + S) memory per head, no score matrix.
    ``epsilon`` applies while training and 0 in inference mode, switched by
    ``equinox.nn.inference_mode`` like the other layers here.

    Parameters
    ----------
    attention : equinox.nn.MultiheadAttention
        The layer whose projections are used; its dropout must be 0 (the
        attention weights are never formed, so they cannot be dropped).
    epsilon : float, default 1e-6
        Weight of the keys outside the support while training; finite and ``>= 0``.
    inference : bool, default False
        Evaluation mode (:math:`\varepsilon = 0`).

    Examples
    --------
    >>> import equinox as eqx
    >>> import jax
    >>> from evsoftmax.integrations.equinox import EvMultiheadAttention
    >>> layer = EvMultiheadAttention(eqx.nn.MultiheadAttention(2, 8, key=jax.random.key(0)))
    >>> x = jax.numpy.ones((5, 8))
    >>> layer(x, x, x).shape
    (5, 8)
    """

    attention: eqx.nn.MultiheadAttention
    epsilon: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        attention: eqx.nn.MultiheadAttention,
        epsilon: float = 1e-6,
        *,
        inference: bool = False,
    ):
        if not isinstance(attention, eqx.nn.MultiheadAttention):
            raise TypeError(
                "attention must be an equinox.nn.MultiheadAttention, "
                f"got {type(attention).__name__}"
            )
        if attention.dropout.p != 0:
            raise ValueError(
                "attention: its dropout must be 0 (ev-attention never forms the weights "
                f"to drop), got dropout_p={attention.dropout.p!r}"
            )
        self.attention = attention
        self.epsilon = validate_epsilon(epsilon)
        self.inference = inference

    def __call__(
        self,
        query: Any,
        key_: Any,
        value: Any,
        mask: Any = None,
        *,
        key: Any = None,
        inference: bool | None = None,
        process_heads: Any = None,
    ) -> Any:
        """Attend like ``MultiheadAttention.__call__`` (``key`` is accepted and unused).

        ``mask`` is ``(q_seq, kv_seq)`` or ``(num_heads, q_seq, kv_seq)``, ``False``
        where a key is ignored; ``process_heads`` as in Equinox.
        """
        import jax

        layer = self.attention
        if key_.shape[0] != value.shape[0]:
            raise ValueError("key_ and value must both be sequences of equal length.")
        heads = [
            jax.vmap(projection)(x).reshape(x.shape[0], layer.num_heads, -1)
            for projection, x in (
                (layer.query_proj, query),
                (layer.key_proj, key_),
                (layer.value_proj, value),
            )
        ]
        if process_heads is not None:
            heads = list(process_heads(*heads))
        evaluating = self.inference if inference is None else inference
        out = heads_attention(
            *heads,
            mask=mask,
            is_causal=False,
            epsilon=0.0 if evaluating else self.epsilon,
        )
        return jax.vmap(layer.output_proj)(out.reshape(query.shape[0], -1))
