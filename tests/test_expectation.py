"""sparse_expectation on every backend, against dense float64 sums written here.

Every expected value is ``sum_k p[r, k] * f[r, k]`` over *all* classes, from a
table ``f`` of function values indexed by (flattened batch row, class) that the
test builds itself; ``fn`` only looks entries up in that table, so the library
must call it on the right pairs for the sums to agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import evsoftmax as evs

from . import reference
from .backends import to_numpy

RNG = np.random.default_rng(15)


def sparse_probs(shape: tuple[int, ...], axis: int = -1) -> np.ndarray:
    """ev-softmax probabilities (float64 reference) with two rows forced to all zeros."""
    probs = reference.ev_softmax(RNG.normal(scale=2.0, size=shape), axis=axis)
    moved = np.moveaxis(probs, axis, -1)  # a view: zeroing it zeroes probs
    flat_index = [np.unravel_index(r, moved.shape[:-1]) for r in (1, moved.size // shape[axis] - 1)]
    for index in flat_index:
        moved[index] = 0.0
    return probs


def dense_expectation(probs: np.ndarray, table: np.ndarray, axis: int) -> np.ndarray:
    """sum_k probs[..., k, ...] * table[row, k] with rows the batch positions in C order."""
    axis = axis % probs.ndim
    batch = probs.shape[:axis] + probs.shape[axis + 1 :]
    out = np.zeros(batch + table.shape[2:])
    for row, index in enumerate(np.ndindex(*batch)):
        for k in range(probs.shape[axis]):
            entry = (*index[:axis], k, *index[axis:])
            out[index] += probs[entry] * table[row, k]
    return out


class Lookup:
    """``fn`` that reads ``table[row, class]`` and records every call's pairs."""

    def __init__(self, xp, table: np.ndarray):
        self.xp, self.classes = xp, table.shape[1]
        self.flat = xp.asarray(table.reshape((-1, *table.shape[2:])))
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, rows, classes):
        self.calls.append((to_numpy(rows), to_numpy(classes)))
        return self.xp.take(self.flat, rows * self.classes + classes, axis=0)


