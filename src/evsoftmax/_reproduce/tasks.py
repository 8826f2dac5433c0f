"""The seq2seq experiment's generated tasks: copy, reverse and sort short integer sequences.

One vocabulary serves the three tasks: ``PAD``, ``BOS``, ``EOS``, one token per
task (the source's first token says which task to do) and ``symbols`` integer
tokens. A source is ``[task, x_1 .. x_n]``; its target is ``[y_1 .. y_n, EOS]``
with ``y`` the copy, the reverse or the ascending sort of ``x``. Lengths ``n``
are uniform in ``[min_length, max_length]``; shorter rows are padded with
``PAD``. Everything is drawn from one seeded ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BOS", "EOS", "PAD", "TASKS", "Batch", "generate", "vocabulary_size"]

PAD, BOS, EOS = 0, 1, 2
TASKS = ("copy", "reverse", "sort")
_FIRST_TASK = 3
_FIRST_SYMBOL = _FIRST_TASK + len(TASKS)


def vocabulary_size(symbols: int) -> int:
    """Tokens in the vocabulary: the three specials, one per task and ``symbols`` integers."""
    return _FIRST_SYMBOL + symbols


@dataclass(frozen=True)
class Batch:
    """Padded examples: sources ``(N, 1 + max_length)``, targets ``(N, max_length + 1)``."""

    source: torch.Tensor
    target: torch.Tensor
    task: torch.Tensor  # (N,): index into TASKS

    def decoder_input(self) -> torch.Tensor:
        """``[BOS, y_1 .. y_n]`` (teacher forcing): the target shifted right."""
        start = torch.full_like(self.target[:, :1], BOS)
        return torch.cat([start, self.target[:, :-1]], dim=1)

    def __len__(self) -> int:
        return len(self.source)


def _transform(x: torch.Tensor, task: int) -> torch.Tensor:
    if TASKS[task] == "reverse":
        return x.flip(0)
    if TASKS[task] == "sort":
        return x.sort().values
    return x


def generate(
    count: int, symbols: int, min_length: int, max_length: int, generator: torch.Generator
) -> Batch:
    """``count`` examples, the task of each drawn uniformly, from ``generator``."""
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    source = torch.full((count, 1 + max_length), PAD, dtype=torch.long)
    target = torch.full((count, max_length + 1), PAD, dtype=torch.long)
    tasks = torch.randint(len(TASKS), (count,), generator=generator)
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=generator)
    values = torch.randint(symbols, (count, max_length), generator=generator) + _FIRST_SYMBOL
    for row in range(count):
        n, task = int(lengths[row]), int(tasks[row])
        x = values[row, :n]
        source[row, 0] = _FIRST_TASK + task
        source[row, 1 : 1 + n] = x
        target[row, :n] = _transform(x, task)
        target[row, n] = EOS
    return Batch(source, target, tasks)
