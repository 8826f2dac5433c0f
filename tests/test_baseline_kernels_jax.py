"""The compiled baseline kernels as XLA FFI custom calls in JAX (``adapters/jax/baseline_kernels``).

Forwards against the float64 references of ``reference_baselines`` and the
``entmax`` package, gradients against the closed-form VJP written from the
math (``baseline_cases``) and against finite differences; every kernel test
checks that the custom call is in the lowered program, and that ``jax.export``
and ``EVSOFTMAX_NO_CPU_KERNELS=1`` get the XLA form instead.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from evsoftmax.adapters.jax import baseline_kernels, baselines  # noqa: E402

from . import reference_baselines as ref  # noqa: E402
from .baseline_cases import (  # noqa: E402
    CASES,
    MAPS,
    TOLERANCE,
    assert_matches,
    closed_form_vjp,
    expected_of,
    expected_row,
    rng_rows,
)
from .cpu_kernels import require_baseline_kernels  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

FORWARD, VJP = "baseline_rows", "baseline_vjp_rows"


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels on, wherever they serve (the adapter keeps the XLA form where it is faster)."""
    require_baseline_kernels()
    monkeypatch.delenv("EVSOFTMAX_NO_CPU_KERNELS", raising=False)
    monkeypatch.setattr(baselines, "_kernel_wins", lambda *args, **kwargs: True)


def _jit(fn):
    """``jax.jit`` of a fresh wrapper: JAX caches lowerings by function, and the kernels'
    switches (``_kernel_wins``, ``EVSOFTMAX_NO_CPU_KERNELS``) are read when lowering."""
    return jax.jit(lambda *args: fn(*args))


def _targets(fn, *args) -> tuple[bool, bool]:
    """Whether the lowered ``jit(fn)`` calls the forward and the VJP custom calls."""
    text = _jit(fn).lower(*args).as_text()
    return f"@evsoftmax.{FORWARD}(" in text, f"@evsoftmax.{VJP}(" in text


def _value_and_vjp(fn, x, g):
    """``fn(x)`` and its VJP at ``g``, compiled as one program (checked to use the kernels)."""

    def both(x, g):
        out, pullback = jax.vjp(fn, x)
        return out, pullback(g)[0]

    assert _targets(both, x, g) == (True, True)
    return _jit(both)(x, g)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", MAPS)
def test_kernel_forward_and_vjp_match_reference(name, dtype, kernel):
    fn, alpha = MAPS[name]
    for case, scores in CASES.items():
        x = jnp.asarray(scores, dtype=dtype)
        g = jnp.asarray(rng_rows(5, x.shape, 1.0), dtype=dtype)
        out, grad = _value_and_vjp(fn, x, g)
        assert out.dtype == grad.dtype == x.dtype
        expected = expected_of(case, name, dtype)
        assert_matches(np.asarray(out), expected, dtype)
        finite = np.isfinite(expected).all(axis=-1)  # NaN rows: no gradient to compare
        expected_grad = closed_form_vjp(expected[finite], np.asarray(g, np.float64)[finite], alpha)
        np.testing.assert_allclose(
            np.asarray(grad)[finite], expected_grad, atol=20 * TOLERANCE[dtype], rtol=0
        )


@pytest.mark.parametrize("name", MAPS)
def test_kernel_other_axis_mask_and_vmap(name, kernel):
    fn = MAPS[name][0]
    x = jnp.asarray(rng_rows(3, (2, 5, 4), 1.0))
    where = jnp.asarray(np.random.default_rng(4).random((2, 5, 4)) > 0.3)

    def batched(x):
        return jax.vmap(lambda a, w: fn(a, axis=0, where=w))(x, where)

    assert _targets(batched, x) == (True, False)
    out = np.asarray(_jit(batched)(x))
    for b in range(2):
        expected = ref.by_rows(lambda v: expected_row(name, v), x[b], axis=0, where=where[b])
        assert_matches(out[b], expected, "float64")


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "bisect_1.25"])
def test_kernel_gradients_against_finite_differences(name, kernel):
    """Reverse mode through the C VJP, and its derivative (second order), numerically."""
    fn = MAPS[name][0]
    x = jnp.asarray(rng_rows(6, (3, 7), 1.0))
    assert _targets(jax.grad(lambda x: jnp.sum(fn(x) * x)), x) == (True, True)
    check_grads(fn, (x,), order=2, modes=("rev",))
    check_grads(fn, (x,), order=1, modes=("fwd",))