def nonzero_pairs(probs: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, class) of the non-zero entries, rows in C order of the batch, classes ascending."""
    moved = np.moveaxis(probs, axis, -1)
    rows, classes = [], []
    for row, index in enumerate(np.ndindex(*moved.shape[:-1])):
        for k in np.flatnonzero(moved[index]):
            rows.append(row)
            classes.append(k)
    return np.array(rows, dtype=np.int64), np.array(classes, dtype=np.int64)


@pytest.mark.parametrize("trailing", [(), (3,), (2, 2)])
def test_matches_dense_sum_with_one_call_on_the_nonzeros(xp, trailing):
    probs = sparse_probs((6, 5))
    table = RNG.normal(size=(6, 5, *trailing))
    fn = Lookup(xp, table)
    got = evs.sparse_expectation(xp.asarray(probs), fn)
    assert len(fn.calls) == 1
    rows, classes = fn.calls[0]
    expected_rows, expected_classes = nonzero_pairs(probs, -1)
    assert len(rows) == np.count_nonzero(probs) < probs.size
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(classes, expected_classes)
    assert tuple(got.shape) == (6, *trailing)
    np.testing.assert_allclose(to_numpy(got), dense_expectation(probs, table, -1), rtol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_axis_on_3d_rows_in_c_order(xp, axis):
    probs = sparse_probs((3, 4, 5), axis=axis)
    batch = tuple(n for i, n in enumerate(probs.shape) if i != axis % 3)
    table = RNG.normal(size=(math.prod(batch), probs.shape[axis], 2))
    fn = Lookup(xp, table)
    got = evs.sparse_expectation(xp.asarray(probs), fn, axis=axis)
    assert len(fn.calls) == 1
    assert len(fn.calls[0][0]) == np.count_nonzero(probs)
    np.testing.assert_array_equal(fn.calls[0][1], nonzero_pairs(probs, axis)[1])
    assert tuple(got.shape) == (*batch, 2)
    np.testing.assert_allclose(to_numpy(got), dense_expectation(probs, table, axis), rtol=1e-12)


def test_zero_rows_give_zero(xp):
    probs = sparse_probs((5, 4))
    table = RNG.normal(size=(5, 4))
    got = to_numpy(evs.sparse_expectation(xp.asarray(probs), Lookup(xp, table)))
    assert got[1] == 0.0 and got[4] == 0.0
    np.testing.assert_allclose(got, dense_expectation(probs, table, -1), rtol=1e-12)


def test_all_zero_probs_call_fn_on_no_pair(xp):
    table = RNG.normal(size=(3, 4, 2))
    fn = Lookup(xp, table)
    got = evs.sparse_expectation(xp.zeros((3, 4), dtype=xp.float64), fn)
    assert [len(r) for r, _ in fn.calls] == [0]
    assert tuple(got.shape) == (3, 2)
    np.testing.assert_array_equal(to_numpy(got), np.zeros((3, 2)))


def test_empty_batch(xp):
    got = evs.sparse_expectation(xp.zeros((0, 4), dtype=xp.float64), Lookup(xp, np.ones((0, 4))))
    assert tuple(got.shape) == (0,)


def test_size_bound_pads_fn_calls_and_keeps_the_sum(xp):
    probs = sparse_probs((4, 6))
    table = RNG.normal(size=(4, 6, 3))
    count = int(np.count_nonzero(probs))
    for size in (count, count + 5):
        fn = Lookup(xp, table)
        got = evs.sparse_expectation(xp.asarray(probs), fn, size=size)
        assert [len(r) for r, _ in fn.calls] == [size]
        np.testing.assert_allclose(to_numpy(got), dense_expectation(probs, table, -1), rtol=1e-12)


def test_size_padding_stays_on_the_support_and_is_not_summed(xp):
    # fn is NaN wherever the probability is 0 (entry (0, 0) included): the padding
    # pairs must repeat a real pair, and their values must not be added.
    probs = sparse_probs((4, 6))
    probs[0, 0] = 0.0
    table = np.where(probs == 0, np.nan, RNG.normal(size=(4, 6)))
    count = int(np.count_nonzero(probs))
    fn = Lookup(xp, table)
    got = evs.sparse_expectation(xp.asarray(probs), fn, size=count + 3)
    rows, classes = fn.calls[0]
    assert len(rows) == count + 3 and (probs[rows, classes] != 0).all()
    expected = dense_expectation(probs, np.nan_to_num(table), -1)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12)


def test_size_too_small_is_a_value_error_naming_size(xp):
    probs = sparse_probs((4, 6))
    count = int(np.count_nonzero(probs))
    with pytest.raises(ValueError, match=rf"size={count - 1}.*\({count}\)"):
        evs.sparse_expectation(xp.asarray(probs), Lookup(xp, np.ones((4, 6))), size=count - 1)


def test_nan_probability_makes_its_row_nan(xp):
    probs = sparse_probs((3, 4))
    probs[0, np.flatnonzero(probs[0] == 0)[0]] = np.nan
    got = to_numpy(evs.sparse_expectation(xp.asarray(probs), Lookup(xp, np.ones((3, 4)))))
    assert np.isnan(got[0]) and not np.isnan(got[1:]).any()


def test_numpy_masked_entries_are_zero_probability():
    probs = sparse_probs((3, 4))
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, np.flatnonzero(probs[0])[0]] = True
    table = np.where(mask, np.nan, RNG.normal(size=(3, 4)))
    fn = Lookup(np, table)
    got = evs.sparse_expectation(np.ma.array(probs, mask=mask), fn)
    assert type(got) is np.ndarray
    assert len(fn.calls[0][0]) == np.count_nonzero(probs) - 1
    expected = dense_expectation(np.where(mask, 0.0, probs), np.nan_to_num(table), -1)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_dtypes(xp):
    probs = xp.asarray(sparse_probs((3, 4)), dtype=xp.float32)
    table = RNG.normal(size=(3, 4))
    got = evs.sparse_expectation(probs, Lookup(xp, table.astype(np.float32)))
    assert got.dtype == xp.float32
    integer = evs.sparse_expectation(probs, lambda r, c: r * 4 + c)  # int values: probs' dtype
    assert integer.dtype == xp.float32
    index = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(
        to_numpy(integer), dense_expectation(to_numpy(probs), index, -1), rtol=1e-6
    )


def test_half_precision_accumulates_in_float32(xp):
    if not hasattr(xp, "float16"):
        pytest.skip("no float16 in this namespace")
    # Inputs where float16 products and sums round rows 2 and 3 off the float64 result;
    # float32 accumulation, rounded once, gives the float64 sum rounded to float16.
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(8), size=4).astype(np.float16)
    table = (rng.normal(size=(4, 8)) * 4).astype(np.float16)
    expected = dense_expectation(probs.astype(np.float64), table.astype(np.float64), -1)
    got = evs.sparse_expectation(xp.asarray(probs), Lookup(xp, table))
    assert got.dtype == xp.float16
    np.testing.assert_array_equal(to_numpy(got), expected.astype(np.float16))


BAD_ARGUMENTS = [
    ({"probs": "list"}, TypeError, "probs must be an array"),
    ({"probs": "int"}, TypeError, "probs must have a real floating dtype"),
    ({"probs": "bool"}, TypeError, "probs must have a real floating dtype"),
    ({"probs": "0-d"}, ValueError, "probs must have at least one dimension"),
    ({"fn": "decoder"}, TypeError, "fn must be callable"),
    ({"axis": 2}, ValueError, "axis=2"),
    ({"axis": 1.0}, TypeError, "axis must be an int"),
    ({"size": 0}, ValueError, "size must be a positive int"),
    ({"size": -3}, ValueError, "size must be a positive int"),
    ({"size": 4.0}, TypeError, "size must be a positive int"),
    ({"size": True}, TypeError, "size must be a positive int"),
    ({"fn": "short"}, ValueError, "fn must return an array of shape"),
    ({"fn": "0-d"}, ValueError, "fn must return an array of shape"),
    ({"fn": "list"}, TypeError, "fn must return an array"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments_name_the_argument(xp, change, error, message):
    probs = xp.asarray(sparse_probs((3, 4)))
    special = {
        "int": xp.ones((3, 4), dtype=xp.int64),
        "bool": xp.ones((3, 4), dtype=xp.bool),
        "0-d": xp.asarray(1.0),
        "list": [[0.5, 0.5]],
    }
    fns = {
        "decoder": "decoder",
        "short": lambda r, c: xp.zeros((r.shape[0] + 1,), dtype=xp.float64),
        "0-d": lambda r, c: xp.asarray(0.0, dtype=xp.float64),
        "list": lambda r, c: [0.0] * r.shape[0],
    }
    kwargs = {"axis": -1, "size": None}
    fn = Lookup(xp, np.ones((3, 4)))
    for key, value in change.items():
        if key == "probs":
            probs = special.get(value, value)
        elif key == "fn":
            fn = fns[value]
        else:
            kwargs[key] = value
    with pytest.raises(error, match=message):
        evs.sparse_expectation(probs, fn, **kwargs)


def test_dask_chunked_along_both_axes():
    da = pytest.importorskip("dask.array")
    probs = sparse_probs((6, 8))
    table = RNG.normal(size=(6, 8, 2))
    from array_api_compat import array_namespace

    lazy = da.from_array(probs, chunks=(4, 3))
    got = evs.sparse_expectation(lazy, Lookup(array_namespace(lazy), table))
    np.testing.assert_allclose(to_numpy(got), dense_expectation(probs, table, -1), rtol=1e-12)


# -- gradients ------------------------------------------------------------------------------


def closed_form_logit_grad(logits: np.ndarray, table: np.ndarray, upstream: np.ndarray):
    """d/dv of sum_r u_r E_r with p = ev_softmax(v): u_r p_j (f_j - sum_k p_k f_k), per row."""
    p = reference.ev_softmax(logits)
    mean = np.sum(p * table, axis=-1, keepdims=True)
    return upstream[:, None] * p * (table - mean)


class TestTorch:
    @pytest.fixture(autouse=True)
    def _torch(self):
        self.torch = pytest.importorskip("torch")

    def test_grad_into_probs_is_f_on_the_support(self):
        torch = self.torch
        probs_np = sparse_probs((5, 6))
        table = RNG.normal(size=(5, 6))
        probs = torch.tensor(probs_np, requires_grad=True)
        flat = torch.tensor(table.reshape(-1))
        out = evs.sparse_expectation(probs, lambda r, c: flat[r * 6 + c])
        out.sum().backward()
        np.testing.assert_allclose(probs.grad.numpy(), np.where(probs_np != 0, table, 0.0))

    def test_grad_through_ev_softmax_is_the_closed_form(self):
        torch = self.torch
        logits_np = RNG.normal(scale=2.0, size=(5, 6))
        table = RNG.normal(size=(5, 6))
        upstream = RNG.normal(size=5)
        logits = torch.tensor(logits_np, requires_grad=True)
        flat = torch.tensor(table.reshape(-1))
        out = evs.sparse_expectation(evs.ev_softmax(logits), lambda r, c: flat[r * 6 + c])
        (out * torch.tensor(upstream)).sum().backward()
        expected = closed_form_logit_grad(logits_np, table, upstream)
        np.testing.assert_allclose(logits.grad.numpy(), expected, rtol=1e-10, atol=1e-14)

    def test_grad_through_fn_parameters_matches_the_dense_computation(self):
        torch = self.torch
        torch.manual_seed(0)
        decoder = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
        ).double()
        onehot = torch.eye(6, dtype=torch.float64)
        probs = evs.ev_softmax(torch.tensor(RNG.normal(scale=2.0, size=(4, 6))))

        def sparse():
            return evs.sparse_expectation(probs, lambda r, c: decoder(onehot[c]) * (r + 1)[:, None])

        def dense():
            rows = torch.arange(1, 5, dtype=torch.float64)[:, None, None]
            return (probs[..., None] * decoder(onehot)[None] * rows).sum(1)

        grads = []
        for compute in (sparse, dense):
            decoder.zero_grad()
            value = compute()
            (value**2).sum().backward()
            grads.append([p.grad.clone() for p in decoder.parameters()])
            grads.append(value.detach())
        for got, expected in zip(grads[0] + [grads[1]], grads[2] + [grads[3]], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)

    def test_size_padding_keeps_fn_gradients_finite(self):
        torch = self.torch
        probs_np = sparse_probs((4, 6))
        probs_np[0, 0] = 0.0
        probs = torch.tensor(probs_np)
        # d/dw log(w) = 1/w is infinite where w = 0, i.e. off the support: fn must not
        # be evaluated there, even for padding whose cotangent is 0 (0 * inf = NaN).
        w = torch.tensor(probs_np.reshape(-1), requires_grad=True)
        size = int(np.count_nonzero(probs_np)) + 4
        out = evs.sparse_expectation(probs, lambda r, c: torch.log(w[r * 6 + c]), size=size)
        out.sum().backward()
        np.testing.assert_allclose(w.grad.numpy(), (probs_np != 0).reshape(-1) * 1.0)

    def test_all_zero_probs_stay_connected(self):
        torch = self.torch
        probs = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
        out = evs.sparse_expectation(probs, lambda r, c: torch.ones(r.shape[0], 2))
        out.sum().backward()
        assert out.dtype == torch.float64
        torch.testing.assert_close(probs.grad, torch.zeros(3, 4, dtype=torch.float64))


class TestJax:
    @pytest.fixture(autouse=True)
    def _jax(self):
        self.jax = pytest.importorskip("jax")
        self.jax.config.update("jax_enable_x64", True)
        self.jnp = self.jax.numpy

    def lookup(self, table):
        flat, classes = self.jnp.asarray(table.reshape(-1)), table.shape[1]
        return lambda r, c: flat[r * classes + c]

    def test_grad_into_probs_and_through_ev_softmax(self):
        jax, jnp = self.jax, self.jnp
        logits = RNG.normal(scale=2.0, size=(5, 6))
        table = RNG.normal(size=(5, 6))
        upstream = RNG.normal(size=5)
        fn = self.lookup(table)
        probs = reference.ev_softmax(logits)
        grad_p = jax.grad(lambda p: evs.sparse_expectation(p, fn).sum())(jnp.asarray(probs))
        np.testing.assert_allclose(np.asarray(grad_p), np.where(probs != 0, table, 0.0))

        def loss(v, size=None):
            out = evs.sparse_expectation(evs.ev_softmax(v), fn, size=size)
            return jnp.sum(out * jnp.asarray(upstream))

        expected = closed_form_logit_grad(logits, table, upstream)
        bound = int(np.count_nonzero(probs)) + 3
        for grad in (jax.grad(loss), jax.jit(jax.grad(lambda v: loss(v, bound)))):
            got = np.asarray(grad(jnp.asarray(logits)))
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)

    def test_grad_through_fn_parameters_matches_the_dense_computation(self):
        jax, jnp = self.jax, self.jnp
        weight = jnp.asarray(RNG.normal(size=(6, 3)))
        probs = jnp.asarray(sparse_probs((4, 6)))

        def sparse(w):
            return evs.sparse_expectation(probs, lambda r, c: jnp.tanh(w[c]) * (r + 1.0)[:, None])

        def dense(w):
            rows = jnp.arange(1.0, 5.0)[:, None, None]
            return jnp.sum(probs[..., None] * jnp.tanh(w)[None] * rows, axis=1)

        for f in (sparse, dense):
            assert f(weight).shape == (4, 3)
        np.testing.assert_allclose(sparse(weight), dense(weight), rtol=1e-12)
        grads = [jax.grad(lambda w, f=f: jnp.sum(f(w) ** 2))(weight) for f in (sparse, dense)]
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)

    def test_size_padding_keeps_fn_gradients_finite(self):
        jax, jnp = self.jax, self.jnp
        probs_np = sparse_probs((4, 6))
        probs_np[0, 0] = 0.0
        probs = jnp.asarray(probs_np)
        size = int(np.count_nonzero(probs_np)) + 4

        def total(w):
            return evs.sparse_expectation(probs, lambda r, c: jnp.log(w[r, c]), size=size).sum()

        for grad in (jax.grad(total), jax.jit(jax.grad(total))):
            np.testing.assert_allclose(grad(probs), (probs_np != 0) * 1.0)

    def test_jit_with_exact_size(self):
        jax, jnp = self.jax, self.jnp
        probs = sparse_probs((5, 6))
        table = RNG.normal(size=(5, 6))
        count = int(np.count_nonzero(probs))
        run = jax.jit(lambda p: evs.sparse_expectation(p, self.lookup(table), size=count))
        got = np.asarray(run(jnp.asarray(probs)))
        np.testing.assert_allclose(got, dense_expectation(probs, table, -1), rtol=1e-12)

    def test_jit_size_too_small_gives_nan_in_the_affected_rows_only(self):
        jax, jnp = self.jax, self.jnp
        probs = sparse_probs((6, 5))
        table = RNG.normal(size=(6, 5))
        ends = np.cumsum(np.count_nonzero(probs, axis=1))
        size = int(ends[2]) + 1  # rows 0..2 fit, row 3 is cut after one term
        affected = (ends > size) & (np.count_nonzero(probs, axis=1) > 0)
        assert affected.any() and not affected[:3].any()
        run = jax.jit(lambda p: evs.sparse_expectation(p, self.lookup(table), size=size))
        got = np.asarray(run(jnp.asarray(probs)))
        assert np.isnan(got[affected]).all()
        expected = dense_expectation(probs, table, -1)
        np.testing.assert_allclose(got[~affected], expected[~affected], rtol=1e-12)

    def test_jit_without_size_and_eager_too_small_raise_naming_size(self):
        jax, jnp = self.jax, self.jnp
        probs = jnp.asarray(sparse_probs((4, 6)))
        fn = self.lookup(np.ones((4, 6)))
        with pytest.raises(ValueError, match=r"size must be given under jax\.jit"):
            jax.jit(lambda p: evs.sparse_expectation(p, fn))(probs)
        with pytest.raises(ValueError, match="size=2 is smaller"):
            evs.sparse_expectation(probs, fn, size=2)
