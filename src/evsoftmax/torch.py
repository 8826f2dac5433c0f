r"""PyTorch front door: ``torch.nn.functional``-style functions, modules and a loss.

A thin layer over the same computation as the top-level functions, spelled the
PyTorch way (``input``, ``dim``): drop-in replacements for ``torch.softmax``,
``torch.log_softmax``, ``nn.Softmax``, ``nn.LogSoftmax`` and
``nn.CrossEntropyLoss``. Gradients are closed-form (``autograd``, double
backward, ``torch.func``, ``forward_ad``) and everything compiles under
``torch.compile(fullgraph=True)``.

The modules follow the paper's protocol: in ``train()`` mode they use the
training-time family :math:`p \propto (1\{x \ge \bar x\} + \varepsilon) e^x`
(full support, finite log-likelihood), in ``eval()`` mode ev-softmax itself
(:math:`\varepsilon = 0`, sparse). :class:`EvSoftmaxLoss` always uses its
``epsilon``.

``import evsoftmax`` does not import this module (nor torch); import it as
``import evsoftmax.torch as evt``.

Examples
--------
>>> import torch
>>> import evsoftmax.torch as evt
>>> evt.ev_softmax(torch.tensor([0.4, 1.4, -0.8]))
tensor([0.2689, 0.7311, 0.0000])
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._lib._compat import array_namespace
from ._lib._prepare import is_empty
from ._lib._validation import (
    broadcast_shapes_to,
    normalize_axis,
    validate_epsilon,
    validate_input,
)
from ._torch_attention import EvMultiheadAttention, ev_attention
from .adapters.torch.autograd import apply
from .adapters.torch.ops import (
    composed_support,
    empty_result,
    jit_tracing,
    recorded_empty_axis,
    recording,
)

__all__ = [
    "EvMultiheadAttention",
    "EvSoftmax",
    "EvSoftmaxLoss",
    "LogEvSoftmax",
    "ev_attention",
    "ev_softmax",
    "ev_softmax_support",
    "log_ev_softmax",
]

# The array-API namespace of torch tensors, looked up once: the functions below
# never call into array_api_compat's cached helpers, which torch.compile warns about.
_XP = array_namespace(torch.empty(0))
_REDUCTIONS = ("mean", "sum", "none")


def _validate_where(where: Any, x: torch.Tensor) -> torch.Tensor | None:
    """``where`` as a boolean tensor on ``x``'s device that broadcasts to ``x``, or None."""
    if where is None:
        return None
    mask = where if isinstance(where, torch.Tensor) else torch.as_tensor(where)
    if mask.dtype != torch.bool:
        raise TypeError(f"where must be a boolean array, got dtype {mask.dtype}")
    # A trace records sizes as tensors; there torch's broadcasting checks the shapes.
    if not jit_tracing() and not broadcast_shapes_to(tuple(mask.shape), tuple(x.shape)):
        raise ValueError(
            f"where with shape {tuple(mask.shape)} does not broadcast to the input's "
            f"shape {tuple(x.shape)}"
        )
    return mask.to(x.device)


def _validate_epsilon(epsilon: Any) -> float:
    """``epsilon`` as a float ``>= 0``, in a form ``torch.compile`` traces.

    Dynamo makes a float argument that changes between calls symbolic; only
    comparisons (on whose outcome it guards) trace on it, not ``math.isfinite``.
    """
    if not torch.compiler.is_compiling():
        return validate_epsilon(epsilon)
    if isinstance(epsilon, bool) or not 0.0 <= epsilon < math.inf:
        raise ValueError("epsilon must be a finite float >= 0")  # (a symbolic value)
    return epsilon  # type: ignore[no-any-return]


