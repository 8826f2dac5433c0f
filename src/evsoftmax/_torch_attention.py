r"""PyTorch front door for ev-attention: SDPA's argument names and a drop-in MultiheadAttention.

Re-exported by :mod:`evsoftmax.torch`. Everything here traces under
``torch.compile(fullgraph=True)``: checks use only shapes, dtypes and Python
values, and the computation is the adapter's autograd Function.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import torch

from ._attention import check_flag, check_mask_shape, check_scale, check_shapes
from ._lib._validation import validate_epsilon
from .adapters.torch.attention import attention, probabilities

__all__ = ["EvMultiheadAttention", "ev_attention"]


def _tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a real floating tensor (integers promoted), else ``TypeError`` naming it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(f"{name} must have a real floating or integer dtype, got {x.dtype}")
    if not x.dtype.is_floating_point:
        return x.to(torch.get_default_dtype())
    return x


def _scale(scale: Any, features: int) -> float:
    """``scale`` checked in a form Dynamo traces (a symbolic float only compares)."""
    if not torch.compiler.is_compiling() or scale is None:
        return check_scale(scale, features)
    if isinstance(scale, bool) or not -math.inf < scale < math.inf:
        raise ValueError("scale must be a finite float or None")
    return scale  # type: ignore[no-any-return]


def _epsilon(epsilon: Any) -> float:
    if not torch.compiler.is_compiling():
        return validate_epsilon(epsilon)
    if isinstance(epsilon, bool) or not 0.0 <= epsilon < math.inf:
        raise ValueError("epsilon must be a finite float >= 0")
    return epsilon  # type: ignore[no-any-return]


def _mask(mask: Any, target: tuple[int, ...], name: str, device: torch.device) -> Any:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if not (mask.dtype == torch.bool or mask.dtype.is_floating_point):
        raise TypeError(f"{name} must be a boolean or floating tensor, got dtype {mask.dtype}")
    check_mask_shape(tuple(mask.shape), target, name)
    return mask.to(device)


def ev_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    epsilon: float = 0.0,
    *,
    return_support: bool = False,
) -> Any:
    r"""ev-attention with the arguments of ``torch.nn.functional.scaled_dot_product_attention``.

    The same function as :func:`evsoftmax.ev_attention` (``attn_mask`` is its
    ``mask``): each query attends with ev-softmax over its valid keys, in
    O(L + S) memory, with the closed-form (flash) backward.

    Parameters
    ----------
    query, key, value : torch.Tensor
        Shapes ``(..., L, E)``, ``(..., S, E)``, ``(..., S, Ev)``.
    attn_mask : torch.Tensor, optional
        Boolean (``True`` takes part) or floating (added; ``-inf`` masked),
        broadcastable to ``(..., L, S)``. It receives no gradient.
    is_causal : bool, default False
        Keep keys ``j <= i`` (top-left aligned); combines with ``attn_mask``.
    scale : float, optional
        Default ``1/sqrt(E)``.
    epsilon : float, default 0.0
        Weight of the keys below the threshold (training-time family).
    return_support : bool, default False
        Also return the number of keys each query attends to, ``(..., L)``.

    Returns
    -------
    torch.Tensor
        ``(..., L, Ev)``; with ``return_support`` also the support sizes.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> q = k = v = torch.eye(3).reshape(1, 3, 3)
    >>> evt.ev_attention(q, k, v, scale=4.0).round(decimals=3)
    tensor([[[1., 0., 0.],
             [0., 1., 0.],
             [0., 0., 1.]]])
    """
    query, key, value = (
        _tensor(a, n) for a, n in ((query, "query"), (key, "key"), (value, "value"))
    )
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    batch = check_shapes(tuple(query.shape), tuple(key.shape), tuple(value.shape))
    target = (*batch, query.shape[-2], key.shape[-2])
    mask = _mask(attn_mask, target, "attn_mask", query.device)
    check_flag(is_causal, "is_causal")
    check_flag(return_support, "return_support")
    scale = _scale(scale, query.shape[-1])
    epsilon = _epsilon(epsilon)
    if 0 in target:
        out = query.new_zeros((*batch, query.shape[-2], value.shape[-1]))
        out = out + 0.0 * (query.sum() + key.sum() + value.sum())  # keeps autograd connected
        sizes = torch.zeros(target[:-1], dtype=torch.int64, device=query.device)
        return (out, sizes) if return_support else out
    run = _path(query, key, value, need_sizes=return_support)
    out, sizes = run(query, key, value, mask, is_causal, scale, epsilon)
    return (out, sizes) if return_support else out


# Devices whose tensors go to the Triton kernels (the tests add "cpu" to run the
# routing through Triton's interpreter).
_KERNEL_DEVICES = frozenset({"cuda"})


def _path(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, need_sizes: bool) -> Any:
    """The CUDA kernels where they serve the tensors, else the blocked torch algorithm.

    The blocked algorithm counts the support only when ``need_sizes`` (the
    kernels always do: their sizes come with the row statistics).

    Under ``torch.compile`` the blocked algorithm traces; the kernel launches do not.
    Under ``torch.func`` transforms the backward receives wrapped tensors, which a
    Triton launch cannot read, so those calls take the blocked algorithm too.
    """
    if (
        query.device.type in _KERNEL_DEVICES
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
    ):
        kernels = _cuda_kernels()
        if kernels is not None and kernels.supports(query, key, value):
            return kernels.attention
    return functools.partial(attention, need_sizes=need_sizes)


@functools.cache
def _cuda_kernels() -> Any:
    """The CUDA path's Triton kernels, or None when triton is not installed."""
    if importlib.util.find_spec("triton") is None:
        return None
    from .adapters.torch import attention_cuda

    return attention_cuda


