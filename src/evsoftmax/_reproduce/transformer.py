"""A small encoder-decoder Transformer whose attention normalizer is selectable.

The same normalizer serves all three attention kinds (encoder self-, decoder
self- and cross-attention): ev-softmax through :func:`evsoftmax.torch.ev_attention`
(``epsilon > 0`` in training, 0 in evaluation), softmax, sparsemax and
entmax-1.5 through the dense composition ``normalizer(q k^T / sqrt(d)) v``
with masked scores at ``-inf``. Pre-layer-norm blocks, learned positions, no
dropout. When asked, the forward pass records how many keys each query
attends to (non-zero attention weight), per kind.
"""

from __future__ import annotations

import importlib
import math

import torch

from . import normalizers
from .tasks import PAD

__all__ = ["KINDS", "Seq2SeqTransformer", "Supports"]

KINDS = ("encoder_self", "decoder_self", "cross")
"""The three attention kinds, in the order of every table."""

Supports = dict[str, list[torch.Tensor]]
"""Per kind, one ``(B, heads, L)`` tensor of attended keys per layer."""

_evt = importlib.import_module("..torch", __package__)


class _Attention(torch.nn.Module):
    def __init__(self, name: str, width: int, heads: int, epsilon: float) -> None:
        super().__init__()
        self.name, self.heads, self.epsilon = name, heads, epsilon
        self.query = torch.nn.Linear(width, width)
        self.key_value = torch.nn.Linear(width, 2 * width)
        self.out = torch.nn.Linear(width, width)
        self.normalize = None if name == "ev_softmax" else normalizers.lookup(name)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor, causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``x`` ``(B, L, d)`` to ``memory`` ``(B, S, d)`` where ``keys`` (B, S) hold.

        Returns the output ``(B, L, d)`` and the attended keys ``(B, heads, L)``.
        """
        q = self._split(self.query(x))
        k, v = (self._split(t) for t in self.key_value(memory).chunk(2, dim=-1))
        mask = keys[:, None, None, :]
        if self.normalize is None:
            epsilon = self.epsilon if self.training else 0.0
            out, support = _evt.ev_attention(
                q, k, v, attn_mask=mask, is_causal=causal, epsilon=epsilon, return_support=True
            )
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if causal:
                lower = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
                mask = mask & lower
            weights = self.normalize(scores.masked_fill(~mask, -math.inf))
            out, support = weights @ v, (weights > 0).sum(-1)
        batch, _, length, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(batch, length, -1)), support


class _Block(torch.nn.Module):
    """Self-attention, optionally cross-attention, then a feed-forward layer (pre-norm)."""

    def __init__(self, name: str, width: int, heads: int, epsilon: float, cross: bool) -> None:
        super().__init__()
        self.self_norm = torch.nn.LayerNorm(width)
        self.self_attention = _Attention(name, width, heads, epsilon)
        self.cross_norm = torch.nn.LayerNorm(width) if cross else None
        self.cross_attention = _Attention(name, width, heads, epsilon) if cross else None
        self.feed_norm = torch.nn.LayerNorm(width)
        self.feed = torch.nn.Sequential(
            torch.nn.Linear(width, 2 * width), torch.nn.ReLU(), torch.nn.Linear(2 * width, width)
        )

    def forward(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        causal: bool,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = self.self_norm(x)
        update, self_support = self.self_attention(h, h, keys, causal)
        x = x + update
        cross_support = None
        if memory is not None and self.cross_attention is not None and self.cross_norm is not None:
            update, cross_support = self.cross_attention(self.cross_norm(x), *memory, False)
            x = x + update
        return x + self.feed(self.feed_norm(x)), self_support, cross_support


class Seq2SeqTransformer(torch.nn.Module):
    """Encoder-decoder Transformer over one vocabulary; ``name`` is the attention normalizer.

    The output layer gives logits; the experiment applies the same normalizer
    to them (and trains with its matching loss).
    """

    def __init__(
        self,
        name: str,
        vocabulary: int,
        positions: int,
        *,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        epsilon: float = 1e-6,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads, got {width} and {heads}")
        self.embed = torch.nn.Embedding(vocabulary, width)
        self.position = torch.nn.Embedding(positions, width)
        self.encoder = torch.nn.ModuleList(
            _Block(name, width, heads, epsilon, cross=False) for _ in range(layers)
        )
        self.decoder = torch.nn.ModuleList(
            _Block(name, width, heads, epsilon, cross=True) for _ in range(layers)
        )
        self.encoder_norm = torch.nn.LayerNorm(width)
        self.decoder_norm = torch.nn.LayerNorm(width)
        self.output = torch.nn.Linear(width, vocabulary)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.embed(tokens) + self.position(torch.arange(tokens.shape[1]))
        return out

    def encode(self, source: torch.Tensor, record: Supports | None = None) -> torch.Tensor:
        """The encoder's states ``(B, S, d)`` of ``source`` ``(B, S)`` (``PAD`` keys masked)."""
        keys = source != PAD
        x = self._embed(source)
        for block in self.encoder:
            x, support, _ = block(x, keys, causal=False)
            if record is not None:
                record["encoder_self"].append(support)
        return self.encoder_norm(x)  # type: ignore[no-any-return]

    def decode(
        self,
        memory: torch.Tensor,
        source: torch.Tensor,
        previous: torch.Tensor,
        record: Supports | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, T, vocabulary)`` of the next token after every prefix of ``previous``."""
        x = self._embed(previous)
        keys = torch.ones_like(previous, dtype=torch.bool)  # causal masking suffices
        for block in self.decoder:
            x, self_support, cross_support = block(x, keys, True, (memory, source != PAD))
            if record is not None and cross_support is not None:
                record["decoder_self"].append(self_support)
                record["cross"].append(cross_support)
        return self.output(self.decoder_norm(x))  # type: ignore[no-any-return]

    def forward(
        self, source: torch.Tensor, previous: torch.Tensor, record: Supports | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, vocabulary)``."""
        return self.decode(self.encode(source, record), source, previous, record)
