"""The dedup index of what an output published (`OUTPUT/dedup_index/`, beside `dataset/`, so
that no data glob of the dataset reaches it; outputs published before kept it in
`dataset/_dedup_index/`, which is still read).

One Parquet part per published shard (`RUN_ID--SHARD_ID.parquet`) holds, for each published record, its prompt_id, shard_id,
run_id, text hash and MinHash signature; `_meta.json` records the MinHash parameters, so
a later run with different parameters is told so instead of silently missing duplicates.
A later run with `clean.near.against_published` reads these parts as prior sources of
the cross-shard stage.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthgen.config import CleanConfig
from synthgen.errors import ConfigError
from synthgen.stages.dedup.cross import INDEX_COLUMNS

INDEX_DIR = "dedup_index"
LEGACY_INDEX_DIR = "_dedup_index"  # inside dataset/, before the dataset became a HF repo
META_FILE = "_meta.json"
INDEX_VERSION = 2  # 2: stratified signatures as A*i + (B + r)


def index_meta(cfg: CleanConfig) -> dict[str, Any]:
    n = cfg.near
    return {
        "version": INDEX_VERSION,
        "num_perm": n.num_perm,
        "shingle": n.shingle,
        "shingle_size": n.shingle_size,
        "seed": n.seed,
        "stratified": n.stratified,
        "normalize": "nfkc-casefold-ws",
    }


def index_rows(table: pa.Table) -> pa.Table:
    """The kept rows of a cleaned shard table, as index rows."""
    if "drop_reason" in table.column_names:
        table = table.filter(pc.is_null(table.column("drop_reason")))
    return table.select(INDEX_COLUMNS)


def ensure_meta(fs: Any, parent: str, cfg: CleanConfig) -> None:
    """Write the index's meta file under `parent/dedup_index/`, or check the one there was
    built with the same MinHash parameters (ConfigError naming both when not)."""
    root = f"{parent.rstrip('/')}/{INDEX_DIR}"
    meta_path = f"{root}/{META_FILE}"
    meta = index_meta(cfg)
    fs.makedirs(root, exist_ok=True)
    if fs.exists(meta_path):
        _check_meta(fs, meta_path, meta)
    else:  # whole or absent: a publish batch beside this one may read it meanwhile
        _put(fs, root, META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())


def _put(fs: Any, root: str, name: str, data: bytes) -> str:
    """Write `root/name` whole: one PUT on object stores (atomic there), a temporary file
    renamed into place on a local disk."""
    path = f"{root}/{name}"
    if "file" in fs.protocol or "local" in fs.protocol:
        tmp = f"{root}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # writers beside it use their own
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)
    return path


def write_index(
    fs: Any, parent: str, part_name: str, rows: pa.Table, cfg: CleanConfig, meta: bool = True
) -> str:
    """Write one index part under `parent/dedup_index/` (and, unless `meta` is False because
    the caller did it once for many parts, `ensure_meta` first); returns the part's path.
    On object stores the part is one PUT (atomic there), on a local disk a temporary file
    renamed into place."""
    if meta:
        ensure_meta(fs, parent, cfg)
    buf = pa.BufferOutputStream()
    pq.write_table(rows, buf, compression="zstd")
    root = f"{parent.rstrip('/')}/{INDEX_DIR}"
    return _put(fs, root, f"{part_name}.parquet", buf.getvalue().to_pybytes())


def index_paths(fs: Any, parent: str, cfg: CleanConfig, name: str = INDEX_DIR) -> list[str]:
    """Paths (inside `fs`) of the index parts under `parent/name/` (empty when none), after
    a check that they were built with the same MinHash parameters."""
    root = f"{parent.rstrip('/')}/{name}"
    meta_path = f"{root}/{META_FILE}"
    if not fs.exists(meta_path):
        return []
    _check_meta(fs, meta_path, index_meta(cfg))
    fs.invalidate_cache(root)
    return sorted(p for p in fs.glob(f"{root}/*.parquet"))


def _check_meta(fs: Any, meta_path: str, want: dict[str, Any]) -> None:
    with fs.open(meta_path, "r") as f:
        have = json.load(f)
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: published {a!r} vs config {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"{meta_path}: the published dedup index was built with other MinHash "
            f"parameters ({detail}); set clean.near.* to match or turn off "
            "clean.near.against_published"
        )
