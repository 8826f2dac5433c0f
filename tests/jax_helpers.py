"""Inputs and closed-form expectations shared by the ``test_jax_*`` modules.

Everything here is plain NumPy float64 written from the paper's formulas
(DESIGN §2), never from the code under test.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from .reference import ev_softmax as ref_ev_softmax
from .reference import min_gap_to_mean


@contextlib.contextmanager
def jax_x64_enabled() -> Iterator[None]:
    """``jax_enable_x64`` on inside the block, back to what it was after it.

    For float64 JAX in a test module without switching the process-wide flag
    for the tests that run after it (``tests/conftest.py``'s ``jax_x64`` fixture).
    """
    import jax

    before = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def rows_away_from_ties(shape: tuple[int, ...], axis: int = -1, seed: int = 0) -> np.ndarray:
    """Normal scores whose entries all stay clear of their row mean.

    Each entry is pushed 0.5 away from its row mean, which keeps it on its side
    of the new mean; finite differences and float32 rounding then never move an
    entry across the threshold, so the support is locally constant there.
    """
    x = np.random.default_rng(seed).standard_normal(shape)
    x = x + 0.5 * np.sign(x - x.mean(axis=axis, keepdims=True))
    assert min_gap_to_mean(x, axis=axis) > 1e-3
    return x


def masked_example() -> tuple[np.ndarray, np.ndarray]:
    """Rows exercising masks: a -inf entry, masked entries, a fully masked row."""
    x = np.array(
        [
            [0.3, -np.inf, 1.2, -0.7, 2.0, 0.1],
            [1.0, 0.5, -1.5, 0.2, -0.3, 0.9],
            [0.4, 0.8, -0.2, 1.6, -np.inf, 0.0],
            [-0.5, 0.7, 1.1, -1.0, 0.6, 0.25],
        ]
    )
    where = np.array(
        [
            [True, True, True, True, True, False],
            [True, False, True, True, False, True],
            [True, True, True, True, True, True],
            [False, False, False, False, False, False],
        ]
    )
    return x, where


def valid_entries(x: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Entries that take part in their row: ``where`` true and not -inf."""
    valid = x != -np.inf
    return valid if where is None else valid & np.broadcast_to(where, x.shape)


def closed_form_jvp(p: np.ndarray, t: np.ndarray, axis: int = -1) -> np.ndarray:
    """``p * (t - <p, t>)``: the JVP and the VJP of ev-softmax (paper Eq. 9)."""
    return p * (t - np.sum(p * t, axis=axis, keepdims=True))


def closed_form_log_jvp(
    p: np.ndarray, t: np.ndarray, valid: np.ndarray, axis: int = -1
) -> np.ndarray:
    """``t - <p_eps, t>`` on valid entries, 0 elsewhere: the JVP of log ev-softmax."""
    return np.where(valid, t - np.sum(p * t, axis=axis, keepdims=True), 0.0)


def closed_form_log_vjp(
    p: np.ndarray, g: np.ndarray, valid: np.ndarray, axis: int = -1
) -> np.ndarray:
    """``g - p_eps * sum(g)`` over valid ``g``: the VJP of log ev-softmax."""
    g = np.where(valid, g, 0.0)
    return g - p * np.sum(g, axis=axis, keepdims=True)


def jacobian(p: np.ndarray) -> np.ndarray:
    """``diag(p) - p p^T`` for one row ``p``."""
    return np.diag(p) - np.outer(p, p)


def hessian_of_entry(p: np.ndarray, k: int) -> np.ndarray:
    """Second derivatives of ``p_k`` with a locally constant support.

    ``d2 p_k / dx_i dx_j = p_k (d_ki - p_i)(d_kj - p_j) - p_k p_i (d_ij - p_j)``.
    """
    e_k = np.eye(p.size)[k]
    return p[k] * np.outer(e_k - p, e_k - p) - p[k] * (np.diag(p) - np.outer(p, p))


def reference_probs(x: np.ndarray, axis: int = -1, eps: float = 0.0, where=None) -> np.ndarray:
    """Float64 ev-softmax from ``tests/reference.py``."""
    return ref_ev_softmax(x, axis=axis, eps=eps, where=where)


# The adapter's path switches that JAX's caches of traces and lowerings were made
# under (None: not known yet).
_TRACED_UNDER: list[tuple[str | None, str] | None] = [None]


def _path_switches() -> tuple[str | None, str]:
    from evsoftmax.adapters.jax import kernels

    return os.environ.get("EVSOFTMAX_NO_CPU_KERNELS"), repr(getattr(kernels, "_MIN_LENGTH", None))


def sync_jax_caches() -> None:
    """Drop JAX's caches when the path switches differ from those they were made under.

    The JAX adapter picks the kernel or the XLA form when it traces and lowers
    (``EVSOFTMAX_NO_CPU_KERNELS``, ``kernels._MIN_LENGTH``), and JAX caches the
    result by function and shapes only; a trace made under other switches would
    serve the call. Clearing only when the switches change keeps the tests that
    share them on warm caches (clearing around every test made the JAX adapter's
    tests 3-4x slower). ``tests/conftest.py`` calls this around every test, and
    the path matrix whenever it switches.
    """
    jax = sys.modules.get("jax")
    if jax is None:
        return
    switches = _path_switches()
    if switches != _TRACED_UNDER[0]:
        jax.clear_caches()
        _TRACED_UNDER[0] = switches


@contextlib.contextmanager
def jax_path(path: str) -> Iterator[str]:
    """``path`` ("kernel" or "array-ops") for a whole module: ``yield from`` it in a
    module-scoped fixture, so that pytest runs the module's tests path by path."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_jax_path(path, monkeypatch)
        sync_jax_caches()
        yield path


def use_jax_path(path: str, monkeypatch) -> None:
    """Make the JAX adapter take ``path`` ("kernel" or "array-ops") for the rest of a test.

    On "kernel", rows of every length and dtype take the compiled kernel (the
    adapter otherwise sends short half-precision rows, ``kernels._MIN_LENGTH``,
    to the XLA form, and the tests' rows are short). The path is chosen when a
    computation is lowered: :func:`sync_jax_caches` (run around every test) drops
    the caches made under the other path.
    """
    from evsoftmax.adapters.jax import kernels

    from .cpu_kernels import use_path

    use_path(path, monkeypatch)
    if path == "kernel":
        monkeypatch.setattr(kernels, "_MIN_LENGTH", {}, raising=False)
