"""A ``--dist loadgroup`` run that does not group fails its grouped tests (tests/conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from . import conftest


class _Item:
    def __init__(self, nodeid: str, group: str | None) -> None:
        self.nodeid = nodeid
        self.marks = [] if group is None else [pytest.mark.xdist_group(group).mark]
        self.stash = pytest.Stash()

    def get_closest_marker(self, name: str):
        return next((m for m in self.marks if m.name == name), None)

    def fails(self) -> bool:
        if not self.stash.get(conftest._NOT_GROUPED, False):
            conftest.pytest_runtest_setup(self)  # type: ignore[arg-type]
            return False
        with pytest.raises(pytest.fail.Exception, match="pytest-xdist#1386"):
            conftest.pytest_runtest_setup(self)  # type: ignore[arg-type]
        return True


def _config(loadgroup: bool | None) -> SimpleNamespace:
    option = SimpleNamespace() if loadgroup is None else SimpleNamespace(loadgroup=loadgroup)
    return SimpleNamespace(option=option)


def test_grouped_tests_without_the_group_suffix_fail():
    plain, grouped = _Item("t.py::test[a]", None), _Item("t.py::test[b]", "battery")
    conftest.pytest_collection_modifyitems(_config(True), [plain, grouped])  # type: ignore[arg-type]
    assert not plain.fails()
    assert grouped.fails()


@pytest.mark.parametrize("loadgroup", [True, False, None])
def test_grouped_or_unscheduled_runs_are_left_alone(loadgroup):
    # Suffixed: xdist grouped it. No loadgroup option: not a worker of a loadgroup run.
    items = [_Item("t.py::test[b]@battery", "battery")]
    if loadgroup is not True:
        items.append(_Item("t.py::test[c]", "battery"))
    conftest.pytest_collection_modifyitems(_config(loadgroup), items)  # type: ignore[arg-type]
    assert not any(item.fails() for item in items)
