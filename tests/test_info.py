"""``evsoftmax info``: versions, backends and which fast paths are active, and why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from evsoftmax import _cli_info, _ext
from evsoftmax.cli import main

from .cpu_kernels import require_cpu_kernels

_ISAS = ("AVX-512 (x86-64-v4 clone)", "AVX2 (x86-64-v3 clone)", "baseline x86-64")


def _report(capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_reports_versions_and_every_fast_path(capsys):
    report = _report(capsys)
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["backends"]["numpy"]["installed"]
    assert set(report["integrations"]) == {"flax", "equinox", "transformers"}
    assert set(report["fast_paths"]) == {
        "cpu_kernel",
        "jax_ffi",
        "baseline_kernels",
        "jax_ffi_baselines",
        "triton",
        "cupy_kernels",
    }
    for name, path in report["fast_paths"].items():
        # An inactive path always says why, and what to do about it.
        assert path["active"] or (path["why_not"] and path["remedy"]), name


# Each compiled kernel module: its report, the _ext global that holds it, its JAX FFI report.
KERNELS = {
    "cpu_kernel": ("_KERNELS", "_cpu_kernels", "jax_ffi"),
    "baseline_kernels": ("_BASELINES", "_baseline_kernels", "jax_ffi_baselines"),
}


@pytest.mark.parametrize("name", KERNELS)
def test_info_kernel_present_names_its_isa(name, capsys, monkeypatch):
    monkeypatch.delenv("EVSOFTMAX_NO_CPU_KERNELS", raising=False)
    require_cpu_kernels(KERNELS[name][1])
    paths = _report(capsys)["fast_paths"]
    kernel = paths[name]
    assert kernel["available"] and kernel["active"]
    assert kernel["detail"].startswith(_ISAS) or "no per-ISA clones" in kernel["detail"]
    if paths[KERNELS[name][2]]["why_not"] != "jax is not installed":
        assert paths[KERNELS[name][2]]["detail"] == "XLA custom calls on CPU (registered)"


@pytest.mark.parametrize("name", KERNELS)
def test_info_kernel_disabled_by_environment(name, capsys, monkeypatch):
    require_cpu_kernels(KERNELS[name][1])
    monkeypatch.setenv("EVSOFTMAX_NO_CPU_KERNELS", "1")
    paths = _report(capsys)["fast_paths"]
    kernel = paths[name]
    assert kernel["available"] and not kernel["active"]
    assert "EVSOFTMAX_NO_CPU_KERNELS" in kernel["why_not"]
    assert "unset EVSOFTMAX_NO_CPU_KERNELS" in kernel["remedy"]
    # The JAX FFI handlers are the same kernel: off for the same reason.
    jax_ffi = paths[KERNELS[name][2]]
    if jax_ffi["why_not"] != "jax is not installed":
        assert not jax_ffi["active"]
        assert "EVSOFTMAX_NO_CPU_KERNELS" in jax_ffi["why_not"]


@pytest.mark.parametrize("name", KERNELS)
def test_info_kernel_missing_names_the_remedy(name, capsys, monkeypatch):
    # A build without a C compiler: the extension module is absent.
    attribute, module, jax_ffi = KERNELS[name]
    monkeypatch.setattr(_ext, attribute, None)
    monkeypatch.delenv("EVSOFTMAX_NO_CPU_KERNELS", raising=False)
    paths = _report(capsys)["fast_paths"]
    kernel = paths[name]
    assert not kernel["available"] and not kernel["active"]
    assert f"evsoftmax._ext.{module} is not built" in kernel["why_not"]
    assert "C compiler" in kernel["remedy"] and "reinstall" in kernel["remedy"]
    assert not paths[jax_ffi]["active"]
    other = next(n for n in KERNELS if n != name)  # the other module is reported as it is
    assert paths[other]["available"] == (getattr(_ext, KERNELS[other][0]) is not None)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2"}, "AVX-512"),
        ({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave"}, "AVX2"),
        ({"sse2", "avx"}, "baseline x86-64"),
    ],
)
def test_info_isa_is_the_clone_the_loader_picks(monkeypatch, flags, expected):
    monkeypatch.setattr(_cli_info, "_has_clones", lambda kernels: True)
    monkeypatch.setattr(_cli_info, "_cpu_flags", lambda: frozenset(flags))
    assert _cli_info._kernel_isa(object()).startswith(expected)


def test_info_text_from_the_module_entry_point():
    # With the kernel off, the report needs no framework import: a quick process.
    env = {**os.environ, "EVSOFTMAX_NO_CPU_KERNELS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "evsoftmax", "info"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    titles = ("backends:", "fast paths:", "CPU kernel", "JAX FFI", "baseline kernels", "Triton")
    for title in (*titles, "JAX FFI baselines", "CuPy kernels"):
        assert title in done.stdout
