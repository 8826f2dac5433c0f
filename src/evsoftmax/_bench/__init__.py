"""The benchmark suite behind ``evsoftmax bench`` and ``benchmarks/run.py``.

Modules: ``_shapes`` (presets, K-sweep), ``_backends`` (one class per array
library), ``_methods`` (what is timed), ``_timing`` (interleaved medians),
``_suite`` (the run), ``_document`` (JSON, machine, versions), ``_report``
(``rich`` table and progress bar), ``_plot`` (``matplotlib`` PNG). Nothing
here imports an array framework, ``rich`` or ``matplotlib`` at module level.
"""
