"""The run-wide dedup stage as the flow calls it: committed shards -> drops file."""

from __future__ import annotations

import logging
from typing import Any

from synthgen.config import RunConfig
from synthgen.errors import StorageError
from synthgen.io.attempts import commit_markers
from synthgen.io.checked import ShardMismatch, check_committed, marker_expect
from synthgen.io.layout import DatasetLayout, RunLayout
from synthgen.io.store import Store
from synthgen.stages.dedup.cross import DROPS_SCHEMA, DedupResult, cross_shard_dedup
from synthgen.stages.dedup.index import index_paths
from synthgen.stages.units import final_stage

log = logging.getLogger(__name__)


def drops_path(store: Store, run_id: str) -> str:
    return RunLayout(store, run_id).dedup_drops


def dedup_run(client: Any, cfg: RunConfig, store: Store, shard_ids: list[str]) -> DedupResult:
    """Cross-shard (and, if configured, against-published) dedup of the run's committed
    shards on `client`'s cluster; writes `runs/RUN_ID/dedup/drops.parquet` (shard_id,
    prompt_id, reason) and returns the result.

    Every shard is read only as the bytes its commit marker names (sha256, rows). When one
    does not match, every shard is checked, the failing ones are withdrawn
    (`synthgen.io.checked`) and the result lists them in `withdrawn` (no drops file is
    written): the flow generates them again and runs this stage again."""
    run_id = cfg.run_id or ""
    stage = final_stage(cfg)  # the text the run publishes
    markers = commit_markers(store, run_id, stage)  # withdraws garbage markers
    gone = sorted(sid for sid in shard_ids if sid not in markers)
    if gone:
        return _withdrawn(gone)
    layout = RunLayout(store, run_id).stage(stage)
    paths = {sid: layout.shard(sid) for sid in sorted(shard_ids)}
    expect = {}
    for sid, path in paths.items():
        want = marker_expect(markers[sid])
        if want is None:  # commit_markers only returns usable markers
            raise ValueError(f"run {run_id}: shard {sid}: commit marker without sha256/rows")
        expect[path] = want
    prior: list[str] = []
    if cfg.clean.near.against_published:
        prior = index_paths(store.fs, DatasetLayout(store).dir, cfg.clean)
    try:
        result = cross_shard_dedup(
            client,
            list(paths.values()),
            cfg.clean,
            filesystem=store.fs,
            prior_index_paths=prior,
            run_id=run_id,
            expect=expect,
        )
    except ShardMismatch as exc:
        log.warning("run %s: cross-shard dedup: %s; checking every shard", run_id, exc)
        withdrawn = [sid for sid in paths if check_committed(store, run_id, sid, stage)]
        if not withdrawn:  # it changed back, or was replaced again meanwhile: fail loudly
            raise StorageError(f"run {run_id}: cross-shard dedup: {exc}") from exc
        return _withdrawn(withdrawn)
    store.write_table(drops_path(store, run_id), result.drops)
    return result


def _withdrawn(shard_ids: list[str]) -> DedupResult:
    return DedupResult(DROPS_SCHEMA.empty_table(), {}, 0, 0, 0, withdrawn=sorted(shard_ids))


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
