r"""ev-attention as a Hugging Face ``transformers`` attention implementation: ``"ev_softmax"``.

:func:`register` adds the name ``"ev_softmax"`` to ``transformers``'
``AttentionInterface`` (the attention function) and ``AttentionMaskInterface``
(the mask function). Models that dispatch through those interfaces (Llama,
Mistral, Qwen, Gemma, ... in ``transformers >= 5``) then accept
``attn_implementation="ev_softmax"`` at construction and
``model.set_attn_implementation("ev_softmax")`` later.

Why the mask function matters: the ``"eager"`` mask fills masked positions
with ``torch.finfo(dtype).min``, a finite number that would drag every
ev-softmax threshold (the mean of the valid scores) down to about
``finfo.min / S``, putting every key in the support. The mask registered here
is ``transformers``' boolean SDPA mask (``True`` = attend), or ``None`` where a
plain causal mask suffices, so padded and future keys reach ev-attention as
excluded keys. A prepared 4-D floating mask passed to the model directly is
read the same way: its ``finfo(dtype).min`` entries count as excluded.

Conventions:

* **ε** (the training-time family, DESIGN §3): the attention uses
  ``config.ev_softmax_epsilon`` (default ``1e-6``, as
  :class:`evsoftmax.torch.EvMultiheadAttention`) while the attention module is
  in ``train()`` mode and ``0`` (sparse ev-softmax) in ``eval()`` mode.
* **Dropout** on the attention weights would need the ``L x S`` matrix, so a
  nonzero ``dropout`` (``config.attention_dropout`` while training) raises
  ``ValueError``.
* **Grouped-query attention** (``num_key_value_heads < num_attention_heads``)
  broadcasts each key/value head over its query heads; nothing is repeated.
* ``output_attentions=True`` returns the dense ``(B, H, L, S)`` weights (it
  forms that matrix, as ``"eager"`` does); otherwise the weights are ``None``
  and memory stays O(L + S) per head.

Importing this module imports torch and ``transformers``;
``import evsoftmax`` never does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from .._lib._validation import validate_epsilon
from .._torch_attention import ev_attention
from ..adapters.torch.attention import probabilities

__all__ = ["EPSILON", "NAME", "ev_softmax_attention_forward", "ev_softmax_mask", "register"]

NAME = "ev_softmax"
"""The ``attn_implementation`` name :func:`register` adds."""

EPSILON = 1e-6
"""ε while training when the model's config has no ``ev_softmax_epsilon``."""

# Keyword arguments other implementations act on that ev-attention cannot honour.
_UNSUPPORTED = ("softcap", "s_aux", "position_bias")


