"""The ``evsoftmax`` command line: ``demo`` and the argument parser."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest

from evsoftmax.cli import main


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evsoftmax", "demo", *args], capture_output=True, text=True
    )


def test_demo_prints_worked_example_and_exits_zero():
    done = _demo()
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    e = [math.exp(v) for v in (0.4, 1.4, -0.8)]
    softmax = " ".join(f"{v / sum(e):.4f}" for v in e)
    ev = f"{e[0] / (e[0] + e[1]):.4f} {e[1] / (e[0] + e[1]):.4f} 0.0000"
    numpy_line = next(line for line in out.splitlines() if line.startswith("numpy "))
    assert softmax in numpy_line and ev in numpy_line and "[1 1 0]" in numpy_line
    assert out.strip().splitlines()[-1].startswith("OK: ")


def test_demo_fails_when_backends_disagree():
    # A negative tolerance cannot be met, so every backend counts as disagreeing.
    done = _demo("--tolerance", "-1")
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].startswith("FAILED: ")


def test_console_script_is_installed():
    exe = shutil.which("evsoftmax")
    if exe is None:
        pytest.skip("package not installed with its console script (e.g. PYTHONPATH checkout)")
    done = subprocess.run([exe, "demo"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
