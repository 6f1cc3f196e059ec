"""Shard sizing for heterogeneous workers."""

from __future__ import annotations

import pytest

from synthgen.scheduling import (
    guided_shard_sizes,
    make_sized_shards,
    max_shard_size,
    plan_shard_sizes,
    split_by_sizes,
)

FLEET = [1.0, 1.6, 3.0] * 4  # 12 workers: 3090 / 4090 / A100 class


def test_max_shard_size_bounds_the_tail() -> None:
    size = max_shard_size(2400, FLEET, 1.10)
    assert size == 10  # 0.1 * 2400 * 1 / 22.4 = 10.7
    # one shard on the slowest card takes at most 10% of the ideal makespan
    assert size / min(FLEET) <= 0.10 * 2400 / sum(FLEET)
    assert max_shard_size(10, FLEET) == 1  # never below min_size
    with pytest.raises(ValueError, match="target_ratio"):
        max_shard_size(100, FLEET, 1.0)
    with pytest.raises(ValueError, match="speeds"):
        max_shard_size(100, [1.0, 0.0])


def test_guided_sizes_decrease_and_cover_everything() -> None:
    sizes = guided_shard_sizes(2400, FLEET, min_size=5)
    assert sum(sizes) == 2400
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == 54  # ceil(2400 * 1 / (2 * 22.4))
    assert min(sizes) >= 1 and sizes[-2] == 5
    # the first shard on the slowest card is half of its fair share of the whole run
    assert sizes[0] / min(FLEET) <= 0.5 * 2400 / sum(FLEET) + 1
    assert guided_shard_sizes(0, FLEET) == []
    assert max(guided_shard_sizes(2400, FLEET, min_size=5, max_size=20)) == 20


def test_guided_sizes_deterministic() -> None:
    assert guided_shard_sizes(999, FLEET, min_size=3) == guided_shard_sizes(999, FLEET, min_size=3)


def test_plan_shard_sizes_known_and_unknown_speeds() -> None:
    known = plan_shard_sizes(2400, 200, 12, speeds=FLEET)
    assert sum(known) == 2400 and known[0] == 54 and known[-2] == 5
    blind = plan_shard_sizes(2400, 200, 12)  # assumes a 1x/3x fleet
    assert sum(blind) == 2400 and blind[0] == 50
    capped = plan_shard_sizes(2400, 8, 12)
    assert max(capped) == 8 and sum(capped) == 2400
    assert plan_shard_sizes(0, 8, 12) == []
    with pytest.raises(ValueError, match="max_size"):
        plan_shard_sizes(10, 0, 2)


def test_split_by_sizes() -> None:
    ids = [f"p{i}" for i in range(7)]
    assert split_by_sizes(ids, [3, 3, 1]) == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    with pytest.raises(ValueError, match="sum to 6 but there are 7"):
        split_by_sizes(ids, [3, 3])


def test_make_sized_shards_stable_ids() -> None:
    ids = [f"p{i}" for i in range(10)]
    sizes = plan_shard_sizes(10, 4, 2)
    shards = make_sized_shards(ids, sizes)
    assert [s.shard_id for s in shards] == [f"shard-{i:05d}" for i in range(len(sizes))]
    assert [len(s) for s in shards] == sizes
    assert [p for s in shards for p in s.prompt_ids] == ids  # plan order kept, nothing lost
    assert make_sized_shards(ids, sizes) == shards  # deterministic
