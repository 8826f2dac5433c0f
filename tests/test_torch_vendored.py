"""A copy of evsoftmax vendored under another package works beside the installed one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

SRC = Path(__file__).resolve().parents[1] / "src" / "evsoftmax"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_vendored_copy_and_installed_package_side_by_side(tmp_path):
    vendor = tmp_path / "hostlib" / "_vendor"
    shutil.copytree(SRC, vendor / "evsoftmax", ignore=shutil.ignore_patterns("__pycache__"))
    for package in (tmp_path / "hostlib", vendor):
        (package / "__init__.py").write_text("")
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch
        import evsoftmax.torch as mine
        import hostlib._vendor.evsoftmax as theirs_top
        import hostlib._vendor.evsoftmax.torch as theirs
        assert mine.__file__ != theirs.__file__
        x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
        outs = []
        for module in (mine, theirs):
            y = module.ev_softmax(x, epsilon=0.1)
            (g,) = torch.autograd.grad(y[:, 0].sum(), x)
            v = torch.func.vmap(lambda r: module.log_ev_softmax(r, epsilon=0.1))(x.detach())
            # aot_eager: Dynamo's capture and AOTAutograd, where a second copy's ops and
            # guards could collide; Inductor's code generation is the same for both copies
            # (and costs a g++ compile per copy).
            compiled = torch.compile(
                lambda r: module.ev_softmax(r, epsilon=0.1), fullgraph=True, backend="aot_eager"
            )
            c = compiled(x)
            outs.append((y, g, v, c))
        outs.append((theirs_top.ev_softmax(x, epsilon=0.1),) + outs[1][1:])
        for a, b in zip(outs[0], outs[1]):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(outs[2][0], outs[0][0])
        print("ok")
        """
    )
    env_path = f"{tmp_path}:{SRC.parent}"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": env_path},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
