r"""ev-softmax as Equinox layers: ``EvSoftmax`` and ``LogEvSoftmax``.

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
from ..jax import ev_softmax, log_ev_softmax

__all__ = ["EvSoftmax", "LogEvSoftmax"]


class _EvSoftmaxBase(eqx.Module):
    axis: int = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)
    inference: bool

    def __init__(self, axis: int = -1, epsilon: float = 1e-6, *, inference: bool = False):
        self.axis = axis
        self.epsilon = validate_epsilon(epsilon)
        self.inference = inference

    def _normalize(self, x: Any, where: Any, inference: bool | None, log: bool) -> Any:
        if inference is None:
            inference = self.inference
        epsilon = 0.0 if inference else self.epsilon
        function = log_ev_softmax if log else ev_softmax
        return function(x, axis=self.axis, epsilon=epsilon, where=where)


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
