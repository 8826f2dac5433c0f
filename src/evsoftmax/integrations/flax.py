r"""ev-softmax for ``flax.nnx``: modules ``EvSoftmax`` and ``LogEvSoftmax``, and
``ev_dot_product_attention`` for ``nnx.MultiHeadAttention(attention_fn=...)``.

The paper's protocol, spelled the way ``nnx.Dropout`` spells it: a module
trains with the full-support family
:math:`p \propto (1\{x \ge \bar x\} + \varepsilon) e^x` (``deterministic=False``)
and evaluates with :math:`\varepsilon = 0`, the sparse ev-softmax
(``deterministic=True``). ``model.train()`` and ``model.eval()`` set
``deterministic`` on every nested module, and a ``deterministic=`` argument
to the call overrides the attribute for that call. ``axis`` and ``epsilon``
are static Python values, so ``nnx.jit`` compiles one version per mode.

Importing this module imports Flax and JAX; ``import evsoftmax`` never does.

Examples
--------
>>> import jax.numpy as jnp
>>> import numpy as np
>>> from flax import nnx
>>> from evsoftmax.integrations.flax import EvSoftmax
>>> layer = EvSoftmax(epsilon=0.1)
>>> x = jnp.array([0.0, 1.0, 2.0])
>>> print(np.asarray(layer(x)).round(4))            # training: full support
[0.0089 0.2665 0.7245]
>>> layer.eval()
>>> print(np.asarray(layer(x)).round(4))            # evaluation: exact zeros below the mean
[0.     0.2689 0.7311]
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from .._lib._validation import validate_epsilon
from ._modes import heads_attention, normalize

__all__ = ["EvSoftmax", "LogEvSoftmax", "ev_dot_product_attention"]


class _EvSoftmaxBase(nnx.Module):
    _log = False

    def __init__(self, axis: int = -1, epsilon: float = 1e-6, *, deterministic: bool = False):
        self.axis = axis
        self.epsilon = validate_epsilon(epsilon)
        self.deterministic = deterministic

    def __call__(self, x: Any, *, where: Any = None, deterministic: bool | None = None) -> Any:
        evaluating = self.deterministic if deterministic is None else deterministic
        return normalize(
            x,
            axis=self.axis,
            epsilon=self.epsilon,
            where=where,
            evaluating=evaluating,
            log=self._log,
        )


class EvSoftmax(_EvSoftmaxBase):
    r"""ev-softmax as an ``nnx.Module``: ``epsilon`` while training, sparse when deterministic.

    Parameters
    ----------
    axis : int, default -1
        The axis to normalize over.
    epsilon : float, default 1e-6
        Weight of the entries below the mean while training; finite and ``>= 0``.
    deterministic : bool, default False
        Evaluation mode (:math:`\varepsilon = 0`); set by ``model.eval()`` and
        cleared by ``model.train()``, like ``nnx.Dropout``'s.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from evsoftmax.integrations.flax import EvSoftmax
    >>> layer = EvSoftmax(epsilon=0.1)
    >>> x = jnp.array([0.0, 1.0, 2.0])
    >>> print(np.asarray(layer(x, deterministic=True)).round(4))
    [0.     0.2689 0.7311]
    """


class LogEvSoftmax(_EvSoftmaxBase):
    r"""Logarithm of :class:`EvSoftmax`: ``epsilon`` while training, 0 when deterministic.

    When deterministic, entries below their row's mean are ``-inf``.

    Parameters
    ----------
    axis : int, default -1
        The axis to normalize over.
    epsilon : float, default 1e-6
        Weight of the entries below the mean while training; finite and ``>= 0``.
    deterministic : bool, default False
        Evaluation mode (:math:`\varepsilon = 0`); set by ``model.eval()``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from evsoftmax.integrations.flax import LogEvSoftmax
    >>> layer = LogEvSoftmax(epsilon=0.5)
    >>> print(np.asarray(layer(jnp.array([2.0, 0.0, -2.0]))).round(4))
    [-0.1323 -2.1323 -5.2309]
    """

    _log = True


def ev_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    bias: Any = None,
    mask: Any = None,
    broadcast_dropout: bool = True,
    dropout_rng: Any = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: Any = None,
    promote_dtype: Any = None,
    is_causal: bool = False,
    *,
    epsilon: float = 0.0,
) -> Any:
    r"""ev-attention with ``nnx.dot_product_attention``'s signature, for ``attention_fn=``.

    ``nnx.MultiHeadAttention(..., attention_fn=ev_dot_product_attention)``
    replaces the softmax of every head by ev-softmax over the query's valid
    keys, computed by :func:`evsoftmax.ev_attention` with O(L + S) memory per
    (batch, head): the score matrix is never formed. Queries with no valid key
    give zeros. To train with the full-support family, bind ε with
    ``functools.partial(ev_dot_product_attention, epsilon=1e-6)``; it applies
    as given (``nnx.MultiHeadAttention`` passes ``deterministic=True`` whenever
    its ``dropout_rate`` is 0, so ``deterministic`` cannot switch it).

    Parameters
    ----------
    query, key, value : jax.Array
        ``[batch..., length, num_heads, depth]``, as ``nnx.dot_product_attention``.
    bias : jax.Array, optional
        Added to the scores; broadcastable to ``[batch..., num_heads, q_length,
        kv_length]``; ``-inf`` entries are masked.
    mask : jax.Array, optional
        Same broadcast; ``False`` entries are masked.
    broadcast_dropout, dropout_rng, precision
        Accepted for the signature; unused.
    dropout_rate, deterministic : float, bool
        Attention dropout is not applied (the weights are never formed): a
        ``dropout_rate > 0`` that is not ``deterministic`` raises ``ValueError``.
    dtype : dtype, optional
        The computation dtype, applied with ``promote_dtype`` as Flax does.
    module : nnx.Module, optional
        Must be None: sowing the attention weights (``sow_weights=True``) would
        need the L x S matrix, so it raises ``ValueError``.
    promote_dtype : callable, optional
        Flax's dtype promotion (default ``flax.nnx.nn.dtypes.promote_dtype``).
    is_causal : bool, default False
        Keep only keys ``j <= i``.
    epsilon : float, default 0.0
        Weight of the keys outside the support; finite and ``>= 0``.

    Returns
    -------
    jax.Array
        ``[batch..., q_length, num_heads, v_depth]``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from evsoftmax.integrations.flax import ev_dot_product_attention
    >>> layer = nnx.MultiHeadAttention(
    ...     num_heads=2, in_features=8, decode=False, rngs=nnx.Rngs(0),
    ...     attention_fn=ev_dot_product_attention,
    ... )
    >>> layer(jnp.ones((1, 5, 8))).shape
    (1, 5, 8)
    """
    if dropout_rate > 0.0 and not deterministic:
        raise ValueError(
            "dropout_rate: ev_dot_product_attention does not apply attention dropout "
            f"(got dropout_rate={dropout_rate!r} with deterministic=False); use dropout_rate=0"
        )
    if module is not None:
        raise ValueError(
            "sow_weights: ev_dot_product_attention never forms the attention weights, "
            "so it cannot sow them; call the layer with sow_weights=False"
        )
    if promote_dtype is None:
        from flax.nnx.nn import dtypes

        promote_dtype = dtypes.promote_dtype
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    for name, array in (("query", query), ("key", key), ("value", value)):
        if array.ndim < 3:
            raise ValueError(
                f"{name} must be [batch..., length, num_heads, depth] (at least 3-d), "
                f"got shape {array.shape}"
            )
    return heads_attention(
        query, key, value, mask=_bias_and_mask(bias, mask), is_causal=is_causal, epsilon=epsilon
    )


def _bias_and_mask(bias: Any, mask: Any) -> Any:
    """One mask for ``ev_attention``: the bias where ``mask`` holds, ``-inf`` where it does not."""
    import jax.numpy as jnp

    if mask is not None:
        mask = jnp.asarray(mask).astype(bool)
    if bias is None:
        return mask
    if mask is None:
        return bias
    return jnp.where(mask, bias, -jnp.inf)
