"""The run-wide dedup stage as the flow calls it: committed shards -> drops file."""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.checkpoints import checkpoint
from synthgen.config import RunConfig
from synthgen.config.multistage import clean_stage
from synthgen.errors import StorageError
from synthgen.io.attempts import commit_markers
from synthgen.io.checked import ShardMismatch, check_committed, marker_expect
from synthgen.io.layout import DatasetLayout, RunLayout
from synthgen.io.store import Store
from synthgen.stages.dedup.cross import (
    DROPS_SCHEMA,
    DedupResult,
    ShardKeys,
    cross_shard_dedup,
)
from synthgen.stages.dedup.index import LEGACY_INDEX_DIR, index_paths

log = logging.getLogger(__name__)


def drops_path(store: Store, run_id: str) -> str:
    return RunLayout(store, run_id).dedup_drops


def dedup_run(
    client: Any,
    cfg: RunConfig,
    store: Store,
    shard_ids: list[str],
    markers: dict[str, dict[str, Any]] | None = None,
    keys: dict[str, ShardKeys] | None = None,
) -> DedupResult:
    """Cross-shard (and, if configured, against-published) dedup of the run's committed
    shards on `client`'s cluster; writes each shard's drops (`dedup/drops/SHARD.parquet`,
    for the shards that have any) and then the whole run's, `runs/RUN_ID/dedup/drops.parquet`
    (shard_id, prompt_id, reason), and returns the result (`digest`: the sha256 of the
    run-wide file).

    Every shard is read only as the bytes its commit marker names (sha256, rows). When one
    does not match, every shard is checked, the failing ones are withdrawn
    (`synthgen.io.checked`) and the result lists them in `withdrawn` (no drops file is
    written): the flow generates them again and runs this stage again.

    `markers`: the deduplicated stage's commit markers (at least sha256 and rows) as the
    caller has just read them; None: read here. `keys`: shard id -> its dedup keys, taken
    from the bytes its marker names as it committed (`ready_shard`): such a shard is read
    again only where it holds a candidate pair."""
    run_id = cfg.run_id or ""
    stage = clean_stage(cfg)  # the text that is deduplicated (default: the final stage's)
    if markers is None:
        markers = commit_markers(store, run_id, stage)  # withdraws garbage markers
    gone = sorted(sid for sid in shard_ids if sid not in markers)
    if gone:
        return _withdrawn(gone)
    run_layout = RunLayout(store, run_id)
    layout = run_layout.stage(stage)
    paths = {sid: layout.shard(sid) for sid in sorted(shard_ids)}
    expect = {}
    for sid, path in paths.items():
        want = marker_expect(markers[sid])
        if want is None:  # commit_markers only returns usable markers
            raise ValueError(f"run {run_id}: shard {sid}: commit marker without sha256/rows")
        expect[path] = want
    prior: list[str] = []
    if cfg.clean.near.against_published:
        prior = index_paths(store.fs, store.root, cfg.clean) + index_paths(
            store.fs, DatasetLayout(store).dir, cfg.clean, LEGACY_INDEX_DIR
        )
    try:
        result = cross_shard_dedup(
            client,
            list(paths.values()),
            cfg.clean,
            filesystem=store.fs,
            prior_index_paths=prior,
            run_id=run_id,
            expect=expect,
            keys={paths[sid]: k for sid, k in (keys or {}).items() if sid in paths},
        )
    except ShardMismatch as exc:
        log.warning("run %s: cross-shard dedup: %s; checking every shard", run_id, exc)
        withdrawn = [sid for sid in paths if check_committed(store, run_id, sid, stage)]
        if not withdrawn:  # it changed back, or was replaced again meanwhile: fail loudly
            raise StorageError(f"run {run_id}: cross-shard dedup: {exc}") from exc
        return _withdrawn(withdrawn)
    # the run-wide file marks the parts complete: drop it first, write it last
    store.rm(run_layout.dedup_drops)
    for name in store.ls(run_layout.dedup_drops_parts):
        store.rm(posixpath.join(run_layout.dedup_drops_parts, name))
    result.drops = result.drops.sort_by([("shard_id", "ascending"), ("prompt_id", "ascending")])
    for sid, part in _by_shard(result.drops).items():
        store.write_table(run_layout.dedup_drops_shard(sid), part)
    checkpoint("dedup.parts_written")
    _, result.digest = store.write_table(run_layout.dedup_drops, result.drops)
    return result


def _withdrawn(shard_ids: list[str]) -> DedupResult:
    return DedupResult(DROPS_SCHEMA.empty_table(), {}, 0, 0, 0, withdrawn=sorted(shard_ids))


def _by_shard(drops: pa.Table) -> dict[str, pa.Table]:
    """Slices of the (sorted) drops table, one per shard."""
    if drops.num_rows == 0:
        return {}
    shard_ids = drops.column("shard_id").to_pylist()
    out: dict[str, pa.Table] = {}
    start = 0
    for i in range(1, len(shard_ids) + 1):
        if i == len(shard_ids) or shard_ids[i] != shard_ids[start]:
            out[shard_ids[start]] = drops.slice(start, i - start)
            start = i
    return out


def read_drops(store: Store, run_id: str) -> dict[str, dict[str, str]]:
    """shard_id -> {prompt_id: reason} from a written drops file ({} when none)."""
    path = drops_path(store, run_id)
    if not store.exists(path):
        return {}
    return _mapping(store.read_table(path))


def read_shard_drops(store: Store, run_id: str, shard_id: str) -> dict[str, str]:
    """One shard's {prompt_id: reason} (its part of the drops, not the whole run's file);
    {} when the run-wide search found none in it or did not run."""
    layout = RunLayout(store, run_id)
    data = store.read_optional(layout.dedup_drops_shard(shard_id))
    if data is None:
        return {}
    return _mapping(pq.read_table(pa.BufferReader(data))).get(shard_id, {})


def _mapping(t: pa.Table) -> dict[str, dict[str, str]]:
    if t.schema != DROPS_SCHEMA:
        t = t.cast(DROPS_SCHEMA)
    out: dict[str, dict[str, str]] = {}
    for s, p, r in zip(*(t.column(c).to_pylist() for c in DROPS_SCHEMA.names), strict=True):
        out.setdefault(s, {})[p] = r
    return out


__all__ = ["dedup_run", "drops_path", "read_drops", "read_shard_drops"]
