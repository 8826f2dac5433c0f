"""Small MLPs whose parameters carry a leading *seed* axis.

All seeds of one normalizer train at once: every weight has shape
``(seeds, n_in, n_out)`` and every activation ``(seeds, batch, features)``.
The total loss is the sum of the per-seed losses, so each seed's gradient
only depends on its own parameters, and Adam (elementwise) then updates each
seed exactly as if it were trained alone; only the Python overhead is shared.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

__all__ = ["CVAE", "MLP", "init_mlp", "one_hot_inputs"]


@dataclass(frozen=True)
class MLP:
    """Linear layers with ReLU in between; ``layers[i] = (weight, bias)``."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the network to ``x`` of shape ``(seeds, batch, n_in)``."""
        for i, (weight, bias) in enumerate(self.layers):
            x = torch.baddbmm(bias, x, weight)
            if i + 1 < len(self.layers):
                x = torch.relu(x)
        return x

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors."""
        return [t for layer in self.layers for t in layer]


def init_mlp(sizes: tuple[int, ...], generators: list[torch.Generator]) -> MLP:
    """An MLP with PyTorch's default ``nn.Linear`` initialization, one draw per seed."""
    layers = []
    for n_in, n_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(n_in)
        draws = [
            [
                torch.empty(shape).uniform_(-bound, bound, generator=g)
                for shape in ((n_in, n_out), (1, n_out))
            ]
            for g in generators
        ]
        weight = torch.stack([d[0] for d in draws]).requires_grad_()
        bias = torch.stack([d[1] for d in draws]).requires_grad_()
        layers.append((weight, bias))
    return MLP(tuple(layers))


def one_hot_inputs(n: int, seeds: int) -> torch.Tensor:
    """The ``n`` one-hot vectors, once per seed: shape ``(seeds, n, n)``."""
    return torch.eye(n).expand(seeds, n, n)


@dataclass(frozen=True)
class CVAE:
    """The paper's CVAE with a discrete latent ``z`` in ``{0, ..., K-1}``.

    ``prior`` maps the one-hot query ``y`` to the logits of ``p(z | y)``;
    ``posterior`` maps ``[x, y]`` to the logits of ``q(z | x, y)``; ``decoder``
    maps the one-hot ``z`` to the Bernoulli logits of ``p(x | z)`` (as in the
    paper, the decoder does not see ``y``, so each latent class decodes to one
    image whatever the query).
    """

    prior: MLP
    posterior: MLP
    decoder: MLP

    @classmethod
    def create(
        cls,
        prototypes: torch.Tensor,
        queries: int,
        hidden: int,
        prior_hidden: int,
        seeds: list[int],
    ) -> CVAE:
        """Initialize one CVAE per seed (stacked).

        ``prototypes`` ``(seeds, K, pixels)``, with values in (0, 1), are the
        initial decoded images: the decoder is one linear map from the one-hot
        ``z`` (with a one-hot input a hidden layer adds no capacity), whose rows
        start at the logits of the prototypes.
        """
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        _, latent, pixels = prototypes.shape
        weight = torch.logit(prototypes).clone().requires_grad_()
        bias = torch.zeros(len(seeds), 1, pixels, requires_grad=True)
        return cls(
            prior=init_mlp((queries, prior_hidden, latent), gens),
            posterior=init_mlp((pixels + queries, hidden, latent), gens),
            decoder=MLP(((weight, bias),)),
        )

    @classmethod
    def create_mlp_decoder(
        cls,
        queries: int,
        pixels: int,
        latent: int,
        sizes: tuple[int, int, int],
        seeds: list[int],
    ) -> CVAE:
        """The paper's networks, one per seed: ``sizes = (hidden, prior_hidden, decoder_hidden)``.

        Prior ``y -> prior_hidden -> K``, posterior ``[x, y] -> hidden -> K``,
        decoder ``z -> decoder_hidden -> pixels`` (sigmoid outside), all with
        PyTorch's default initialization.
        """
        hidden, prior_hidden, decoder_hidden = sizes
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return cls(
            prior=init_mlp((queries, prior_hidden, latent), gens),
            posterior=init_mlp((pixels + queries, hidden, latent), gens),
            decoder=init_mlp((latent, decoder_hidden, pixels), gens),
        )

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors of the three networks."""
        return [*self.prior.parameters(), *self.posterior.parameters(), *self.decoder.parameters()]

    @property
    def seeds(self) -> int:
        """How many independent models are stacked."""
        return int(self.prior.layers[0][0].shape[0])

    def prior_logits(self, queries: int) -> torch.Tensor:
        """Logits of ``p(z | y)`` for every query ``y``: shape ``(seeds, queries, K)``."""
        return self.prior(one_hot_inputs(queries, self.seeds))

    def decoder_logits(self, latent: int) -> torch.Tensor:
        """Bernoulli logits of the image of every latent class: ``(seeds, K, pixels)``."""
        return self.decoder(one_hot_inputs(latent, self.seeds))
