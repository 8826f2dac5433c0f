"""Modules for other libraries' model APIs, each imported only on request.

``evsoftmax.integrations.flax`` (``flax.nnx`` modules) and
``evsoftmax.integrations.equinox`` (``equinox.Module`` layers) wrap the JAX
functions of :mod:`evsoftmax.jax`; ``evsoftmax.integrations.transformers``
registers ``attn_implementation="ev_softmax"`` with Hugging Face
``transformers``. Importing this package imports none of these libraries (nor
JAX or torch); import the submodule you need:

>>> from evsoftmax.integrations import flax as evs_flax  # doctest: +SKIP
"""

__all__: list[str] = []
