"""The benchmark suite behind ``evsoftmax bench``: options, arithmetic, and a tiny end-to-end run.

No test here asserts a time: only that the suite runs, what it writes, and
that its derived numbers (ratios, bandwidths) follow from its measurements.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evsoftmax import cli
from evsoftmax._bench._cases import GROUPS, Case, parse_groups
from evsoftmax._bench._document import command_line, write_json
from evsoftmax._bench._markdown import END, START, insert_between_markers, render_markdown
from evsoftmax._bench._methods import reference_composition
from evsoftmax._bench._shapes import parse_shapes, sweep_shapes
from evsoftmax._bench._suite import (
    FORWARD,
    FORWARD_BACKWARD,
    BenchConfig,
    _away_from_mean,
    _Judging,
    _records,
    causal_mask,
    config_dict,
    run_suite,
)
from evsoftmax._bench._targets import QUICK_NOTICE, verdict
from evsoftmax._bench._timing import Measurement, TimingPlan, interleaved
from evsoftmax._cli_bench import config_from_args

from . import reference
from .backends import gpu_unavailable_reason, selected, to_numpy

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIFFERENTIABLE = {"torch", "torch-compile", "jax"}
TOP_KEYS = {
    "schema",
    "allocator",
    "created",
    "command",
    "config",
    "versions",
    "machine",
    "backends",
    "notice",
    "results",
    "checks",
    "memory",
    "elapsed_s",
}
RECORD_KEYS = {
    "backend",
    "case",
    "group",
    "shape",
    "k",
    "method",
    "mode",
    "median_s",
    "min_s",
    "samples_s",
    "calls_per_sample",
    "peer",
    "peer_median_s",
    "ratio",
    "target",
    "verdict",
    "bytes",
    "bandwidth_gbs",
    "copy_fraction",
    "error",
}
CORE_METHODS = {"softmax", "ev_softmax", "ev_softmax_eps", "reference", "reference_eps", "copy"}


def _args(*argv: str):
    parser, _ = cli._parser()
    return parser.parse_args(["bench", *argv])


def _needs_extras() -> None:
    for name in ("rich", "matplotlib"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install '.[bench]')")


# ---------------------------------------------------------------- options


def test_default_config_is_the_issue_plan():
    config = config_from_args(_args())
    assert config.shapes == ((4096, 1024), (64, 32000), (16, 262144))
    assert config.sweep_total == 2**22
    assert [k for _, k in config.sweep] == [16, 64, 256, 1024, 4096, 16384, 65536, 262144]
    assert all(r * k == 2**22 for r, k in config.sweep)
    # (4096, 1024) and (16, 262144) are sweep points too and are timed once.
    assert len(config.all_shapes) == 9
    assert (config.plan.repeats, config.plan.warmup) == (10, 2)
    assert not config.quick
    # The short rows of DESIGN section 6 are sweep points: judged, not timed twice.
    assert config.judged_shapes == (*config.shapes, (262144, 16), (65536, 64))
    assert config.cases == GROUPS
    labels = {c.label for c in config.variants}
    assert labels == {
        "4096x1024 where", "64x1024x64 axis 1", "1024x1024 axis 0", "4096x1024 float16",
        "4096x1024 bfloat16", "4096x1024 float64", "4096x1024 log ε",
    }  # fmt: skip
    assert config.baseline_shapes == ((4096, 128), (1024, 1024), (64, 32000))


def test_quick_shrinks_and_options_override_it():
    quick = config_from_args(_args("--quick"))
    assert quick.quick
    assert max(math.prod(s) for s in quick.all_shapes) <= 2**16
    assert quick.plan.repeats < 10
    custom = config_from_args(_args("--quick", "--repeats", "7", "--shapes", "8x16"))
    assert custom.plan.repeats == 7
    assert custom.shapes == ((8, 16),)


def test_cli_parses_every_option():
    args = _args(
        "--backends", "numpy,torch", "--shapes", "gpu,2x3x5", "--sweep-total", "1024",
        "--sweep-ks", "16,256,4096", "--repeats", "4", "--warmup", "0", "--max-time", "0.5",
        "--device", "cpu", "--json", "out.json", "--plot", "out.png", "--no-progress",
    )  # fmt: skip
    config = config_from_args(args)
    assert config.backends == ("numpy", "torch")
    assert config.shapes == ((8192, 8192), (64, 128000), (2, 3, 5))
    assert config.sweep == ((64, 16), (4, 256))
    assert config.plan == TimingPlan(repeats=4, warmup=0, min_sample_s=2e-3, max_time_s=0.5)
    assert config.device == "cpu"
    assert (args.json, args.plot, args.no_progress) == ("out.json", "out.png", True)
    everything = config_from_args(_args("--backends", "all")).backends
    assert set(everything) == {
        "numpy", "torch", "torch-compile", "jax", "cupy", "dask", "array_api_strict",
    }  # fmt: skip
    assert config_from_args(_args("--backends", "jax,all,numpy")).backends[0] == "jax"
    assert len(config_from_args(_args("--backends", "jax,all,numpy")).backends) == 7
    assert config_from_args(_args("--sweep-total", "0")).sweep == ()


@pytest.mark.parametrize("extra", [(), ("--quick", "--cases", "where,memory"), ("--cases", "none")])
def test_recorded_command_reproduces_the_config(extra):
    argv = ("--backends", "numpy", "--shapes", "8x16", "--repeats", "4", *extra)
    config = config_from_args(_args(*argv))
    command = command_line(config_dict(config)).split()
    assert command[:2] == ["evsoftmax", "bench"]
    again = config_from_args(_args(*command[2:]))
    assert config_dict(again) == config_dict(config)


def test_case_groups_and_labels():
    assert parse_groups("all") == GROUPS
    assert parse_groups("none") == ()
    assert parse_groups("dtype, where,dtype") == ("dtype", "where")
    with pytest.raises(ValueError, match="unknown case groups"):
        parse_groups("where,masks")
    assert config_from_args(_args("--cases", "none")).variants == ()
    quick = config_from_args(_args("--quick", "--cases", "dtype"))
    assert [c.dtype for c in quick.variants] == ["float16", "bfloat16", "float64"]
    assert quick.baseline_shapes == ()
    assert quick.judged_shapes == quick.shapes  # no "short" group
    assert Case((4, 8, 2), "axis", axis=1).label == "4x8x2 axis 1"
    assert Case((4, 8), "axis", axis=-1).label == "4x8"
    assert Case((4, 8), "where", dtype="float16", where=True).label == "4x8 float16 where"
    bf16 = next(c for c in quick.variants if c.dtype == "bfloat16")
    assert not bf16.runs_on("numpy")
    assert bf16.runs_on("jax")


def test_causal_mask_keeps_a_prefix_of_every_row():
    mask = causal_mask((6, 4))
    expected = np.array([[j <= i % 4 for j in range(4)] for i in range(6)])
    np.testing.assert_array_equal(mask, expected)
    assert mask.any(axis=1).all()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shapes", "12xA"], "4096x1024"),
        (["--shapes", "0x5"], "4096x1024"),
        (["--backends", "numpy,nope"], "unknown backends"),
        (["--repeats", "-1"], ">= 0"),
        (["--sweep-ks", "16,x"], "--sweep-ks"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_cli_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_extras_say_how_to_install(monkeypatch, capsys):
    from evsoftmax import _cli_bench

    real = importlib.util.find_spec
    monkeypatch.setattr(
        _cli_bench.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("rich", "matplotlib") else real(name, *a),
    )
    assert cli.main(["bench", "--quick", "--plot", "x.png"]) == 2
    err = capsys.readouterr().err
    assert 'pip install ".[bench]" (from a clone of the repository)' in err
    assert "rich and matplotlib, which are not installed" in err
    assert cli.main(["bench", "--quick"]) == 2
    assert "needs rich, which is not installed" in capsys.readouterr().err


def test_shape_helpers():
    assert parse_shapes("default")[0] == (4096, 1024)
    assert parse_shapes("none") == ()
    assert parse_shapes(" 8X16 , 4x2 ") == ((8, 16), (4, 2))
    # K larger than the total is left out; rows = total // K.
    assert sweep_shapes(100, (10, 30, 1000)) == ((10, 10), (3, 30))


def test_import_evsoftmax_stays_light():
    code = (
        "import sys, evsoftmax, evsoftmax.cli, evsoftmax._cli_bench, evsoftmax._bench._suite;"
        "evsoftmax.cli._parser();"
        "heavy = {'rich', 'matplotlib', 'torch', 'jax', 'scipy', 'entmax', 'dask'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_benchmarks_entry_script_is_the_same_command():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--quick" in out
    assert "--plot" in out


# ---------------------------------------------------------------- arithmetic


def test_interleaved_samples_every_method_and_survives_errors():
    calls = {"a": 0, "b": 0, "bad": 0}

    def counter(name):
        def fn():
            calls[name] += 1
            if name == "bad" and calls[name] > 3:
                raise RuntimeError("boom\nsecond line")

        return fn

    plan = TimingPlan(repeats=5, warmup=1, min_sample_s=0.0, max_time_s=math.inf)
    rounds = []
    out = interleaved({n: counter(n) for n in calls}, plan, lambda: rounds.append(1))
    assert len(rounds) == plan.repeats + 1
    assert [len(out[n].samples) for n in ("a", "b")] == [5, 5]
    assert out["a"].number == 1
    # warm-up (1) + calibration (1) + one sample: the fourth call raises.
    assert out["bad"].samples != []
    assert out["bad"].error == "RuntimeError: boom"
    assert calls["bad"] == 4


def test_interleaved_stops_a_slow_method_after_three_samples():
    plan = TimingPlan(repeats=10, warmup=0, min_sample_s=0.0, max_time_s=0.0)
    out = interleaved({"x": lambda: None}, plan)
    assert len(out["x"].samples) == 3


def test_ratio_and_bandwidth_follow_from_the_medians():
    from evsoftmax._bench._backends import NumpyBackend

    shape = (4, 8)  # 32 float32 = 128 bytes
    measured = {
        ("softmax", FORWARD): Measurement(samples=[2e-3, 1e-3, 3e-3]),
        ("ev_softmax", FORWARD): Measurement(samples=[5e-3]),
        ("copy", FORWARD): Measurement(samples=[1e-3, 1e-3]),
        ("softmax", FORWARD_BACKWARD): Measurement(samples=[4e-3]),
        ("ev_softmax", FORWARD_BACKWARD): Measurement(samples=[6e-3]),
    }
    rows = {(r["method"], r["mode"]): r for r in _records(NumpyBackend(), Case(shape), 4, measured)}
    ev = rows["ev_softmax", FORWARD]
    assert ev["ratio"] == pytest.approx(5e-3 / 2e-3)
    assert ev["bytes"] == 2 * 128
    assert ev["bandwidth_gbs"] == pytest.approx(256 / 5e-3 / 1e9)
    assert ev["copy_fraction"] == pytest.approx(1e-3 / 5e-3)
    assert rows["softmax", FORWARD]["ratio"] == 1.0
    grad = rows["ev_softmax", FORWARD_BACKWARD]
    assert grad["ratio"] == pytest.approx(6e-3 / 4e-3)
    assert grad["bytes"] == 5 * 128
    assert grad["copy_fraction"] == pytest.approx((640 / 6e-3) / (256 / 1e-3))
    assert all(r["target"] is None and r["verdict"] is None for r in rows.values())


def test_verdict_passes_at_the_target_and_fails_above_it():
    assert verdict(1.3, 1.3) == "pass"
    assert verdict(1.3000001, 1.3) == "fail"
    assert verdict(0.1, 0.33) == "pass"
    assert verdict(None, 1.0) == "n/a"
    assert verdict(math.nan, 1.0) == "n/a"
    # A --quick run's small shapes are never judged, whatever the ratio.
    assert verdict(0.5, 1.0, quick=True) == "smoke test"
    assert verdict(5.0, 1.0, quick=True) == "smoke test"


def test_records_judge_only_the_targeted_methods_against_their_peers():
    from evsoftmax._bench._backends import TorchBackend

    measured = {
        ("sparsemax", FORWARD): Measurement(samples=[1e-3]),
        ("entmax.sparsemax", FORWARD): Measurement(samples=[4e-3]),
        ("entmax15", FORWARD): Measurement(samples=[2e-3]),
        ("entmax.entmax15", FORWARD): Measurement(samples=[4e-3]),
    }
    peers = {"sparsemax": "entmax.sparsemax", "entmax15": "entmax.entmax15"}
    peers.update({v: v for v in peers.values()})
    judging = _Judging({"sparsemax": 0.33, "entmax15": 0.33})
    case = Case((8, 16), "baselines")
    rows = {r["method"]: r for r in _records(TorchBackend(), case, 4, measured, peers, judging)}
    assert rows["sparsemax"]["ratio"] == pytest.approx(0.25)
    assert rows["sparsemax"]["peer_median_s"] == 4e-3
    assert (rows["sparsemax"]["verdict"], rows["entmax15"]["verdict"]) == ("pass", "fail")
    assert rows["entmax.sparsemax"]["ratio"] == 1.0
    assert rows["entmax.sparsemax"]["verdict"] is None
    assert {r["case"] for r in rows.values()} == {"8x16"}
    quick = _records(TorchBackend(), case, 4, measured, peers, _Judging(judging.targets, True))
    assert {r["verdict"] for r in quick if r["target"] is not None} == {"smoke test"}


@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.5])
def test_reference_composition_is_ev_softmax(xp, epsilon):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 17))
    x[0, :] = 3.0  # constant row: uniform
    softmax = lambda a: xp.exp(a) / xp.sum(xp.exp(a), axis=-1, keepdims=True)  # noqa: E731
    got = reference_composition(xp.asarray(x), epsilon=epsilon, softmax=softmax)
    expected = reference.ev_softmax(x, eps=epsilon)
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-15)


def test_check_input_keeps_entries_away_from_the_row_mean():
    x = np.random.default_rng(2).standard_normal((64, 1000)).astype(np.float32)
    x[0, :3] = x[0].mean()  # exact ties
    moved = _away_from_mean(x, gap=1e-2).astype(np.float64)
    gaps = np.abs(moved - moved.mean(axis=-1, keepdims=True))
    assert gaps.min() > 5e-3
    far = np.abs(x - x.astype(np.float64).mean(axis=-1, keepdims=True)) >= 1e-2
    np.testing.assert_array_equal(moved[far], x[far])


def test_check_flags_a_wrong_ev_softmax(monkeypatch, capsys):
    pytest.importorskip("scipy")
    from scipy.special import softmax

    import evsoftmax

    # A "fast path" that forgot the support: plain softmax.
    monkeypatch.setattr(evsoftmax, "ev_softmax", lambda x, axis=-1, epsilon=0.0: softmax(x, axis))
    config = BenchConfig(
        backends=("numpy",),
        shapes=((8, 64),),
        sweep_total=0,
        sweep_ks=(),
        plan=TimingPlan(repeats=1, warmup=0, min_sample_s=0.0, max_time_s=0.0),
        cases=(),
    )
    doc = run_suite(config)
    assert [c["method"] for c in doc["checks"]] == ["ev_softmax", "ev_softmax_eps"]
    assert all(c["max_abs_diff"] > 1e-3 for c in doc["checks"])
    _needs_extras()
    from evsoftmax._bench._report import print_tables

    print_tables(doc)
    assert "ev_softmax disagrees with reference" in capsys.readouterr().out


def test_json_is_strict(tmp_path):
    path = tmp_path / "r.json"
    write_json({"a": [1.0, math.nan], "b": {"c": math.inf}}, path)

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=no_constants) == {
        "a": [1.0, None],
        "b": {"c": None},
    }


# ---------------------------------------------------------------- end to end


def _bench_backends() -> list[Any]:
    """The selected backends, plus torch under torch.compile where torch is selected."""
    names: list[Any] = list(selected())
    if "torch" in names:
        # torch.compile's own internals use deprecated torch APIs (not ours).
        ignore = pytest.mark.filterwarnings("ignore::DeprecationWarning")
        names.append(pytest.param("torch-compile", marks=ignore))
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _bench_backends())
def test_bench_runs_end_to_end(name, tmp_path, capsys):
    _needs_extras()
    reason = gpu_unavailable_reason(name)
    if reason is not None:
        pytest.skip(reason)
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    device = "auto" if name == "cupy" else "cpu"
    # Under torch.compile every method compiles once per shape: one sweep point (the
    # main shape itself) keeps the test to one compile per method and mode.
    ks = "16" if name == "torch-compile" else "16,128"
    status = cli.main(
        ["bench", "--backends", name, "--shapes", "16x16", "--sweep-total", "256",
         "--sweep-ks", ks, "--repeats", "2", "--warmup", "1", "--max-time", "0",
         "--device", device, "--no-progress", "--json", str(json_path), "--plot", str(png_path),
         "--cases", "none"]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "time ÷" in out

    assert png_path.read_bytes()[:8] == PNG_SIGNATURE
    doc = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "evsoftmax-bench/1"
    assert doc["allocator"].startswith("glibc mallopt") or sys.platform != "linux"
    assert "M_MMAP_MAX=0" in doc["allocator"] or sys.platform != "linux"
    assert doc["command"].startswith("evsoftmax bench --backends " + name)
    assert doc["versions"]["numpy"] == np.__version__
    assert doc["machine"]["cpu_count"] >= 1
    sweep = [[16, 16]] if name == "torch-compile" else [[16, 16], [2, 128]]
    assert doc["config"]["sweep_shapes"] == sweep
    info = doc["backends"][name]
    assert info["status"] == "ok"
    assert set(info["methods"]) >= CORE_METHODS

    modes = {FORWARD, FORWARD_BACKWARD} if name in DIFFERENTIABLE else {FORWARD}
    shapes = {tuple(shape) for shape in sweep}  # the main shape is a sweep point: timed once
    rows = doc["results"]
    assert all(set(r) == RECORD_KEYS for r in rows)
    assert {(tuple(r["shape"]), r["mode"]) for r in rows} == {(s, m) for s in shapes for m in modes}
    for shape in shapes:
        for mode in modes:
            found = {r["method"] for r in rows if tuple(r["shape"]) == shape and r["mode"] == mode}
            expected = set(info["methods"]) - ({"copy"} if mode == FORWARD_BACKWARD else set())
            assert found == expected
    for r in rows:
        assert r["error"] is None, r
        assert r["k"] == r["shape"][-1]
        assert len(r["samples_s"]) == 2
        assert r["median_s"] == pytest.approx(float(np.median(r["samples_s"])))
        assert r["median_s"] > 0
        assert r["bytes"] == math.prod(r["shape"]) * 4 * (5 if r["mode"] == FORWARD_BACKWARD else 2)
        if r["method"] == "softmax":
            assert r["ratio"] == 1.0
    checks = doc["checks"]
    assert len(checks) == 2 * len(shapes)
    assert all(c["error"] is None and c["max_abs_diff"] < 1e-5 for c in checks)


def _bench_json(tmp_path, capsys, session: str, *argv: str) -> tuple[str, dict[str, Any]]:
    """Run ``evsoftmax bench *argv --json`` in the ``session`` backend's test session only.

    Returns its printed report and its strict-JSON document.
    """
    _needs_extras()
    if session not in selected():
        pytest.skip(f"runs in the {session} session (its backend's)")
    json_path = tmp_path / "bench.json"
    assert cli.main(["bench", *argv, "--no-progress", "--json", str(json_path)]) == 0
    doc = json.loads(json_path.read_text(), parse_constant=lambda c: pytest.fail(c))
    return capsys.readouterr().out, doc


def test_attention_suite_runs_end_to_end(tmp_path, capsys):
    """``--suite attention --quick``: every method and mode timed, peak memory, checks, JSON."""
    out, doc = _bench_json(
        tmp_path, capsys, "torch", "--suite", "attention", "--quick", "--repeats", "2",
        "--warmup", "1", "--max-time", "0",
    )  # fmt: skip
    assert "time ÷ scaled_dot_product_attention (quick: smoke-test sizes)" in out
    assert doc["command"].endswith("--suite attention --quick")
    part = doc["attention"]
    cases = {"2x128x128x16 full", "2x128x128x16 causal"}
    keys = {(c, m, mode) for c in cases for m in ("sdpa", "ev_attention", "dense")
            for mode in (FORWARD, FORWARD_BACKWARD)}  # fmt: skip
    assert {(r["case"], r["method"], r["mode"]) for r in part["results"]} == keys
    for r in part["results"]:
        assert r["error"] is None, r
        assert len(r["samples_s"]) == 2 and r["median_s"] > 0
        baseline = next(
            b for b in part["results"]
            if (b["case"], b["method"], b["mode"]) == (r["case"], "sdpa", r["mode"])
        )  # fmt: skip
        assert r["ratio"] == pytest.approx(r["median_s"] / baseline["median_s"])
    if sys.platform.startswith("linux"):
        assert {(m["case"], m["method"], m["mode"]) for m in part["memory"]} == keys
        assert all(m["peak_mib"] >= 0 for m in part["memory"])
    # float32 ev_attention and the dense composition agree but for threshold ties (~1/S).
    assert {c["case"] for c in part["checks"]} == cases
    assert all(c["max_abs_diff"] < 1e-2 for c in part["checks"])


def test_quick_matrix_runs_end_to_end_on_numpy(tmp_path, capsys):
    """``--quick`` on NumPy: every case group timed, memory measured, all marked smoke tests."""
    out, doc = _bench_json(
        tmp_path, capsys, "numpy", "--quick", "--backends", "numpy", "--sweep-total", "0",
        "--repeats", "1", "--warmup", "0", "--max-time", "0",
    )  # fmt: skip
    assert QUICK_NOTICE in out
    assert "numpy: every case against its target" in out
    assert doc["notice"] == QUICK_NOTICE
    assert doc["command"].endswith("--quick")
    judged = [r for r in doc["results"] if r["target"] is not None]
    assert {r["group"] for r in judged} == {"shape", "where", "axis", "dtype", "log"}
    labels = {r["case"] for r in judged}
    assert labels == {
        "64x1000", "4096x16", "1024x64", "64x1000 where", "8x64x8 axis 1", "64x64 axis 0",
        "64x1000 float16", "64x1000 float64", "64x1000 log ε",
    }  # fmt: skip
    for r in judged:
        assert r["error"] is None, r
        assert r["method"] == ("log_ev_softmax" if r["group"] == "log" else "ev_softmax")
        assert r["target"] == 1.0 and r["verdict"] == "smoke test"
        assert r["ratio"] == pytest.approx(r["median_s"] / r["peer_median_s"])
    # bfloat16 is not NumPy's; the baselines are torch's.
    assert not any("bfloat16" in r["case"] or r["group"] == "baselines" for r in doc["results"])
    assert [m["backend"] for m in doc["memory"]] == ["numpy"] * 3
    for m in doc["memory"]:
        assert m["error"] is None, m
        assert m["ratio"] > 0 and m["verdict"] == "smoke test" and m["target"] == 2.0


def _synthetic_doc() -> dict[str, Any]:
    def row(backend, case, group, method, peer, mode, ratio, target, verdict):
        return {"backend": backend, "case": case, "group": group, "method": method, "peer": peer,
                "mode": mode, "ratio": ratio, "target": target, "verdict": verdict,
                "samples_s": [1e-3], "error": None}  # fmt: skip

    results = [
        row("numpy", "4096x1024", "shape", "ev_softmax", "softmax", FORWARD, 0.41, 1.0, "pass"),
        row("numpy", "4096x1024", "shape", "softmax", "softmax", FORWARD, 1.0, None, None),
        row("torch", "4096x1024", "shape", "ev_softmax", "softmax", FORWARD, 1.234, 1.3, "pass"),
        row("torch", "4096x1024", "shape", "ev_softmax", "softmax", FORWARD_BACKWARD, 2.5, 1.3,
            "fail"),
        row("numpy", "4096x1024 where", "where", "ev_softmax", "softmax", FORWARD, 12.34, 1.0,
            "fail"),
        row("torch", "4096x1024 bfloat16", "dtype", "ev_softmax", "softmax", FORWARD, None, 1.3,
            "n/a"),
        row("torch", "4096x128", "baselines", "sparsemax", "entmax.sparsemax", FORWARD, 0.2, 0.33,
            "pass"),
        row("torch", "4096x128", "baselines", "sparsemax", "entmax.sparsemax", FORWARD_BACKWARD,
            0.5, 0.33, "fail"),
    ]  # fmt: skip
    results[5]["samples_s"], results[5]["error"] = [], "RuntimeError: boom"
    memory = [
        {"backend": "numpy", "case": "float64 axis=0 (8x8)", "ratio": 1.0, "target": 2.0,
         "verdict": "pass", "error": None},
        {"backend": "torch", "case": "float16 dim 1 (8x8)", "ratio": None, "target": 2.0,
         "verdict": "n/a", "error": "RuntimeError: no"},
    ]  # fmt: skip
    return {
        "created": "2026-12-02T08:00:00+00:00",
        "command": "evsoftmax bench --backends numpy,torch",
        "elapsed_s": 90.0,
        "machine": {"cpu": "Test CPU", "usable_cpus": 2},
        "versions": {"numpy": "2.0", "torch": "2.13", "jax": None},
        "notice": None,
        "results": results,
        "memory": memory,
    }


EXPECTED_MARKDOWN = """\
Recorded 2026-12-02T08:00:00+00:00 on Test CPU (2 usable cores) by `evsoftmax bench --backends \
numpy,torch`, 1.5 minutes; numpy 2.0, torch 2.13. Ratio = evsoftmax's median time ÷ the peer's \
in the same interleaved run; ✓ at most the target, ✗ above it.

