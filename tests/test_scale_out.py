"""Scale-out: Dask chunked along the normalized axis or by whole rows; JAX on several devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import evsoftmax as evs

from . import reference as ref
from .backends import host_devices_xla_flags


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 50))
    x[1, 3] = -np.inf
    where = rng.random(size=x.shape) > 0.1
    return x, where


@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_dask_chunked_along_normalized_axis(epsilon):
    da = pytest.importorskip("dask.array")
    x, where = _data()
    dx = da.from_array(x, chunks=(2, 7))
    dw = da.from_array(where, chunks=(3, 7))
    out = evs.ev_softmax(dx, where=dw, epsilon=epsilon)
    assert isinstance(out, da.Array)
    assert out.chunks[1] == dx.chunks[1]  # no rechunking of the normalized axis
    np.testing.assert_allclose(out.compute(), evs.ev_softmax(x, where=where, epsilon=epsilon))
    np.testing.assert_allclose(out.compute(), ref.ev_softmax(x, eps=epsilon, where=where))
    log = evs.log_ev_softmax(dx, where=dw, epsilon=epsilon).compute()
    np.testing.assert_allclose(log, evs.log_ev_softmax(x, where=where, epsilon=epsilon))


@pytest.mark.parametrize(
    "name", ["ev_softmax", "log_ev_softmax", "ev_softmax_support", "softmax", "sparsemax"]
)
def test_dask_chunks_of_whole_rows_run_block_by_block(name):
    da = pytest.importorskip("dask.array")
    x, where = _data()
    dx = da.from_array(x, chunks=(4, 50))  # two blocks of whole rows
    dw = da.from_array(where[0], chunks=10)  # one row of the mask, chunked its own way
    out = getattr(evs, name)(dx, where=dw)
    assert isinstance(out, da.Array)
    assert out.chunks == dx.chunks
    # One task a block: the blocks' own (NumPy) function, not the core's ~50 layers of
    # operations; the other layers are the inputs and the mask cut as the scores are.
    kinds = {layer.rsplit("-", 1)[0] for layer in out.__dask_graph__().layers}
    assert kinds == {"rows", "array", "broadcast_to", "rechunk-merge"}, kinds
    expected = getattr(evs, name)(x, where=np.broadcast_to(where[0], x.shape))
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out.compute(), expected)
    if name == "ev_softmax":
        np.testing.assert_allclose(out.compute(), ref.ev_softmax(x, where=where[0]), rtol=1e-12)


def test_dask_whole_rows_of_unknown_size_and_a_mask_take_the_core():
    da = pytest.importorskip("dask.array")
    x, where = _data()
    dx = da.from_array(x, chunks=(3, 50))
    unknown = dx[dx[:, 0] > -10]  # boolean indexing: the row count is unknown (NaN)
    assert np.isnan(unknown.shape[0])
    got = evs.ev_softmax(unknown, where=where[0]).compute()
    np.testing.assert_allclose(got, ref.ev_softmax(x, where=where[0]), rtol=1e-12)
    np.testing.assert_allclose(evs.ev_softmax(unknown).compute(), ref.ev_softmax(x), rtol=1e-12)


def test_dask_on_distributed_local_cluster():
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("distributed")
    x, where = _data(1)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        out = evs.ev_softmax(da.from_array(x, chunks=(3, 7)), where=da.from_array(where, chunks=7))
        result = client.compute(out).result()
    np.testing.assert_allclose(result, ref.ev_softmax(x, where=where))


_SHARDED = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import evsoftmax as evs

    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 64)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()), ("d",))
    expected = evs.ev_softmax(x)
    f = jax.jit(lambda a: evs.ev_softmax(a, axis=-1))
    for spec in (P("d", None), P(None, "d")):  # batch axis, then the normalized axis
        xs = jax.device_put(x, NamedSharding(mesh, spec))
        out = f(xs)
        assert len(out.sharding.device_set) == 4
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    print("OK")
    """
)


@pytest.mark.slow
def test_jax_sharded_across_four_host_devices():
    pytest.importorskip("jax")
    env = {**os.environ, "XLA_FLAGS": host_devices_xla_flags(4)}
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("OK")
