"""tests/conftest.py's CPU slices for pytest-xdist workers: disjoint, covering, balanced."""

from __future__ import annotations

from tests.conftest import xdist_cores


def test_two_workers_on_two_cpus_get_one_each() -> None:
    assert xdist_cores("gw0", 2, {0, 1}) == {0}
    assert xdist_cores("gw1", 2, {0, 1}) == {1}


def test_slices_are_disjoint_cover_every_cpu_and_differ_by_at_most_one() -> None:
    allowed = {0, 1, 2, 4, 5, 7, 8}  # an affinity mask with holes
    for count in range(2, len(allowed) + 1):
        slices = [xdist_cores(f"gw{i}", count, allowed) for i in range(count)]
        assert all(slices)
        assert set().union(*slices) == allowed
        assert sum(len(s) for s in slices) == len(allowed)  # disjoint
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_no_pinning_without_xdist_or_with_fewer_cpus_than_workers() -> None:
    assert xdist_cores("", 0, {0, 1}) is None  # not an xdist worker
    assert xdist_cores("gw0", 1, {0, 1}) is None  # -n 1: the one worker keeps every CPU
    assert xdist_cores("gw2", 3, {0, 1}) is None
    assert xdist_cores("master", 2, {0, 1}) is None