def _as_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "masked" tensor (True = excluded, nn.MultiheadAttention's convention) as -inf/0."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, -math.inf)
    return mask.to(dtype)


def _combine(first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
    """Combine two validity masks (``True`` takes part) or additive ones."""
    if first is None or second is None:
        return first if second is None else second
    if first.dtype == torch.bool and second.dtype == torch.bool:
        return first & second
    dtype = first.dtype if first.dtype != torch.bool else second.dtype
    return _as_bias(~first if first.dtype == torch.bool else first, dtype) + _as_bias(
        ~second if second.dtype == torch.bool else second, dtype
    )


class EvMultiheadAttention(torch.nn.MultiheadAttention):
    r"""Drop-in :class:`torch.nn.MultiheadAttention` whose attention is ev-softmax.

    Same constructor and forward arguments and the same parameters (a
    ``state_dict`` of ``nn.MultiheadAttention`` loads), plus ``epsilon``: the
    training-time family in ``train()`` mode, ev-softmax (``epsilon = 0``) in
    ``eval()`` mode. The masks keep ``nn.MultiheadAttention``'s conventions
    (boolean ``True`` = excluded, floating = added); ``is_causal=True`` applies
    the causal mask itself (``attn_mask`` may then be omitted). Dropout on the
    attention weights would need the ``L x S`` matrix, so ``dropout`` must be 0.

    Examples
    --------
    >>> import torch
    >>> from evsoftmax.torch import EvMultiheadAttention
    >>> mha = EvMultiheadAttention(8, 2, batch_first=True).eval()
    >>> x = torch.randn(3, 5, 8)
    >>> out, weights = mha(x, x, x)
    >>> out.shape, weights.shape
    (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
        epsilon: float = 1e-6,
    ) -> None:
        if dropout != 0.0:
            raise ValueError(
                f"dropout must be 0 for EvMultiheadAttention (dropout of the attention "
                f"weights would form the L x S matrix), got {dropout!r}"
            )
        super().__init__(
            embed_dim,
            num_heads,
            dropout,
            bias,
            add_bias_kv,
            add_zero_attn,
            kdim,
            vdim,
            batch_first,
            device,
            dtype,
        )
        self.epsilon = validate_epsilon(epsilon)

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k, v input projections with nn.MultiheadAttention's parameters."""
        e = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e : 2 * e], b[2 * e :])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            wq, wk, wv = w[:e], w[e : 2 * e], w[2 * e :]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        linear = torch.nn.functional.linear
        return linear(query, wq, bq), linear(key, wk, bk), linear(value, wv, bv)

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend like ``nn.MultiheadAttention.forward``; returns ``(output, weights or None)``."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        # (L, N, E) from here on, as in F.multi_head_attention_forward.
        length, batch, _ = query.shape
        heads, head_dim = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(1, batch, -1)])
            v = torch.cat([v, self.bias_v.expand(1, batch, -1)])
            attn_mask = _pad(attn_mask)
            key_padding_mask = _pad(key_padding_mask)
        q, k, v = (
            x.reshape(x.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3) for x in (q, k, v)
        )
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros((batch, heads, 1, head_dim))], dim=2)
            v = torch.cat([v, v.new_zeros((batch, heads, 1, head_dim))], dim=2)
            attn_mask = _pad(attn_mask)
            key_padding_mask = _pad(key_padding_mask)
        mask = self._mask(attn_mask, key_padding_mask, batch, q.dtype)
        epsilon = self.epsilon if self.training else 0.0
        out = ev_attention(q, k, v, mask, is_causal, None, epsilon)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, self.embed_dim)
        out = self.out_proj(out)
        weights = None
        if need_weights:
            scale = 1.0 / math.sqrt(head_dim)
            weights = probabilities(q, k, mask, is_causal, scale, epsilon)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        if unbatched:
            return out.squeeze(1), None if weights is None else weights.squeeze(0)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        batch: int,
        dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """nn.MultiheadAttention masks (True = excluded) as one ev-attention mask (N, H, L, S)."""
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.reshape(batch, self.num_heads, *attn_mask.shape[1:])
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.reshape(batch, 1, 1, -1)
        masks = [
            m if m.dtype != torch.bool else ~m
            for m in (attn_mask, key_padding_mask)
            if m is not None
        ]
        if not masks:
            return None
        combined = _combine(masks[0], masks[1] if len(masks) > 1 else None)
        assert combined is not None
        return combined if combined.dtype == torch.bool else combined.to(dtype)


def _pad(mask: torch.Tensor | None) -> torch.Tensor | None:
    """One more key (bias_k or the zero key) that takes part: pad the last dimension."""
    if mask is None:
        return None
    return torch.nn.functional.pad(mask, (0, 1))