| case | numpy fwd (≤ 1.00×) | torch fwd (≤ 1.30×) | torch fwd+bwd (≤ 1.30×) |
| --- | --- | --- | --- |
| 4096x1024 | 0.41× ✓ | 1.23× ✓ | 2.50× ✗ |
| 4096x1024 where | 12.3× ✗ | — | — |
| 4096x1024 bfloat16 | — | error | — |

| shape | evsoftmax ÷ entmax | forward (≤ 0.33×) | forward+backward (≤ 0.33×) |
| --- | --- | --- | --- |
| 4096x128 | sparsemax ÷ entmax.sparsemax | 0.20× ✓ | 0.50× ✗ |

| backend | case | peak ÷ output (≤ 2.00×) |
| --- | --- | --- |
| numpy | float64 axis=0 (8x8) | 1.00× ✓ |
| torch | float16 dim 1 (8x8) | error |
"""  # noqa: RUF001


def test_markdown_renders_the_docs_tables_from_a_recorded_json():
    doc = _synthetic_doc()
    assert render_markdown(doc) == EXPECTED_MARKDOWN
    quick = render_markdown({**doc, "notice": QUICK_NOTICE})
    assert f"\n\n**{QUICK_NOTICE}.**\n\n| case |" in quick


def test_markdown_option_writes_between_the_markers(tmp_path, capsys):
    recorded = tmp_path / "run.json"
    write_json(_synthetic_doc(), recorded)
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\n{START}\nold table\n{END}\n\nAfter.\n", encoding="utf-8")
    assert cli.main(["bench", "--markdown", str(recorded)]) == 0
    assert capsys.readouterr().out == EXPECTED_MARKDOWN
    assert cli.main(["bench", "--markdown", str(recorded), "--into", str(page)]) == 0
    expected = f"# Title\n\n{START}\n\n{EXPECTED_MARKDOWN}\n{END}\n\nAfter.\n"
    assert page.read_text(encoding="utf-8") == expected
    # Rendering again replaces the block instead of adding a second one.
    assert cli.main(["bench", "--markdown", str(recorded), "--into", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == expected
    bare = tmp_path / "bare.md"
    bare.write_text("# No markers\n", encoding="utf-8")
    assert cli.main(["bench", "--markdown", str(recorded), "--into", str(bare)]) == 2
    assert "bench-matrix" in capsys.readouterr().err
    assert cli.main(["bench", "--into", str(page)]) == 2
    assert "--into goes with --markdown" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no"):
        insert_between_markers("text", "block")
