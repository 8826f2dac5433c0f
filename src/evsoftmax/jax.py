"""evsoftmax for JAX: the whole public API, ready for ``jit``, ``vmap``, ``grad`` and ``jvp``.

This module re-exports every public function of :mod:`evsoftmax` (the list is
taken from the package's ``__all__``, so it never falls behind) and imports
the JAX adapter eagerly, so a missing JAX fails here rather than at the first
call. On JAX arrays, :func:`ev_softmax` and :func:`log_ev_softmax` are jitted
functions with a closed-form ``jax.custom_jvp`` (the gradient never flows
through the threshold; masked entries get exactly zero gradient), and every
other function traces under ``jax.jit`` because it is written against the
array API with no Python control flow on array values.

``import evsoftmax`` never imports this module (nor JAX).

Examples
--------
>>> import jax
>>> import jax.numpy as jnp
>>> import numpy as np
>>> from evsoftmax.jax import ev_softmax
>>> x = jnp.array([0.4, 1.4, -0.8])
>>> np.asarray(jax.jit(ev_softmax)(x)).round(2)
array([0.27, 0.73, 0.  ], dtype=float32)
>>> np.asarray(jax.grad(lambda x: ev_softmax(x)[1])(x)).round(2)
array([-0.2,  0.2,  0. ], dtype=float32)
"""

from __future__ import annotations

from . import *  # noqa: F403  (the public API, exactly as listed in the package's __all__)
from . import __all__ as _package_all
from .adapters.jax import adapter as _adapter  # noqa: F401  (imports JAX now: fail early if missing)

__all__: list[str] = []
__all__ += _package_all
