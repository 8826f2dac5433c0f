"""The JAX FFI kernel on the general case: masks, any axis, half precision, both directions.

The path registry (``jax-jit-kernel``) checks the values of every case group;
here, on a few shapes, that the general case really reaches the kernel: one
custom call forward and one for the VJP, the mask passed in its own broadcast
shape, no transpose around a non-last axis and no conversion around half
precision, with values against the float64 reference and the closed-form VJP.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 JAX, for these tests only

import jax.numpy as jnp  # noqa: E402

import evsoftmax as evs  # noqa: E402
from evsoftmax.adapters.jax import kernels  # noqa: E402

from . import path_cases as pc  # noqa: E402
from . import reference as ref  # noqa: E402
from .closed_forms import ev_softmax_vjp, no_ties  # noqa: E402
from .jax_helpers import jax_path  # noqa: E402

SHAPE, AXIS = (3, 20, 17), 1  # rows along a middle axis: a full tile of 16 and one more
MASK_SHAPE = (1, 20, 17)  # broadcast over the first axis


@pytest.fixture(autouse=True, scope="module")
def kernel_path():
    with jax_path("kernel"):  # skips visibly when the kernel is not built
        yield


def _value_and_grad(x, where, c):
    def loss(v):
        p = evs.ev_softmax(v, axis=AXIS, where=where)
        return jnp.sum(p * c), p

    (_, p), g = jax.value_and_grad(loss, has_aux=True)(x)
    return p, g


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_masked_middle_axis_takes_the_kernel_both_ways(dtype):
    if jnp.dtype(dtype) not in kernels.dtypes():
        pytest.skip(f"the compiled kernel has no {dtype} on this build")
    values = pc.as_dtype(no_ties(SHAPE, seed=1, axis=AXIS), dtype)
    rng = np.random.default_rng(2)
    mask = rng.random(MASK_SHAPE) < 0.7
    cot = pc.as_dtype(rng.normal(size=SHAPE), dtype)
    x, where, c = (jnp.asarray(a) for a in (values, mask, cot))
    program = jax.jit(_value_and_grad)
    text = program.lower(x, where, c).as_text()
    calls = re.findall(r"custom_call @(\S+)\((.*)", text)
    assert [name.rpartition(".")[2] for name, _ in calls] == ["ev_softmax", "ev_softmax_vjp"]
    element = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64"}[dtype]
    assert "tensor<1x20x17xi1>" in calls[0][1]  # the mask as given, broadcast by the kernel
    assert "tensor<3x20x17xi1>" not in text
    assert f"tensor<3x20x17x{element}>" in calls[0][1]  # half precision passed as it is
    assert "transpose" not in text

    p, g = program(x, where, c)
    assert p.dtype == g.dtype == jnp.dtype(dtype)
    x64 = values.astype(np.float64)
    want_p = ref.ev_softmax(x64, axis=AXIS, where=np.broadcast_to(mask, SHAPE))
    want_g = ev_softmax_vjp(want_p, cot.astype(np.float64), axis=AXIS)
    rtol, atol = pc.tolerance(dtype)
    np.testing.assert_allclose(np.asarray(p, np.float64), want_p, rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(g, np.float64), want_g, rtol=rtol, atol=10 * atol)


def test_a_call_the_handler_cannot_serve_gives_nan():
    # A mask whose dims neither match nor are 1: never made by evsoftmax, refused.
    x = jnp.ones((2, 4), jnp.float32)
    bad_mask = jnp.ones((2, 3), bool)
    target = f"{kernels._PREFIX}.ev_softmax"
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(x.shape, x.dtype))
    params = jnp.array([0.0, -np.inf, 0.0, 1.0, 1.0], jnp.float32)
    assert np.isnan(np.asarray(jax.jit(call)(x, bad_mask, params))).all()


@pytest.mark.parametrize("length", [2, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65])
def test_short_contiguous_rows_both_ways(length):
    # The VJP of contiguous rows of up to 16 entries and of 32, 48 and 64 takes one
    # vector pass per row, the forward one per row of 16 to 64 (lane tiles below):
    # rows at each threshold and either side, against the reference and the closed form.
    for dtype in ["float32", "bfloat16"]:
        if not kernels.takes(jnp.dtype(dtype), length):
            continue
        shape = (40, length)
        values = pc.as_dtype(no_ties(shape, seed=length), dtype)
        cot = pc.as_dtype(np.random.default_rng(length).normal(size=shape), dtype)
        p, g = jax.jit(_value_and_grad_last)(jnp.asarray(values), jnp.asarray(cot))
        want_p = ref.ev_softmax(values.astype(np.float64), axis=-1)
        want_g = ev_softmax_vjp(want_p, cot.astype(np.float64), axis=-1)
        rtol, atol = pc.tolerance(dtype)
        np.testing.assert_allclose(np.asarray(p, np.float64), want_p, rtol=rtol, atol=atol)
        np.testing.assert_allclose(np.asarray(g, np.float64), want_g, rtol=rtol, atol=10 * atol)


def _value_and_grad_last(x, c):
    def loss(v):
        p = evs.ev_softmax(v, axis=-1)
        return jnp.sum(p * c), p

    (_, p), g = jax.value_and_grad(loss, has_aux=True)(x)
    return p, g
