"""Ledger storage: one small Parquet file per shard attempt and one per worker, per run.

Layout under a run root (OUTPUT/runs/RUN_ID):
    ledger/SHARD_ID-attempt-N-ATTEMPTID.parquet   one row (LEDGER_SCHEMA)
    ledger/SHARD_ID-verify-aN-CHECKID.parquet     one verification check's row (status
                                                  "verification"; not matched by the
                                                  per-shard attempt glob)
    workers/WORKER_ID.parquet                     one row (WORKER_SCHEMA), overwritten
One file per writer means concurrent workers never write the same key.
"""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from synthgen.config import OutputConfig
from synthgen.cost.prices import LEDGER_SCHEMA, WORKER_SCHEMA, ledger_table, worker_table
from synthgen.io.store import Store, retrying

LEDGER_DIR = "ledger"
WORKERS_DIR = "workers"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_key(text: str) -> str:
    """A string usable as one path segment on every filesystem and object store."""
    return _SAFE.sub("_", text).strip("_") or "_"


def run_fs(
    run_uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """(filesystem, root path) of a run URI, with the same S3 handling as the output store."""
    store = Store(OutputConfig(uri=run_uri, storage_options=storage_options or {}))
    return store.fs, store.root


def ledger_path(run_root: str, shard_id: str, attempt: int, attempt_id: str) -> str:
    return f"{run_root}/{LEDGER_DIR}/{safe_key(shard_id)}-attempt-{attempt}-{safe_key(attempt_id)[:12]}.parquet"


def verify_ledger_path(run_root: str, shard_id: str, attempt: int, check_id: str) -> str:
    return f"{run_root}/{LEDGER_DIR}/{safe_key(shard_id)}-verify-a{attempt}-{safe_key(check_id)[:12]}.parquet"


def worker_path(run_root: str, worker_id: str) -> str:
    return f"{run_root}/{WORKERS_DIR}/{safe_key(worker_id)}.parquet"


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def write_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a small object whole, retrying transient errors: locally a temporary file
    renamed into place; on object stores one PUT (which appears whole or not at all)."""

    def _write() -> None:
        if not _is_local(fs):
            fs.pipe_file(path, data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)

    retrying(_write, f"writing {path}")


def write_one(fs: AbstractFileSystem, path: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(fs, path, buf.getvalue())


def write_ledger_row(fs: AbstractFileSystem, run_root: str, row: dict[str, Any]) -> str:
    path = ledger_path(run_root, row["shard_id"], row["attempt"], row["attempt_id"])
    write_one(fs, path, ledger_table([row]))
    return path


def write_verification_row(fs: AbstractFileSystem, run_root: str, row: dict[str, Any]) -> str:
    path = verify_ledger_path(run_root, row["shard_id"], row["attempt"], row["attempt_id"])
    write_one(fs, path, ledger_table([row]))
    return path


def write_worker_row(fs: AbstractFileSystem, run_root: str, row: dict[str, Any]) -> str:
    path = worker_path(run_root, row["worker_id"])
    write_one(fs, path, worker_table([row]))
    return path


def _read_dir(
    fs: AbstractFileSystem, directory: str, schema: pa.Schema, pattern: str = "*"
) -> pa.Table:
    try:
        paths = sorted(fs.glob(f"{directory}/{pattern}.parquet"))
    except FileNotFoundError:
        paths = []
    tables = []
    for path in paths:
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh).select(schema.names).cast(schema))
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def read_ledger(fs: AbstractFileSystem, run_root: str, shard_id: str | None = None) -> pa.Table:
    """Every row of the run, verification checks included, sorted by start time; with
    `shard_id`, that shard's attempt rows only (never its verification rows)."""
    pattern = f"{safe_key(shard_id)}-attempt-*" if shard_id else "*"
    table = _read_dir(fs, f"{run_root}/{LEDGER_DIR}", LEDGER_SCHEMA, pattern)
    return table.sort_by([("started_at", "ascending"), ("shard_id", "ascending")])


def read_workers(fs: AbstractFileSystem, run_root: str) -> pa.Table:
    table = _read_dir(fs, f"{run_root}/{WORKERS_DIR}", WORKER_SCHEMA)
    return table.sort_by([("joined_at", "ascending"), ("worker_id", "ascending")])


def open_run(output: OutputConfig, run_id: str) -> tuple[AbstractFileSystem, str]:
    """(filesystem, run root) of OUTPUT/runs/RUN_ID."""
    store = Store(output)
    return store.fs, store.run_path(run_id)
