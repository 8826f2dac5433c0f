"""The benchmark suite behind ``evsoftmax bench`` and ``benchmarks/run.py``.

Modules: ``_shapes`` (presets, K-sweep), ``_cases`` (the case matrix: masks,
axes, dtypes, log, baselines), ``_targets`` (DESIGN section 6's targets, the
verdict), ``_backends`` (one class per array library), ``_methods`` (what is
timed), ``_timing`` (interleaved medians), ``_suite`` (the run), ``_memory``
(peak memory in fresh processes), ``_document`` (JSON, machine, versions),
``_report`` (``rich`` tables and progress bar), ``_markdown`` (the docs tables
from a recorded JSON), ``_plot`` (``matplotlib`` PNG). Nothing here imports an
array framework, ``rich`` or ``matplotlib`` at module level.
"""
