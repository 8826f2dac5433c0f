"""The code on the JAX docs page runs (blocks that need Flax or Equinox are skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

PAGE = Path(__file__).parent.parent / "docs" / "jax.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def test_page_has_code():
    assert len(BLOCKS) >= 6


def test_blocks_run_in_order():
    namespace: dict[str, object] = {}
    ran = 0
    for block in BLOCKS:
        if "import flax" in block or "import equinox" in block:
            compile(block, str(PAGE), "exec")  # at least valid Python
            continue
        exec(compile(block, str(PAGE), "exec"), namespace)
        ran += 1
    assert ran >= 5
