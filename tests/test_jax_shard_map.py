"""ev-softmax inside ``shard_map`` on 4 host devices: forward, ``grad`` and ``jvp``.

Issue 12, D5: with the kernel, ``shard_map`` of ``ev_softmax`` crashed (the
platform switch's branches disagreed on their varying manual axes) and
``shard_map`` of ``grad``/``jvp`` failed on every path (the tangent map lost
the varying axes). The body of a ``shard_map`` is local to its device, so on
the kernel path it runs the FFI kernel; both paths run in one subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (JAX fixes the device
count when it starts), which saves its results; the float64 references are
computed here.
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
from evsoftmax import _ext

from . import reference as ref
from .backends import host_devices_xla_flags
from .jax_helpers import closed_form_jvp, closed_form_log_jvp, rows_away_from_ties

# The module fixture runs a subprocess: its tests share one xdist worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("test_jax_shard_map")

EPSILON = 1e-3

_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import evsoftmax as evs
    from evsoftmax.adapters.jax import kernels

    kernels._MIN_LENGTH = {}  # the test rows are short: take the kernel anyway
    shard_map = jax.shard_map if hasattr(jax, "shard_map") else jax.experimental.shard_map.shard_map
    data = np.load(sys.argv[1])
    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("d",))
    rows = P("d", None)

    def per_shard(fun):
        return jax.jit(shard_map(fun, mesh=mesh, in_specs=rows, out_specs=rows))

    def forward(x):
        return evs.ev_softmax(x, epsilon=EPSILON), evs.log_ev_softmax(x, epsilon=EPSILON)

    def grad(x, c):
        return jax.grad(lambda x: jnp.sum(evs.ev_softmax(x, epsilon=EPSILON) * c))(x)

    def jvp(x, c):
        return jax.jvp(lambda x: evs.ev_softmax(x, epsilon=EPSILON), (x,), (c,))[1]

    def log_jvp(x, c):
        return jax.jvp(lambda x: evs.log_ev_softmax(x, epsilon=EPSILON), (x,), (c,))[1]

    out = {}
    for path in sys.argv[3:]:
        if path == "array-ops":
            os.environ["EVSOFTMAX_NO_CPU_KERNELS"] = "1"
        jax.clear_caches()
        x, c = (jax.device_put(data[k], NamedSharding(mesh, rows)) for k in ("x", "c"))
        f = per_shard(forward)
        out[path + "_kernel_calls"] = np.array(f.lower(x).as_text().count("custom_call @"))
        out[path + "_p"], out[path + "_logp"] = map(np.asarray, f(x))
        for name, fun in (("grad", grad), ("jvp", jvp), ("log_jvp", log_jvp)):
            out[path + "_" + name] = np.asarray(per_shard(fun)(x, c))
    np.savez(sys.argv[2], **out)
    """
).replace("EPSILON", repr(EPSILON))


def _paths() -> list[str]:
    return ["kernel", "array-ops"] if _ext.available() else ["array-ops"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("shard_map")
    x = rows_away_from_ties((8, 12))
    x[1, 3] = -np.inf
    x[5] = -np.inf  # a row with no valid entry
    c = np.random.default_rng(4).standard_normal(x.shape)
    np.savez(tmp / "in.npz", x=x, c=c)
    package_root = str(Path(evsoftmax.__file__).parent.parent)
    env = {
        **os.environ,
        "XLA_FLAGS": host_devices_xla_flags(4),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-c", _SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npz")]
    subprocess.run([*command, *_paths()], env=env, check=True, timeout=300)
    out = dict(np.load(tmp / "out.npz"))
    out.update(x=x, c=c)
    return out


@pytest.mark.parametrize("path", ["kernel", "array-ops"])
def test_shard_map_forward_and_derivatives(results, path):
    if path not in _paths():
        pytest.skip("evsoftmax's compiled CPU kernels are not built")
    r = results
    x, c = r["x"], r["c"]
    # The body is local to each device: the kernel runs inside shard_map.
    assert (int(r[f"{path}_kernel_calls"]) > 0) == (path == "kernel")
    p = ref.ev_softmax(x, eps=EPSILON)
    np.testing.assert_allclose(r[f"{path}_p"], p, rtol=1e-12, atol=1e-300)
    logp = ref.log_ev_softmax(x, eps=EPSILON)
    np.testing.assert_allclose(r[f"{path}_logp"], logp, rtol=1e-12)
    np.testing.assert_allclose(r[f"{path}_grad"], closed_form_jvp(p, c), atol=1e-14)
    np.testing.assert_allclose(r[f"{path}_jvp"], closed_form_jvp(p, c), atol=1e-14)
    log_jvp = closed_form_log_jvp(p, c, valid=x != -np.inf)
    np.testing.assert_allclose(r[f"{path}_log_jvp"], log_jvp, atol=1e-13)
    assert np.all(r[f"{path}_p"][5] == 0.0) and np.all(r[f"{path}_grad"][5] == 0.0)