@pytest.mark.parametrize("name", MAPS)
def test_kernel_matches_entmax_package(name, kernel):
    torch = pytest.importorskip("torch")
    entmax = pytest.importorskip("entmax")
    fn, alpha = MAPS[name]
    theirs = {"sparsemax": entmax.sparsemax, "entmax15": entmax.entmax15}.get(
        name, functools.partial(entmax.entmax_bisect, alpha=alpha)
    )
    scores, cotangent = rng_rows(7, (5, 40), 2.0), rng_rows(8, (5, 40), 1.0)
    out, grad = _value_and_vjp(
        fn, jnp.asarray(scores, jnp.float32), jnp.asarray(cotangent, jnp.float32)
    )
    x_ref = torch.tensor(scores, dtype=torch.float32, requires_grad=True)
    out_ref = theirs(x_ref, dim=-1)
    (grad_ref,) = torch.autograd.grad(out_ref, x_ref, torch.tensor(cotangent).float())
    np.testing.assert_allclose(np.asarray(out), out_ref.detach().numpy(), atol=2e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(grad), grad_ref.numpy(), atol=2e-5, rtol=0)


def test_export_and_opt_out_get_the_xla_form(kernel, monkeypatch):
    """``jax.export`` carries no custom call; nor does a lowering with the kernels off."""
    fn = MAPS["entmax15"][0]
    x = jnp.asarray(CASES["wide"])

    def value_and_grad(x):
        return fn(x), jax.grad(lambda a: jnp.sum(fn(a) * a))(x)

    exported = jax.export.export(jax.jit(value_and_grad))(x)
    text = exported.mlir_module()
    assert FORWARD not in text and VJP not in text
    out, _ = exported.call(x)
    assert_matches(np.asarray(out), expected_of("wide", "entmax15", "float64"), "float64")
    monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    assert _targets(value_and_grad, x) == (False, False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_kernel_half_precision_computes_in_float32(dtype, kernel):
    x = jnp.asarray(CASES["wide"], dtype=dtype)
    assert _targets(MAPS["entmax15"][0], x) == (True, False)
    out = _jit(MAPS["entmax15"][0])(x)
    assert out.dtype == x.dtype
    expected = ref.entmax(np.asarray(x.astype(jnp.float64)), 1.5)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float64)), expected, atol=1e-2, rtol=0)


def test_default_choice_follows_the_measurements():
    """Without the fixture: the kernel only where it beat the XLA form (docs/jax.md)."""
    require_baseline_kernels()
    short, long = jnp.asarray(rng_rows(9, (2, 8), 1.0)), jnp.asarray(rng_rows(9, (2, 128), 1.0))

    def value_and_grad(fn):
        return lambda x: jax.vjp(fn, x)[1](x)[0]

    assert _targets(value_and_grad(MAPS["entmax15"][0]), short) == (True, False)
    assert _targets(value_and_grad(MAPS["entmax15"][0]), long) == (True, True)
    assert _targets(value_and_grad(MAPS["bisect_1.5"][0]), short) == (False, False)
    assert _targets(value_and_grad(MAPS["bisect_1.5"][0]), long) == (True, True)
    assert _targets(value_and_grad(MAPS["bisect_1.25"][0]), long) == (True, False)


def _context(devices: int, for_export: bool) -> SimpleNamespace:
    """The parts of an ``mlir.LoweringRuleContext`` that the kernels' rule reads."""
    module = SimpleNamespace(
        lowering_parameters=SimpleNamespace(for_export=for_export),
        axis_context=SimpleNamespace(num_devices=devices),
    )
    return SimpleNamespace(module_context=module)


def test_serves_only_local_lowerings_that_are_not_exports(kernel, monkeypatch):
    """As ev-softmax's kernel: one device yes; partitioned over several, or exported, no."""
    assert baseline_kernels.serves(_context(1, for_export=False))
    assert not baseline_kernels.serves(_context(4, for_export=False))  # XLA keeps it sharded
    assert not baseline_kernels.serves(_context(1, for_export=True))
    monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    assert not baseline_kernels.serves(_context(1, for_export=False))
