"""Per-framework execution paths, each imported lazily by ``evsoftmax._dispatch``.

One package per framework (``torch/``, ``jax/``, ``cupy/``; NumPy's fits in
``numpy.py``) holds that framework's paths: its adapter module (any subset of
the core's function names with the core's signatures), autograd, kernels,
compile form and baselines. ``_dispatch.ADAPTER_MODULES`` is the one place
that registers them, so ``import evsoftmax`` imports no framework.
"""
