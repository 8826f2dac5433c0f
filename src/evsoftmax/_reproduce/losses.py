r"""The per-normalizer terms of the CVAE objective.

For one example ``(x, y)`` the objective is the negative ELBO with exact
marginalization over the latent classes that the posterior gives non-zero
mass (no sampling):

.. math::

    \mathcal{L} = \sum_{z:\, q(z|x,y) > 0} q(z|x,y)\,
                  \bigl(-\log p(x|z)\bigr) + \beta\, R(q, p),

so the decoder runs once per latent class in the support of ``q`` (the cost
that sparsity saves). ``R`` is the KL divergence ``KL(q || p)`` wherever it is
defined:

* softmax: the exact KL.
* ev-softmax: the paper's protocol. ``KL(q_eps || p_eps)`` of the
  training-time family (Eq. 10, ``eps = 1e-6``), which has full support and so
  a finite KL; the reconstruction term marginalizes over the support of
  ev-softmax itself (``eps = 0``); evaluation uses ``eps = 0``.
* sparsemax and entmax-1.5: ``KL(q || p)`` is infinite as soon as ``p`` drops
  a class that ``q`` keeps. ``"smoothed-kl"`` (default) is what the paper's
  released code does: add ``delta = 1e-6`` to both distributions, renormalize,
  and take the KL. ``"fenchel-young"`` is the normalizer's own loss, the
  Fenchel-Young loss of its Tsallis entropy with ``q`` as a soft target.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from . import normalizers

__all__ = ["Terms", "class_loss", "fenchel_young", "objective_terms", "smoothed_kl"]

Terms = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(posterior_logits, prior_logits) -> (marginalization weights, regularizer)``."""

_TSALLIS_ALPHA = {"sparsemax": 2.0, "entmax15": 1.5}
_package = importlib.import_module("..", __package__)


def _kl_from_logs(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``sum_k q_k (log q_k - log p_k)`` over the last axis, for full-support ``q, p``."""
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def smoothed_kl(q: torch.Tensor, p: torch.Tensor, delta: float) -> torch.Tensor:
    """``KL(q' || p')`` with ``r' = (r + delta) / (1 + K delta)``: finite for sparse ``q, p``."""
    size = q.shape[-1]
    log_q = torch.log((q + delta) / (1.0 + size * delta))
    log_p = torch.log((p + delta) / (1.0 + size * delta))
    return _kl_from_logs(log_q, log_p)


def tsallis_regularizer(p: torch.Tensor, alpha: float) -> torch.Tensor:
    """``Omega(p) = (sum_k p_k^alpha - 1) / (alpha (alpha - 1))``, the negative Tsallis entropy."""
    return (p.pow(alpha).sum(-1) - 1.0) / (alpha * (alpha - 1.0))


def fenchel_young(
    logits: torch.Tensor, target: torch.Tensor, normalizer: normalizers.Normalizer, alpha: float
) -> torch.Tensor:
    """Fenchel-Young loss ``Omega*(theta) + Omega(q) - <theta, q>`` of ``alpha``-entmax.

    With ``p* = normalizer(theta)`` (the maximizer), ``Omega*(theta) =
    <theta, p*> - Omega(p*)``; ``p*`` is held constant, which by Danskin's
    theorem leaves the value unchanged and gives the gradient ``p* - q``.
    """
    best = normalizer(logits).detach()
    return (
        (logits * (best - target)).sum(-1)
        + tsallis_regularizer(target, alpha)
        - tsallis_regularizer(best, alpha)
    )


def _softmax_terms(lq: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_q = normalizers.log_softmax(lq)
    return log_q.exp(), _kl_from_logs(log_q, normalizers.log_softmax(lp))


def _ev_softmax_terms(epsilon: float) -> Terms:
    def terms(lq: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kl = _kl_from_logs(
            normalizers.log_ev_softmax(lq, epsilon), normalizers.log_ev_softmax(lp, epsilon)
        )
        return normalizers.ev_softmax(lq, 0.0), kl

    return terms


def _sparse_terms(name: str, sparse_loss: str, delta: float) -> Terms:
    normalize = normalizers.lookup(name)

    def terms(lq: torch.Tensor, lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = normalize(lq)
        if sparse_loss == "fenchel-young":
            return q, fenchel_young(lp, q, normalize, _TSALLIS_ALPHA[name])
        return q, smoothed_kl(q, normalize(lp), delta)

    return terms


def objective_terms(name: str, *, epsilon: float, sparse_loss: str, delta: float) -> Terms:
    """The marginalization weights and regularizer of the normalizer ``name``."""
    if name == "softmax":
        return _softmax_terms
    if name == "ev_softmax":
        return _ev_softmax_terms(epsilon)
    return _sparse_terms(name, sparse_loss, delta)


def class_loss(
    name: str,
    logits: torch.Tensor,
    target: torch.Tensor,
    epsilon: float,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """The mean loss of class indices ``target`` that matches the normalizer ``name``.

    softmax: cross-entropy; sparsemax and entmax-1.5: their Fenchel-Young
    losses; ev-softmax: the NLL of its training family (``epsilon > 0``).
    ``ignore_index`` targets take no part (padding).
    """
    loss: torch.Tensor
    flat, labels = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    if name == "softmax":
        skip = -100 if ignore_index is None else ignore_index
        loss = torch.nn.functional.cross_entropy(flat, labels, ignore_index=skip)
    elif name == "ev_softmax":
        loss = _package.ev_softmax_nll_loss(
            flat, labels, epsilon=epsilon, ignore_index=ignore_index
        )
    else:
        loss = getattr(_package, f"{name}_loss")(flat, labels, ignore_index=ignore_index)
    return loss