def ev_softmax_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The mask function registered for ``"ev_softmax"``: ``transformers``' boolean SDPA mask.

    A ``(batch, 1, q_length, kv_length)`` boolean tensor (``True`` = attend),
    or ``None`` where the causal flag alone is exact, as for ``"sdpa"``.
    Takes the arguments of ``transformers.masking_utils.sdpa_mask``.

    Examples
    --------
    >>> from evsoftmax.integrations.transformers import ev_softmax_mask
    >>> ev_softmax_mask(batch_size=1, q_length=2, kv_length=2, allow_is_causal_skip=False)
    tensor([[[[ True, False],
              [ True,  True]]]])
    """
    return sdpa_mask(*args, **kwargs)


def ev_softmax_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ev-attention with the signature of a ``transformers`` attention function.

    Parameters
    ----------
    module : torch.nn.Module
        The calling attention layer: its ``training`` flag selects ε, its
        ``is_causal`` (default True) applies when no mask is given, and its
        ``config.ev_softmax_epsilon`` (if set) is the training ε.
    query : torch.Tensor
        ``(batch, heads, q_length, head_dim)``.
    key, value : torch.Tensor
        ``(batch, kv_heads, kv_length, head_dim)``; ``heads`` a multiple of ``kv_heads``.
    attention_mask : torch.Tensor or None
        Broadcastable to ``(batch, heads, q_length, kv_length)``: boolean
        (``True`` = attend) or additive (``-inf`` or ``finfo(dtype).min`` excluded).
    scaling : float, optional
        Score scale; default ``1/sqrt(head_dim)``.
    dropout : float, default 0.0
        Must be 0 (see the module docstring).
    **kwargs
        ``is_causal`` overrides ``module.is_causal``; ``output_attentions=True``
        also returns the weights; ``softcap``, ``s_aux`` and ``position_bias``
        are refused; the others are ignored.

    Returns
    -------
    tuple of torch.Tensor and (torch.Tensor or None)
        ``(batch, q_length, heads, head_dim)`` output, the layout of
        ``transformers``' sdpa and eager functions, and the
        ``(batch, heads, q_length, kv_length)`` weights or ``None``.

    Examples
    --------
    >>> import torch
    >>> from evsoftmax.integrations.transformers import ev_softmax_attention_forward
    >>> q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    >>> out, weights = ev_softmax_attention_forward(torch.nn.Module().eval(), q, k, v, None)
    >>> out.shape, weights
    (torch.Size([1, 3, 4, 8]), None)
    """
    if dropout != 0.0:
        raise ValueError(
            f"dropout must be 0 for attn_implementation={NAME!r} (dropout of the attention "
            f"weights would form the L x S matrix; set config.attention_dropout = 0), "
            f"got {dropout!r}"
        )
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"attn_implementation={NAME!r} does not support {name}")
    batch, heads, length, features = query.shape
    kv_heads = key.shape[1]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(
            f"query's {heads} heads must be a multiple of key's {kv_heads} key/value heads"
        )
    groups = heads // kv_heads
    mask = _excluded_as_such(attention_mask)
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    # As transformers' sdpa: without a mask, a single query attends to the whole cache,
    # and a longer block is causal (top-left aligned, which the mask function checked).
    is_causal = bool(is_causal) and mask is None and length > 1
    epsilon = _epsilon(module)
    # Query heads grouped by their key/value head: (B, kv_heads, groups, L, E).
    q = query.reshape(batch, kv_heads, groups, length, features)
    k, v = key.unsqueeze(2), value.unsqueeze(2)
    if mask is not None:
        mask = _grouped(mask, heads, kv_heads, groups)
    out = ev_attention(q, k, v, mask, is_causal, scaling, epsilon)
    weights = None
    if kwargs.get("output_attentions"):
        scale = 1.0 / math.sqrt(features) if scaling is None else scaling
        weights = probabilities(q, k.to(q.dtype), mask, is_causal, scale, epsilon)
        weights = weights.reshape(batch, heads, length, key.shape[-2]).to(query.dtype)
    out = out.reshape(batch, heads, length, value.shape[-1]).transpose(1, 2).contiguous()
    return out, weights


def _excluded_as_such(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A floating mask with its ``finfo.min`` fill (the eager convention) as ``-inf``."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    return mask.masked_fill(mask <= torch.finfo(mask.dtype).min, -math.inf)


def _grouped(mask: torch.Tensor, heads: int, kv_heads: int, groups: int) -> torch.Tensor:
    """A ``(B, 1 or heads, L, S)`` mask in the grouped query's layout ``(B, kv, groups, L, S)``."""
    if mask.dim() != 4 or mask.shape[1] not in (1, heads):
        raise ValueError(
            f"attention_mask must have shape (batch, 1 or {heads}, q_length, kv_length), "
            f"got {tuple(mask.shape)}"
        )
    if mask.shape[1] == 1:
        return mask.unsqueeze(2)
    return mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:])


def _epsilon(module: torch.nn.Module) -> float:
    """ε of the training-time family while training, 0 (sparse ev-softmax) in eval mode."""
    if not module.training:
        return 0.0
    config = getattr(module, "config", None)
    return validate_epsilon(getattr(config, "ev_softmax_epsilon", EPSILON))


def register() -> None:
    """Make ``attn_implementation="ev_softmax"`` available in ``transformers``.

    Registers :func:`ev_softmax_attention_forward` with ``AttentionInterface``
    and :func:`ev_softmax_mask` with ``AttentionMaskInterface``, globally, under
    :data:`NAME`. Calling it again changes nothing.

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from evsoftmax.integrations import transformers as evs_hf
    >>> evs_hf.register()
    >>> config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    >>> model = LlamaForCausalLM(config).eval()
    >>> model.set_attn_implementation("ev_softmax")
    >>> model(torch.tensor([[1, 2, 3]])).logits.shape
    torch.Size([1, 3, 32])
    """
    AttentionInterface.register(NAME, ev_softmax_attention_forward)
    AttentionMaskInterface.register(NAME, ev_softmax_mask)
