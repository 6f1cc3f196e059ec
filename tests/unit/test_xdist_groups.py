"""The suite's process groups hold (scripts/test.sh runs `-n 2 --dist loadgroup`).

pytest-xdist 3.8 sends a group to one process by appending `@GROUP` to each item's
`_nodeid` in the worker and reading `item.nodeid` back. pytest 9.2 derives `nodeid` from
another attribute, so the suffix was lost without a word: every group was split over both
processes (two vLLM engines loaded side by side, module-scoped clusters built twice;
pyproject pins pytest below 9.2 for it). The conftest must also add its marks before
xdist's worker reads them (`tryfirst`): without it, on pytest 9.1.1, a module's tests were
split too."""

from __future__ import annotations

import os

import pytest

from tests.conftest import VLLM_GROUP, xdist_group_of


def test_a_suffix_on_the_nodeid_is_what_xdist_reads_back(request: pytest.FixtureRequest) -> None:
    node = request.node
    before = node._nodeid
    try:
        node._nodeid = f"{before}@probe"
        assert node.nodeid == f"{before}@probe", (
            f"pytest {pytest.__version__} no longer reads nodeid from _nodeid: "
            "--dist loadgroup would not keep any group on one process"
        )
    finally:
        node._nodeid = before


def test_the_conftest_marks_vllm_tests_and_leaves_the_others_free(
    request: pytest.FixtureRequest,
) -> None:
    me = request.node
    assert xdist_group_of(me) is None  # no shared fixture: any process
    assert [m.args[0] for m in me.iter_markers("xdist_group")] == []
    vllm = [i for i in request.session.items if i.path.name == "test_vllm_cpu_engine.py"]
    for item in vllm:  # present when the whole suite (or that file) is collected
        assert [m.args[0] for m in item.iter_markers("xdist_group")] == [VLLM_GROUP]
    # and adds them before xdist's worker hook turns marks into nodeid suffixes
    impls = request.config.pluginmanager.hook.pytest_collection_modifyitems.get_hookimpls()
    ours = [h for h in impls if h.plugin_name.endswith(os.path.join("tests", "conftest.py"))]
    assert [h.tryfirst for h in ours] == [True], [h.plugin_name for h in impls]
