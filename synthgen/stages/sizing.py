"""Shard sizing: by work (`shard_size`: a few minutes of expected engine time per shard
when the engine's speed is known), and for heterogeneous workers (pure functions the flow
can call).

Dask hands a queued task to whichever worker frees a thread first, so fast cards take more
shards; what is left to control is the tail: the run ends when the slowest card finishes
its last shard. Keeping one shard's time on the slowest card under `target - 1` of the
ideal makespan bounds the tail (benchmarks/hetero_sched.py measures it). Per-worker
tokens/s for the run summary is `synthgen.cost.summary.per_worker`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from synthgen.config import ModelConfig, RunConfig
from synthgen.config.run import CPU_SHARD_SIZE
from synthgen.engines.presets import load_presets
from synthgen.stages.sharding import Shard, shard_id


def max_shard_size(
    n_prompts: int,
    speeds: Sequence[float],
    target_ratio: float = 1.10,
    min_size: int = 1,
) -> int:
    """Largest uniform shard size whose tail keeps makespan/ideal under `target_ratio`.

    One shard on the slowest worker takes size/s_min, the ideal makespan is
    n_prompts/sum(speeds); the tail is at most one shard, so
    size <= (target - 1) * n_prompts * s_min / sum(speeds). Speeds are relative
    (e.g. [1, 1, 1.6, 3] for two 3090s, a 4090 and an A100); pass [1] * n for unknown.
    """
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    if not speeds or min(speeds) <= 0:
        raise ValueError(f"speeds must be a non-empty list of positive numbers, got {speeds!r}")
    if target_ratio <= 1.0:
        raise ValueError(f"target_ratio must be > 1.0, got {target_ratio}")
    size = math.floor((target_ratio - 1.0) * n_prompts * min(speeds) / sum(speeds))
    return max(min_size, min(size, n_prompts))


def guided_shard_sizes(
    n_prompts: int,
    speeds: Sequence[float],
    min_size: int = 1,
    factor: float = 2.0,
    max_size: int | None = None,
) -> list[int]:
    """Decreasing shard sizes (guided self-scheduling, weighted by speed).

    Each shard takes `remaining * s_min / (factor * sum(speeds))` prompts: at most
    1/factor of what the slowest worker would do of the remaining work, so a slow card
    never holds a shard that outlasts the rest of the run. Big shards first amortise the
    per-shard overhead; the last ones shrink to `min_size` (pick it with max_shard_size so
    the tail stays under the target). Deterministic in its arguments. Speeds unknown:
    pass an assumed spread, e.g. [1, 3] * (n_workers // 2).
    """
    if (
        n_prompts < 0
        or min_size < 1
        or factor <= 0
        or (max_size is not None and max_size < min_size)
    ):
        raise ValueError(
            f"guided_shard_sizes: bad arguments n_prompts={n_prompts} min_size={min_size} "
            f"max_size={max_size} factor={factor}"
        )
    if not speeds or min(speeds) <= 0:
        raise ValueError(f"speeds must be a non-empty list of positive numbers, got {speeds!r}")
    share = min(speeds) / (factor * sum(speeds))
    sizes: list[int] = []
    remaining = n_prompts
    while remaining > 0:
        size = max(math.ceil(remaining * share), min_size)
        if max_size is not None:
            size = min(size, max_size)
        size = min(size, remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def split_by_sizes(items: Sequence[str], sizes: Sequence[int]) -> list[list[str]]:
    """Cut `items` (e.g. prompt ids in plan order) into consecutive chunks of `sizes`."""
    if sum(sizes) != len(items):
        raise ValueError(f"sizes sum to {sum(sizes)} but there are {len(items)} items")
    out, start = [], 0
    for s in sizes:
        out.append(list(items[start : start + s]))
        start += s
    return out


ASSUMED_SPREAD = (1.0, 3.0)  # speeds unknown: plan for a 3x spread (RTX 3090 vs A100)


def plan_shard_sizes(
    n_prompts: int,
    max_size: int,
    n_workers: int,
    speeds: Sequence[float] | None = None,
    target_ratio: float = 1.10,
) -> list[int]:
    """Shard sizes for a run: guided (decreasing) sizes capped at `max_size`
    (`shards.size`), ending at half the largest tail-safe uniform size.

    `speeds` are the workers' relative speeds when known (e.g. from an earlier run's
    per-worker tokens/s); unknown, a 1x/3x fleet of `n_workers` is assumed. Submit the
    shards in this order (largest first, e.g. with a decreasing dask priority) to a
    scheduler with `distributed.scheduler.worker-saturation: 1.0`.
    """
    if max_size < 1 or n_workers < 1:
        raise ValueError(
            f"plan_shard_sizes: max_size={max_size} n_workers={n_workers} must be >= 1"
        )
    if n_prompts == 0:
        return []
    fleet = list(speeds) if speeds else [ASSUMED_SPREAD[i % 2] for i in range(max(2, n_workers))]
    tail_safe = max_shard_size(n_prompts, fleet, target_ratio)
    min_size = max(1, min(max_size, tail_safe // 2))
    return guided_shard_sizes(n_prompts, fleet, min_size=min_size, max_size=max_size)


def make_sized_shards(prompt_ids: Sequence[str], sizes: Sequence[int]) -> list[Shard]:
    """Shards with the spine's stable ids (`shard-00000`, …) cut to `sizes`, in plan order:
    a drop-in for `synthgen.stages.sharding.make_shards` when planning with plan_shard_sizes."""
    return [
        Shard(shard_id(i), i, tuple(chunk))
        for i, chunk in enumerate(split_by_sizes(list(prompt_ids), sizes))
    ]


def relative_speeds(workers: Sequence[dict]) -> list[float]:
    """Relative speeds (slowest = 1.0) from a run summary's per-worker rows
    (`synthgen.cost.summary.per_worker`: `tokens_per_s`), for plan_shard_sizes on the next run.
    Workers with no measured throughput are left out."""
    rates = [float(w["tokens_per_s"]) for w in workers if float(w.get("tokens_per_s", 0)) > 0]
    if not rates:
        return []
    slowest = min(rates)
    return [r / slowest for r in rates]


# ----------------------------------------------------------------- shards sized by work
def expected_tokens_per_s(cfg: RunConfig, model: ModelConfig) -> float | None:
    """Completion tokens/s one worker is expected to give with `model`, known before it runs:
    the fake engine's simulated speed; for GPU engines the slowest `cost.throughput_hints`,
    else the slowest bundled GPU preset's planning figure (`tokens_per_s`); None elsewhere
    (CPU engines: their speed varies too much with the machine to plan on)."""
    if model.engine == "fake":
        spt = model.fake.seconds_per_token
        return 1.0 / spt if spt > 0 else None
    if not model.needs_gpu:
        return None
    hints = [v for v in cfg.cost.throughput_hints.values() if v > 0]
    if hints:
        return min(hints)
    figures = [
        p.tokens_per_s
        for p in load_presets(model.vllm.presets_dir)
        if p.device == "cuda" and p.tokens_per_s
    ]
    return min(figures) if figures else None


def _completion_tokens(model: ModelConfig, max_new_tokens: int) -> int:
    if model.engine == "fake":
        return min(model.fake.tokens_per_completion, max_new_tokens)
    return max_new_tokens  # the most a completion may take: shards err on the short side


def seconds_per_prompt(cfg: RunConfig) -> float | None:
    """Expected engine seconds one prompt costs in the run's longest unit (a unit is one
    stage of a shard; a stage generates for every sample of the stage before it), or None
    when no stage's engine speed is known."""
    steps: list[tuple[ModelConfig, int, int]] = []  # (model, max_new_tokens, samples)
    if not cfg.stages:
        steps.append((cfg.model, cfg.sampling.max_new_tokens, cfg.sampling.n))
    for stage in cfg.stages:
        model = stage.model or cfg.model
        sp = stage.sampling
        steps.append(
            (
                model,
                sp.max_new_tokens or cfg.sampling.max_new_tokens,
                sp.n or cfg.sampling.n,
            )
        )
    longest = None
    rows = 1  # input rows per prompt of the current stage
    for model, max_new, n in steps:
        tps = expected_tokens_per_s(cfg, model)
        if tps:
            seconds = rows * n * _completion_tokens(model, max_new) / tps
            longest = seconds if longest is None else max(longest, seconds)
        rows *= n
    return longest


def shard_size(cfg: RunConfig, n_prompts: int) -> int:
    """Prompts per shard (the largest, if guided): `shards.size` when set; sized by work
    when the engine's speed is known (`RunConfig.shards_by_work`): `shards.target_seconds`
    of expected engine time, at most a quarter of the prompts per expected worker (so every
    worker gets shards); `CPU_SHARD_SIZE` otherwise."""
    if cfg.shards.size is not None:
        return cfg.shards.size
    spp = seconds_per_prompt(cfg) if cfg.shards_by_work() else None
    if not spp:
        return CPU_SHARD_SIZE
    by_work = math.floor(cfg.shards.target_seconds / spp)
    cap = math.ceil(n_prompts / (4 * cfg.shards.expected_workers))
    return max(1, min(by_work, cap))
