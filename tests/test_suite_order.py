"""tests/conftest.py orders test modules heaviest first (xdist hands out whole modules)."""

import pytest

from tests.conftest import FAST_TEST_S, SLOW_TEST_S, module_costs


class _Item:
    def __init__(self, nodeid: str, slow: bool = False) -> None:
        self.nodeid, self._slow = nodeid, slow

    def get_closest_marker(self, name: str):  # noqa: ANN201
        return object() if (name == "slow" and self._slow) else None


def test_module_costs_use_measured_seconds_else_the_slow_marker_estimate():
    items = [_Item("a.py::x"), _Item("a.py::y"), _Item("b.py::z", slow=True), _Item("c.py::w")]
    costs = module_costs(items, {"c.py": 240.0, "a.py": 0.1})
    assert costs["a.py"] == pytest.approx(2 * FAST_TEST_S)  # the estimate when it is larger
    assert costs["b.py"] == SLOW_TEST_S and costs["c.py"] == 240.0


def test_collection_puts_the_heaviest_module_first_and_keeps_each_module_in_order(request):
    nodeids = [it.nodeid for it in request.session.items]
    modules = list(dict.fromkeys(n.split("::")[0] for n in nodeids))
    # each module's tests are contiguous (xdist's loadscope needs them together), costliest module first
    assert [n.split("::")[0] for n in nodeids] == sorted((n.split("::")[0] for n in nodeids), key=modules.index)
    from tests.conftest import ORDERED_BY  # the costs of all collected tests (before -m deselects any)

    assert [ORDERED_BY[m] for m in modules] == sorted((ORDERED_BY[m] for m in modules), reverse=True)
