"""ev-softmax on JAX arrays sharded across 4 host devices, checked against NumPy.

Under ``jit``, a computation partitioned over several devices takes the XLA
form (XLA keeps it sharded); the kernel would be gathered.

JAX fixes the number of host devices when it starts, so the sharded run
happens in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``;
it saves its results and the float64 reference is computed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

import evsoftmax

from . import reference as ref
from .backends import host_devices_xla_flags
from .jax_helpers import closed_form_jvp, rows_away_from_ties

# The module fixture runs a subprocess: its tests share one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_jax_sharding")

EPSILON = 1e-3

_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import evsoftmax as evs
    from evsoftmax.adapters.jax import kernels

    kernels._MIN_LENGTH = {}  # the test rows are short: where the kernel serves, take it
    data = np.load(sys.argv[1])
    x, where, c = data["x"], data["where"], data["c"]
    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("d",))

    @jax.jit
    def forward(x, where):
        return (
            evs.ev_softmax(x, where=where, epsilon=EPSILON),
            evs.log_ev_softmax(x, where=where, epsilon=EPSILON),
        )

    @jax.jit
    def grad(x, where, c):
        return jax.grad(lambda x: jnp.sum(evs.ev_softmax(x, where=where, epsilon=EPSILON) * c))(x)

    out = {}
    for name, spec in (("batch", P("d", None)), ("normalized", P(None, "d"))):
        sharding = NamedSharding(mesh, spec)
        xs, ws, cs = (jax.device_put(a, sharding) for a in (x, where, c))
        assert len(xs.sharding.device_set) == 4
        p, logp = forward(xs, ws)
        g = grad(xs, ws, cs)
        out[name + "_p"], out[name + "_logp"], out[name + "_grad"] = map(np.asarray, (p, logp, g))
        out[name + "_devices"] = np.array(len(p.sharding.device_set))
        # Each output keeps the input's sharding (no gather onto every device).
        specs = {str(a.sharding.spec) for a in (p, logp, g)}
        out[name + "_same_spec"] = np.array(specs == {str(xs.sharding.spec)})
    np.savez(sys.argv[2], **out)
    """
).replace("EPSILON", repr(EPSILON))


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("sharding")
    x = rows_away_from_ties((8, 12))
    x[1, 3] = -np.inf
    where = np.ones(x.shape, bool)
    where[2, ::3] = False
    where[5] = False  # a fully masked row
    c = np.random.default_rng(4).standard_normal(x.shape)
    np.savez(tmp / "in.npz", x=x, where=where, c=c)
    package_root = str(Path(evsoftmax.__file__).parent.parent)
    env = {
        **os.environ,
        "XLA_FLAGS": host_devices_xla_flags(4),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npz")],
        env=env,
        check=True,
        timeout=300,
    )
    results = dict(np.load(tmp / "out.npz"))
    results.update(x=x, where=where, c=c)
    return results


@pytest.mark.parametrize("sharded_along", ["batch", "normalized"])
def test_sharded_results_match_numpy(sharded_results, sharded_along):
    r = sharded_results
    x, where, c = r["x"], r["where"], r["c"]
    p = ref.ev_softmax(x, eps=EPSILON, where=where)
    np.testing.assert_allclose(r[f"{sharded_along}_p"], p, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        r[f"{sharded_along}_logp"], ref.log_ev_softmax(x, eps=EPSILON, where=where), rtol=1e-12
    )
    np.testing.assert_allclose(r[f"{sharded_along}_grad"], closed_form_jvp(p, c), atol=1e-14)
    assert np.all(r[f"{sharded_along}_p"][5] == 0.0)
    # The result stays distributed over the 4 devices, sharded as the input
    # (issue 12, D6: the FFI kernel made XLA gather it, P() instead of P('d', None)).
    assert int(r[f"{sharded_along}_devices"]) == 4
    assert bool(r[f"{sharded_along}_same_spec"])
