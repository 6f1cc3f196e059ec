"""The run-wide dedup stage as the flow calls it: committed shards -> drops file."""

from __future__ import annotations

from typing import Any

from synthgen.config import RunConfig
from synthgen.io.layout import DatasetLayout, RunLayout
from synthgen.io.store import Store
from synthgen.stages.dedup.cross import DROPS_SCHEMA, DedupResult, cross_shard_dedup
from synthgen.stages.dedup.index import index_paths
from synthgen.stages.units import final_stage


def drops_path(store: Store, run_id: str) -> str:
    return RunLayout(store, run_id).dedup_drops


def dedup_run(client: Any, cfg: RunConfig, store: Store, shard_ids: list[str]) -> DedupResult:
    """Cross-shard (and, if configured, against-published) dedup of the run's committed
    shards on `client`'s cluster; writes `runs/RUN_ID/dedup/drops.parquet` (shard_id,
    prompt_id, reason) and returns the result."""
    run_id = cfg.run_id or ""
    stage = RunLayout(store, run_id).stage(final_stage(cfg))  # the text the run publishes
    paths = [stage.shard(sid) for sid in sorted(shard_ids)]
    prior: list[str] = []
    if cfg.clean.near.against_published:
        prior = index_paths(store.fs, DatasetLayout(store).dir, cfg.clean)
    result = cross_shard_dedup(
        client, paths, cfg.clean, filesystem=store.fs, prior_index_paths=prior, run_id=run_id
    )
    store.write_table(drops_path(store, run_id), result.drops)
    return result


def read_drops(store: Store, run_id: str) -> dict[str, dict[str, str]]:
    """shard_id -> {prompt_id: reason} from a written drops file ({} when none)."""
    path = drops_path(store, run_id)
    if not store.exists(path):
        return {}
    t = store.read_table(path)
    if t.schema != DROPS_SCHEMA:
        t = t.cast(DROPS_SCHEMA)
    out: dict[str, dict[str, str]] = {}
    for s, p, r in zip(*(t.column(c).to_pylist() for c in DROPS_SCHEMA.names), strict=True):
        out.setdefault(s, {})[p] = r
    return out


__all__ = ["dedup_run", "drops_path", "read_drops"]
