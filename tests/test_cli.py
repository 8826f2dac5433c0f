"""The ``evsoftmax`` command line: ``demo`` and the argument parser."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest

from evsoftmax.cli import main


def _demo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    # In-process: the frameworks are imported once per test session, not per call
    # (``python -m evsoftmax`` as a process is covered by test_info.py).
    status = main(["demo", *args])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_demo_prints_worked_example_and_exits_zero(capsys):
    status, out = _demo(capsys)
    assert status == 0, out
    e = [math.exp(v) for v in (0.4, 1.4, -0.8)]
    softmax = " ".join(f"{v / sum(e):.4f}" for v in e)
    ev = f"{e[0] / (e[0] + e[1]):.4f} {e[1] / (e[0] + e[1]):.4f} 0.0000"
    numpy_line = next(line for line in out.splitlines() if line.startswith("numpy "))
    assert softmax in numpy_line and ev in numpy_line and "[1 1 0]" in numpy_line
    assert out.strip().splitlines()[-1].startswith("OK: ")


def test_demo_fails_when_backends_disagree(capsys):
    # A negative tolerance cannot be met, so every backend counts as disagreeing.
    status, out = _demo(capsys, "--tolerance", "-1")
    assert status == 1
    assert out.strip().splitlines()[-1].startswith("FAILED: ")


def test_console_script_is_installed():
    exe = shutil.which("evsoftmax")
    if exe is None:
        pytest.skip("package not installed with its console script (e.g. PYTHONPATH checkout)")
    # The script reaching main() is what this adds: the demo itself runs in-process
    # above (as a process it would import every backend again, seconds per session).
    done = subprocess.run([exe, "demo", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: evsoftmax demo"), done.stdout


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
