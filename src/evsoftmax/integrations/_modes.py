"""What the Flax and Equinox integrations share: the train/eval ε convention.

Both frameworks spell evaluation mode differently (``deterministic`` in
``flax.nnx``, ``inference`` in Equinox), but the rule is one: ε while
training, 0 (the sparse ev-softmax) while evaluating.
"""

from __future__ import annotations

from typing import Any


def normalize(x: Any, *, axis: int, epsilon: float, where: Any, evaluating: bool, log: bool) -> Any:
    """ev-softmax (``log=False``) or its logarithm of ``x``, ε only while training."""
    from ..jax import ev_softmax, log_ev_softmax

    function = log_ev_softmax if log else ev_softmax
    return function(x, axis=axis, epsilon=0.0 if evaluating else epsilon, where=where)


def heads_attention(
    query: Any, key: Any, value: Any, *, mask: Any, is_causal: bool, epsilon: float
) -> Any:
    """ev-attention of ``(..., L, heads, E)`` heads (Flax's and Equinox's layout).

    ``evsoftmax.ev_attention`` takes ``(..., heads, L, E)``; the heads axis is
    swapped in and out, and ``mask`` (broadcastable to ``(..., heads, L, S)``)
    is passed through.
    """
    import jax.numpy as jnp

    from .. import ev_attention

    q, k, v = (jnp.swapaxes(a, -3, -2) for a in (query, key, value))
    out = ev_attention(q, k, v, mask=mask, is_causal=is_causal, epsilon=epsilon)
    return jnp.swapaxes(out, -3, -2)
