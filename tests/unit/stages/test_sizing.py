"""Shard sizing for heterogeneous workers."""

from __future__ import annotations

import pytest

from synthgen.config import RunConfig, config_from_dict
from synthgen.engines.presets import load_presets
from synthgen.stages.sizing import (
    expected_tokens_per_s,
    guided_shard_sizes,
    make_sized_shards,
    max_shard_size,
    plan_shard_sizes,
    relative_speeds,
    seconds_per_prompt,
    shard_size,
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


def _simulated_makespan(sizes: list[int], speeds: list[float]) -> float:
    """Makespan of shards handed out in order (largest first, as the flow submits them) to
    whichever worker is free first, each taking size / speed: the scheduler's behaviour
    with worker-saturation 1.0, simulated without a clock (the wall-clock comparison on a
    real cluster is `benchmarks/hetero_sched.py`)."""
    free = [0.0] * len(speeds)
    for size in sorted(sizes, reverse=True):
        w = min(range(len(speeds)), key=lambda i: (free[i], -speeds[i]))
        free[w] += size / speeds[w]
    return max(free)


def test_guided_sizes_beat_big_shards_in_a_simulated_cluster() -> None:
    """6 workers (1x/1.6x/3x): guided sizes finish near the ideal; one big shard per worker
    leaves the fast cards idle while the 1x card works."""
    speeds = [1.0, 1.6, 3.0] * 2
    n = 300
    ideal = n / sum(speeds)
    big = _simulated_makespan([n // 6] * 6, speeds) / ideal
    guided = _simulated_makespan(plan_shard_sizes(n, n // 6, 6, speeds=speeds), speeds) / ideal
    assert big > 1.6  # a 1x card holds as much as a 3x card: ~1.87x the ideal
    assert guided < 1.35 and guided < 0.75 * big


def test_relative_speeds_from_summary_rows() -> None:
    rows = [
        {"worker": "a", "tokens_per_s": 3000.0},
        {"worker": "b", "tokens_per_s": 1000.0},
        {"worker": "c", "tokens_per_s": 0.0},  # ran nothing: left out
    ]
    assert relative_speeds(rows) == [3.0, 1.0]
    assert relative_speeds([]) == []
    assert sum(plan_shard_sizes(100, 50, 2, speeds=relative_speeds(rows))) == 100


# ------------------------------------------------------------- shards sized by work (issue 16)
def _cfg(**over: object) -> RunConfig:
    data: dict = {
        "prompts": {"type": "template", "templates": ["t {topic}"], "topics": ["a"]},
        "sampling": {"max_new_tokens": 256},
    }
    for key, value in over.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config_from_dict(data)


def test_cpu_engines_keep_eight_prompt_shards_and_the_same_run_id() -> None:
    default = _cfg()  # the embedded default: transformers on this machine's CPU
    assert not default.shards_by_work()
    assert shard_size(default, 10_000) == 8
    fake = _cfg(model__engine="fake")  # no simulated speed: a CPU engine
    assert shard_size(fake, 10_000) == 8
    # `size: 8` written out was the default: the run is the same run as before
    assert _cfg(shards__size=8).run_id == default.run_id
    assert shard_size(_cfg(shards__size=3), 10_000) == 3


def test_gpu_speed_engines_get_minutes_of_work_per_shard() -> None:
    # the fake engine at 2400 tokens/s, 256-token completions: 0.107 s per prompt
    fast = _cfg(
        model__engine="fake",
        model__fake__seconds_per_token=1 / 2400,
        model__fake__tokens_per_completion=256,
    )
    assert fast.shards_by_work()
    assert seconds_per_prompt(fast) == pytest.approx(256 / 2400)
    assert shard_size(fast, 1_000_000) == 1687  # 180 s / (256 / 2400) s
    assert shard_size(fast, 2560) == 640  # at most a quarter of the prompts per worker
    two = _cfg(
        model__engine="fake", model__fake__seconds_per_token=1 / 2400, shards__expected_workers=2
    )
    assert shard_size(two, 2560) == 320
    pinned = _cfg(model__engine="fake", model__fake__seconds_per_token=1 / 2400, shards__size=64)
    assert not pinned.shards_by_work() and shard_size(pinned, 2560) == 64
    # sized by work is a different plan: a different run than the pinned default
    eight = _cfg(model__engine="fake", model__fake__seconds_per_token=1 / 2400, shards__size=8)
    assert fast.run_id != eight.run_id
    # vLLM on GPUs: the slowest bundled preset's planning figure, or the slowest hint
    vllm = _cfg(model__engine="vllm")
    slowest = min(p.tokens_per_s for p in load_presets() if p.device == "cuda")
    assert expected_tokens_per_s(vllm, vllm.model) == slowest
    assert shard_size(vllm, 1_000_000) == int(180 * slowest / 256)
    hinted = _cfg(model__engine="vllm", cost__throughput_hints={"rtx-4090": 2400, "l4": 900})
    assert shard_size(hinted, 1_000_000) == int(180 * 900 / 256)


def test_multistage_units_are_sized_by_their_longest_stage() -> None:
    cfg = config_from_dict(
        {
            "prompts": {"type": "template", "templates": ["t {topic}"], "topics": ["a"]},
            "model": {
                "engine": "fake",
                "fake": {"seconds_per_token": 0.01, "tokens_per_completion": 16},
            },
            "sampling": {"max_new_tokens": 16},
            "stages": [
                {"name": "q", "prompt": "{{ prompt }}"},
                {"name": "a", "prompt": "{{ q }}", "sampling": {"n": 2}},
                {"name": "j", "prompt": "{{ q }} {{ a }}"},  # 2 rows per prompt by now
            ],
        }
    )
    assert seconds_per_prompt(cfg) == pytest.approx(2 * 16 * 0.01)
    assert shard_size(cfg, 100_000) == int(180 / 0.32)
