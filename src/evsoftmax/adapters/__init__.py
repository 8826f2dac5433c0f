"""Per-framework adapters, each imported lazily by ``evsoftmax._dispatch``.

An adapter module is named after its framework (``torch``, ``jax``, ``cupy``)
and defines any subset of the core's function names with the core's
signatures; ``_dispatch.ADAPTER_MODULES`` registers it.
"""
