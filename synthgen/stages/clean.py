"""The per-shard clean step, run on the worker right after generation.

Fills `text_hash` (xxhash64 of the normalised completion), `minhash` (uint32 signature)
and `drop_reason` (quality filters, then exact/near duplicates inside the shard; null =
kept) and returns the count of each drop reason. Dropped rows stay in the raw shard.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from synthgen.config import CleanConfig
from synthgen.io.schema import RECORD_SCHEMA
from synthgen.stages.base import Stage
from synthgen.stages.dedup.local import duplicate_reasons, hasher_for
from synthgen.stages.dedup.minhash import MinHasher
from synthgen.stages.dedup.normalize import text_hash
from synthgen.stages.quality import Doc, build_filters

REJECTED = "rejected_prompt"


def minhasher(cfg: CleanConfig) -> MinHasher:
    return hasher_for(cfg.near)


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    idx = table.schema.get_field_index(name)
    field = RECORD_SCHEMA.field(name)
    if idx < 0:
        return table.append_column(field, values)
    return table.set_column(idx, field, values)


def clean_shard(table: pa.Table, cfg: CleanConfig) -> tuple[pa.Table, dict[str, int]]:
    """The table with text_hash, minhash and drop_reason filled, and {reason: count}."""
    for col in ("prompt_id", "completion", "finish_reason"):
        if col not in table.column_names:
            shard = _first(table, "shard_id")
            raise ValueError(f"clean_shard({shard}): the table has no {col!r} column")
    texts = [t or "" for t in table.column("completion").to_pylist()]
    finish = table.column("finish_reason").to_pylist()
    prompt_ids = table.column("prompt_id").to_pylist()
    n = len(texts)

    hashes = np.fromiter((text_hash(t) for t in texts), dtype=np.uint64, count=n)
    # a reason an earlier stage set (rejected_prompt, contaminated, schema_invalid, keep_if)
    # stays
    earlier = (
        table.column("drop_reason").to_pylist()
        if "drop_reason" in table.column_names
        else [None] * n
    )
    reasons: list[str | None] = [
        e if e is not None else (REJECTED if f == "rejected" else None)
        for e, f in zip(earlier, finish, strict=True)
    ]

    sigs: np.ndarray | None = None
    shingles = None
    if cfg.enabled and cfg.near.enabled:
        hasher = minhasher(cfg)
        shingles = hasher.shingle_hashes(texts)
        sigs = hasher.signatures_from_hashes(*shingles)

    if cfg.enabled:
        filters = build_filters(cfg.filters)
        for i in range(n):
            if reasons[i] is None:
                reasons[i] = filters.reason(Doc(texts[i], finish[i] or "stop"))
        eligible = np.array([r is None for r in reasons], dtype=bool)
        dups = duplicate_reasons(
            prompt_ids,
            hashes,
            sigs,
            eligible,
            cfg.near if cfg.near.enabled else None,
            exact=cfg.exact.enabled,
            shingles=shingles,
        )
        for i, why in dups.items():
            reasons[i] = why

    table = _set(table, "text_hash", pa.array(hashes, type=pa.uint64()))
    if sigs is None:
        mh = pa.nulls(n, type=pa.list_(pa.uint32()))
    else:
        flat = pa.array(sigs.ravel(), type=pa.uint32())
        offsets = pa.array(np.arange(0, n + 1, dtype=np.int32) * sigs.shape[1], type=pa.int32())
        mh = pa.ListArray.from_arrays(offsets, flat)
    table = _set(table, "minhash", mh)
    table = _set(table, "drop_reason", pa.array(reasons, type=pa.string()))
    counts = Counter(r for r in reasons if r is not None)
    return table, dict(sorted(counts.items()))


class CleanStage(Stage):
    """Per shard, on the worker right after generation: hashes, MinHash signatures, quality
    filters and in-shard duplicates, all as flagged rows (`drop_reason`)."""

    name = "clean"

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg

    def process(self, rows: pa.Table) -> pa.Table:
        return clean_shard(rows, self.cfg)[0]


def _first(table: pa.Table, col: str) -> str:
    if col in table.column_names and table.num_rows:
        return str(table.column(col)[0].as_py())
    return "<shard>"
