r"""ev-softmax as ``flax.nnx`` modules: ``EvSoftmax`` and ``LogEvSoftmax``.

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
from ..jax import ev_softmax, log_ev_softmax

__all__ = ["EvSoftmax", "LogEvSoftmax"]


class _EvSoftmaxBase(nnx.Module):
    _log = False

    def __init__(self, axis: int = -1, epsilon: float = 1e-6, *, deterministic: bool = False):
        self.axis = axis
        self.epsilon = validate_epsilon(epsilon)
        self.deterministic = deterministic

    def __call__(self, x: Any, *, where: Any = None, deterministic: bool | None = None) -> Any:
        if deterministic is None:
            deterministic = self.deterministic
        epsilon = 0.0 if deterministic else self.epsilon
        function = log_ev_softmax if self._log else ev_softmax
        return function(x, axis=self.axis, epsilon=epsilon, where=where)


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