def _checked(input: Any, dim: int, where: Any) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """``(input, dim, where)`` validated: the tensor, the non-negative dim and the mask or None.

    A strided floating tensor of at least one dimension (what the shared
    ``validate_input`` returns unchanged) is accepted from its dtype's flag:
    under ``torch.compile`` Dynamo interprets every Python step of the shared
    checks (``isdtype`` and its string dispatch), which was about a fifth of the
    steps it took to trace a call. Any other input gets the shared checks and
    their messages.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    floating = input.dtype.is_floating_point and input.ndim > 0
    x = input if floating and input.layout == torch.strided else validate_input(input, _XP, "input")
    return x, normalize_axis(dim, x.ndim, "dim"), _validate_where(where, x)


def _normalize(
    input: torch.Tensor, dim: int, epsilon: float, where: Any, log: bool
) -> torch.Tensor:
    x, axis, mask = _checked(input, dim, where)
    eps = _validate_epsilon(epsilon)
    if recording():
        if recorded_empty_axis(x, axis):
            return empty_result(x)
        # Like nn.Softmax, a traced or exported graph then follows the rank of later inputs.
        return apply(x, int(dim) if dim < 0 else axis, eps, mask, log)
    if is_empty(x):
        return empty_result(x)
    return apply(x, axis, eps, mask, log)


def ev_softmax(
    input: torch.Tensor, dim: int = -1, epsilon: float = 0.0, where: Any = None
) -> torch.Tensor:
    r"""ev-softmax of ``input`` along ``dim``: softmax over the entries at or above the row mean.

    .. math::

        p_k = \frac{(1\{x_k \ge \bar x\} + \varepsilon)\, e^{x_k}}
                   {\sum_l (1\{x_l \ge \bar x\} + \varepsilon)\, e^{x_l}},
        \qquad \bar x = \text{mean of the valid entries of the row}

    The same function as :func:`evsoftmax.ev_softmax`, with PyTorch's argument names.

    Parameters
    ----------
    input : torch.Tensor
        Scores (logits); integer tensors are promoted to the default float dtype,
        float16/bfloat16 are accumulated in float32.
    dim : int, default -1
        The dimension to normalize over.
    epsilon : float, default 0.0
        Weight of the entries below the mean; finite and ``>= 0``. ``0`` gives
        sparse ev-softmax, ``> 0`` the paper's full-support training family.
    where : bool tensor, optional
        Entries to include, broadcastable to ``input``; ``-inf`` entries are
        excluded too. Excluded entries get probability 0 and gradient 0; a row
        with no included entry is all zeros.

    Returns
    -------
    torch.Tensor
        Probabilities of ``input``'s shape, dtype and device.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> x = torch.tensor([[0.4, 1.4, -0.8], [1.0, 2.0, 3.0]])
    >>> evt.ev_softmax(x)
    tensor([[0.2689, 0.7311, 0.0000],
            [0.0000, 0.2689, 0.7311]])
    >>> evt.ev_softmax(x, where=torch.tensor([True, False, True]))[0]
    tensor([1., 0., 0.])
    """
    return _normalize(input, dim, epsilon, where, False)


def log_ev_softmax(
    input: torch.Tensor, dim: int = -1, epsilon: float = 0.0, where: Any = None
) -> torch.Tensor:
    r"""Logarithm of :func:`ev_softmax`, computed in log space.

    With ``epsilon > 0`` every included entry is finite (use it for
    negative log-likelihood); with ``epsilon = 0`` entries below the mean are
    ``-inf``. Excluded entries are ``-inf`` and receive gradient 0.

    Parameters
    ----------
    input : torch.Tensor
        Scores (logits).
    dim : int, default -1
        The dimension to normalize over.
    epsilon : float, default 0.0
        Weight of the entries below the mean; finite and ``>= 0``.
    where : bool tensor, optional
        Entries to include, broadcastable to ``input``.

    Returns
    -------
    torch.Tensor
        Log-probabilities of ``input``'s shape, dtype and device.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> evt.log_ev_softmax(torch.tensor([2.0, 0.0, -2.0]), epsilon=0.5)
    tensor([-0.1323, -2.1323, -5.2309])
    """
    return _normalize(input, dim, epsilon, where, True)


def ev_softmax_support(input: torch.Tensor, dim: int = -1, where: Any = None) -> torch.Tensor:
    """Boolean mask of the entries :func:`ev_softmax` keeps along ``dim``.

    The valid entries (``where`` true, not ``-inf``) at or above the row mean,
    the row maximum always; rows holding a valid NaN or +inf have an empty
    support. The same function as :func:`evsoftmax.ev_softmax_support`, written
    in torch ops that ``torch.compile``, ``torch.export`` and ``torch.jit.trace``
    record.

    Parameters
    ----------
    input : torch.Tensor
        Scores (logits).
    dim : int, default -1
        The dimension the mean is taken over.
    where : bool tensor, optional
        Entries to include, broadcastable to ``input``.

    Returns
    -------
    torch.Tensor
        A boolean tensor of ``input``'s shape.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> evt.ev_softmax_support(torch.tensor([0.4, 1.4, -0.8]))
    tensor([ True,  True, False])
    """
    x, axis, mask = _checked(input, dim, where)
    if recording():
        if recorded_empty_axis(x, axis):
            return torch.zeros_like(x, dtype=torch.bool)
        # As for ev_softmax: a traced graph follows the rank of later inputs.
        return composed_support(x, int(dim) if dim < 0 else axis, mask)
    if is_empty(x):
        return torch.zeros_like(x, dtype=torch.bool)
    return composed_support(x, axis, mask)


class _EvSoftmaxBase(torch.nn.Module):
    _log = False

    def __init__(self, dim: int = -1, epsilon: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.epsilon = validate_epsilon(epsilon)

    def forward(self, input: torch.Tensor, where: Any = None) -> torch.Tensor:
        epsilon = self.epsilon if self.training else 0.0
        return _normalize(input, self.dim, epsilon, where, self._log)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, epsilon={self.epsilon}"

    def __prepare_scriptable__(self) -> torch.nn.Module:
        # torch.jit.script calls this first, on the module and on every submodule.
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled by torch.jit.script (its forward "
            "validates and dispatches in Python); use torch.jit.trace, torch.export.export, "
            "torch.onnx.export or torch.compile instead"
        )


class EvSoftmax(_EvSoftmaxBase):
    r"""ev-softmax as a module: ``epsilon`` in ``train()`` mode, sparse ev-softmax in ``eval()``.

    The paper's protocol: train with the full-support family
    :math:`p \propto (1\{x \ge \bar x\} + \varepsilon) e^x` and evaluate with
    :math:`\varepsilon = 0`, which zeroes every entry below its row's mean.

    Parameters
    ----------
    dim : int, default -1
        The dimension to normalize over.
    epsilon : float, default 1e-6
        Weight of the entries below the mean while training; finite and ``>= 0``.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> layer = evt.EvSoftmax(dim=-1, epsilon=0.1)
    >>> x = torch.tensor([0.0, 1.0, 2.0])
    >>> layer(x)
    tensor([0.0089, 0.2665, 0.7245])
    >>> layer.eval()(x)
    tensor([0.0000, 0.2689, 0.7311])
    """


class LogEvSoftmax(_EvSoftmaxBase):
    r"""Logarithm of :class:`EvSoftmax`: ``epsilon`` in ``train()`` mode, 0 in ``eval()``.

    In ``eval()`` mode entries below their row's mean are ``-inf``.

    Parameters
    ----------
    dim : int, default -1
        The dimension to normalize over.
    epsilon : float, default 1e-6
        Weight of the entries below the mean while training; finite and ``>= 0``.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> layer = evt.LogEvSoftmax(epsilon=0.1).eval()
    >>> layer(torch.tensor([0.0, 1.0, 2.0]))
    tensor([   -inf, -1.3133, -0.3133])
    """

    _log = True


class EvSoftmaxLoss(torch.nn.Module):
    r"""Cross-entropy of ev-softmax: ``nn.CrossEntropyLoss`` with :math:`\log p_\varepsilon`.

    For class-index targets :math:`y`, the unreduced loss is

    .. math::

        \ell_n = -w_{y_n} \log p_\varepsilon(x_n)_{y_n},
        \qquad p_\varepsilon(x)_k \propto (1\{x_k \ge \bar x\} + \varepsilon)\, e^{x_k},

    which is finite for every target when :math:`\varepsilon > 0`, and whose
    gradient tends to :math:`p - \delta_{y}` as :math:`\varepsilon \to 0` (the
    paper's Eq. 12). Shapes, ``weight``, ``ignore_index``, ``reduction``,
    ``label_smoothing`` and class-probability targets behave exactly as in
    :class:`torch.nn.CrossEntropyLoss`; the class dimension is 1 (0 for
    unbatched input). ``epsilon`` is used in both ``train()`` and ``eval()``
    mode, so the loss stays finite.

    Parameters
    ----------
    weight : torch.Tensor, optional
        A manual rescaling weight for each class, of size C.
    ignore_index : int, default -100
        A class-index target value that is ignored and does not count in the mean.
    reduction : {"mean", "sum", "none"}, default "mean"
        How the per-element losses are combined.
    label_smoothing : float, default 0.0
        In ``[0, 1]``: the targets become
        :math:`(1 - \text{label\_smoothing})\,\text{target} + \text{label\_smoothing} / C`.
    epsilon : float, default 1e-6
        The ev-softmax ``epsilon``; finite and ``>= 0``.

    Examples
    --------
    >>> import torch
    >>> import evsoftmax.torch as evt
    >>> loss = evt.EvSoftmaxLoss(epsilon=0.1)
    >>> logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]])
    >>> loss(logits, torch.tensor([2, 0]))
    tensor(0.1733)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        epsilon: float = 1e-6,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.register_buffer("weight", weight)
        self.weight: torch.Tensor | None
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.epsilon = validate_epsilon(epsilon)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        class_dim = 0 if input.ndim == 1 else 1
        if target.dtype == torch.bool or target.is_complex():
            # As nn.CrossEntropyLoss: a bool tensor is neither class indices nor probabilities.
            raise TypeError(
                "target must hold class indices (an integer tensor) or class probabilities "
                f"(a floating tensor), got dtype {target.dtype}"
            )
        logp = log_ev_softmax(input, dim=class_dim, epsilon=self.epsilon)
        if target.is_floating_point():
            return _probability_target_loss(
                logp, target, class_dim, self.weight, self.reduction, self.label_smoothing
            )
        target = target.long()
        _check_class_targets(target, logp.shape[class_dim], self.ignore_index)
        nll = torch.nn.functional.nll_loss(
            logp, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction
        )
        if self.label_smoothing == 0.0:
            return nll
        smooth = _smoothing_term(logp, target, class_dim, self.weight, self)
        classes = logp.shape[class_dim]
        return (1.0 - self.label_smoothing) * nll + smooth * (self.label_smoothing / classes)

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, epsilon={self.epsilon}"
        )


