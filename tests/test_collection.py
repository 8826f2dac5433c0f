"""How tests/conftest.py shapes a collection: ``only_xp_backend`` deselection, slow tests first."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from . import conftest


class _Item:
    def __init__(self, name: str, *backends: str, slow: bool = False) -> None:
        self.nodeid = f"t.py::{name}"
        self.marks = [pytest.mark.only_xp_backend(*backends).mark] if backends else []
        self.marks += [pytest.mark.slow.mark] if slow else []
        self.stash = pytest.Stash()

    def get_closest_marker(self, name: str):
        return next((m for m in self.marks if m.name == name), None)


def _run(monkeypatch: pytest.MonkeyPatch, chosen: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The node ids kept and those reported deselected when ``chosen`` are the backends."""
    monkeypatch.setattr(conftest, "selected", lambda: chosen)
    reported: list[str] = []
    hook = SimpleNamespace(pytest_deselected=lambda items: reported.extend(i.nodeid for i in items))
    config = SimpleNamespace(option=SimpleNamespace(), hook=hook)
    items = [_Item("plain"), _Item("kernel", "numpy"), _Item("replay", "numpy", "cupy")]
    conftest.pytest_collection_modifyitems(config, items)  # type: ignore[arg-type]
    return [i.nodeid for i in items], reported


@pytest.mark.parametrize(
    ("chosen", "kept"),
    [
        (("numpy",), ["plain", "kernel", "replay"]),
        (("dask",), ["plain"]),
        (("cupy",), ["plain", "replay"]),
        (("torch", "numpy"), ["plain", "kernel", "replay"]),
    ],
)
def test_marked_tests_run_only_where_one_of_their_backends_is_selected(monkeypatch, chosen, kept):
    got, deselected = _run(monkeypatch, chosen)
    assert got == [f"t.py::{name}" for name in kept]
    # Reported to pytest as deselected (not skipped, not silently dropped).
    assert sorted(got + deselected) == sorted(f"t.py::{n}" for n in ("plain", "kernel", "replay"))


def test_slow_tests_start_first_and_the_rest_keep_their_order():
    names = ["a", "b", "c", "d", "e"]
    items = [_Item(n, slow=n in ("b", "e")) for n in names]
    conftest._slow_tests_first(items)  # type: ignore[arg-type]
    assert [i.nodeid.removeprefix("t.py::") for i in items] == ["b", "e", "a", "c", "d"]
