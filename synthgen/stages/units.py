"""The units of work of a run: one shard of one generation stage.

A run without `stages` has one generation stage, `generate` (the default stage: its files
live at the run root and a unit is named by its shard id alone, as in every run written so
far). A multi-stage run has one generation stage per `stages` entry; shard i of stage k reads
the committed shard i of stage k-1 (1:1 with the plan's shards), so a unit is named
`STAGE:SHARD`. The name is what the generate loop schedules, what a shard result and its
ledger rows carry as `shard_id`, and what the budget, timeout and verification gates key on.
"""

from __future__ import annotations

from typing import Any

from synthgen.config import RunConfig
from synthgen.config.stages import StageConfig
from synthgen.io.attempts import commit_markers
from synthgen.io.layout import DEFAULT_STAGE, split_key, unit_key
from synthgen.io.store import Store


def stage_names(cfg: RunConfig) -> list[str]:
    """The run's generation stages, in order."""
    return [s.name for s in cfg.stages] or [DEFAULT_STAGE]


def final_stage(cfg: RunConfig) -> str:
    return stage_names(cfg)[-1]


def stage_config(cfg: RunConfig, name: str) -> StageConfig | None:
    """The `stages` entry called `name` (None for the default stage of a one-step run)."""
    for s in cfg.stages:
        if s.name == name:
            return s
    if name == DEFAULT_STAGE and not cfg.stages:
        return None
    raise KeyError(f"run {cfg.run_id}: no stage {name!r} (stages: {stage_names(cfg)})")


def upstream(cfg: RunConfig, name: str) -> str | None:
    """The stage whose committed shards `name` reads (None: it reads the plan's prompts)."""
    names = stage_names(cfg)
    i = names.index(name)
    return names[i - 1] if i > 0 else None


def downstream(cfg: RunConfig, name: str) -> str | None:
    names = stage_names(cfg)
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None


def stage_of(key: str) -> str:
    return split_key(key)[0]


def committed_units(store: Store, cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """unit name -> commit marker, over every generation stage of the run."""
    out: dict[str, dict[str, Any]] = {}
    for name in stage_names(cfg):
        for shard, marker in commit_markers(store, cfg.run_id or "", name).items():
            out[unit_key(name, shard)] = marker
    return out


def pending_units(cfg: RunConfig, shard_ids: list[str], committed: set[str]) -> list[str]:
    """The units to run now, one per unfinished shard: its first uncommitted stage (whose
    upstream, if any, is committed — stages of a shard run in order)."""
    todo = []
    for shard in shard_ids:
        for name in stage_names(cfg):
            key = unit_key(name, shard)
            if key not in committed:
                todo.append(key)
                break
    return todo


def next_unit(cfg: RunConfig, key: str) -> str | None:
    """The unit that reads `key`'s output (None after the final stage)."""
    stage, shard = split_key(key)
    nxt = downstream(cfg, stage)
    return None if nxt is None else unit_key(nxt, shard)


def all_units(cfg: RunConfig, shard_ids: list[str]) -> list[str]:
    """Every unit of the run, least urgent first: by stage, then plan order reversed (the
    loop runs a shard's later stage before new shards, and early shards first)."""
    return [unit_key(n, s) for n in stage_names(cfg) for s in reversed(shard_ids)]


__all__ = [
    "all_units",
    "committed_units",
    "downstream",
    "final_stage",
    "next_unit",
    "pending_units",
    "split_key",
    "stage_config",
    "stage_names",
    "stage_of",
    "unit_key",
    "upstream",
]