def _class_weights(weight: torch.Tensor, ndim: int, class_dim: int) -> torch.Tensor:
    """``weight`` reshaped to broadcast along the class dimension of an ``ndim``-d input."""
    shape = [1] * ndim
    shape[class_dim] = weight.shape[0]
    return weight.view(shape)


def _check_class_targets(target: torch.Tensor, classes: int, ignore_index: int) -> None:
    """Raise ``IndexError`` naming the first class index outside ``[0, classes)``."""
    if torch.compiler.is_compiling():
        return  # data-dependent; nll_loss still checks on CPU
    bad = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0])
        raise IndexError(
            f"target holds the class index {value}, outside [0, {classes}) "
            f"and not ignore_index ({ignore_index})"
        )


def _smoothing_term(
    logp: torch.Tensor,
    target: torch.Tensor,
    class_dim: int,
    weight: torch.Tensor | None,
    loss: EvSoftmaxLoss,
) -> torch.Tensor:
    """The uniform-target part of label smoothing, reduced as nn.CrossEntropyLoss reduces it."""
    weighted = logp if weight is None else logp * _class_weights(weight, logp.ndim, class_dim)
    ignored = target == loss.ignore_index
    smooth = (-weighted.sum(class_dim)).masked_fill(ignored, 0.0)
    if loss.reduction == "none":
        return smooth
    if loss.reduction == "sum":
        return smooth.sum()
    if weight is None:
        return smooth.sum() / (~ignored).sum()
    target_weights = weight.gather(0, target.masked_fill(ignored, 0).flatten())
    return smooth.sum() / target_weights.masked_fill(ignored.flatten(), 0.0).sum()


def _probability_target_loss(
    logp: torch.Tensor,
    target: torch.Tensor,
    class_dim: int,
    weight: torch.Tensor | None,
    reduction: str,
    label_smoothing: float,
) -> torch.Tensor:
    """Cross-entropy against class probabilities (``target`` of ``logp``'s shape)."""
    if target.shape != logp.shape:
        raise ValueError(
            f"probability targets must have the input's shape {tuple(logp.shape)}, "
            f"got {tuple(target.shape)}"
        )
    classes = logp.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1.0 - label_smoothing) + label_smoothing / classes
    terms = logp * target
    if weight is not None:
        terms = terms * _class_weights(weight, logp.ndim, class_dim)
    if reduction == "none":
        return -terms.sum(class_dim)
    if reduction == "sum":
        return -terms.sum()
    return -terms.sum() / (logp.numel() // classes)
