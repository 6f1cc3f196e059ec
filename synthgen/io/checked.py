"""The one way to read a committed shard: only after matching it to its commit marker.

A shard file is used (run-wide dedup, verification, publish) only when its commit marker
(`_commits/SHARD.json`) is readable and names the file's sha256 and row count, and the file's
bytes hash to that sha256, parse as Parquet and hold that many rows. Anything else (a file
substituted or truncated after its commit, garbage bytes, a garbage marker) *withdraws* the
commit: the marker is removed (logged with the file's path), so the shard counts as not
committed and is generated again, by the same run (the flow looks for withdrawn shards after
dedup and publish) or the next one.

`check_bytes` is the pure check (bytes + marker -> table or the reason); `read_checked`
reads through a `Store` and withdraws; callers that hold only an fsspec filesystem
(the dedup map tasks) use `check_bytes` and raise `ShardMismatch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.errors import StorageError
from synthgen.io.layout import DEFAULT_STAGE, RunLayout
from synthgen.io.store import Store

log = logging.getLogger(__name__)


class ShardWithdrawn(StorageError):
    """A committed shard failed its check against its commit marker; the marker was removed."""

    def __init__(self, shard_id: str, path: str, reason: str) -> None:
        super().__init__(
            f"shard {shard_id}: {path}: {reason}; its commit was withdrawn and the shard will "
            "be generated again"
        )
        self.shard_id = shard_id
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # raised in Dask tasks: must pickle
        return (type(self), (self.shard_id, self.path, self.reason))


class ShardMismatch(Exception):
    """A shard's bytes do not match the expectation it was read with (raised where the
    marker cannot be withdrawn; the caller runs `check_committed` to withdraw)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class Expect:
    """What a commit marker says of its file."""

    sha256: str
    rows: int


def marker_expect(marker: Any) -> Expect | None:
    """The (sha256, rows) a marker promises, or None for an unusable marker."""
    if not isinstance(marker, dict):
        return None
    sha, rows = marker.get("sha256"), marker.get("rows")
    if not isinstance(sha, str) or len(sha) != 64 or not isinstance(rows, int) or rows < 0:
        return None
    return Expect(sha, rows)


def parse_marker(raw: bytes) -> dict[str, Any] | None:
    """A commit marker's JSON, or None when it is not a usable marker."""
    try:
        marker = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if marker_expect(marker) is None or not isinstance(marker.get("result", {}), dict):
        return None
    return marker  # type: ignore[no-any-return]


def check_bytes(data: bytes, expect: Expect, columns: list[str] | None = None) -> pa.Table | str:
    """The shard's table (`columns` only) when `data` matches `expect`; else the reason."""
    sha = hashlib.sha256(data).hexdigest()
    if sha != expect.sha256:
        return (
            f"the file does not match its commit marker (sha256 {sha[:12]}, marker says "
            f"{expect.sha256[:12]}; {len(data)} bytes)"
        )
    try:
        table = pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"not readable as Parquet ({type(exc).__name__}: {exc})"
    if table.num_rows != expect.rows:
        return f"{table.num_rows} rows, its commit marker says {expect.rows}"
    return table


def withdraw(store: Store, run_id: str, shard_id: str, path: str, reason: str,
             stage: str = DEFAULT_STAGE) -> ShardWithdrawn:  # fmt: skip
    """Remove the shard's commit marker (it will be generated again); log and return the
    error that says so."""
    layout = RunLayout(store, run_id).stage(stage)
    store.rm(layout.commit(shard_id))
    err = ShardWithdrawn(shard_id, store.location(path), reason)
    log.warning("run %s: %s", run_id, err)
    return err


def read_marker(
    store: Store, run_id: str, shard_id: str, stage: str = DEFAULT_STAGE
) -> dict[str, Any] | None:
    """The shard's commit marker; None when the shard is not committed. An unreadable
    (garbage) marker is withdrawn and raises `ShardWithdrawn`."""
    path = RunLayout(store, run_id).stage(stage).commit(shard_id)
    raw = store.read_optional(path)
    if raw is None:
        return None
    marker = parse_marker(raw)
    if marker is None:
        raise withdraw(store, run_id, shard_id, path, "unreadable commit marker", stage)
    return marker


def shard_file(store: Store, run_id: str, shard_id: str, stage: str = DEFAULT_STAGE) -> str:
    return RunLayout(store, run_id).stage(stage).shard(shard_id)


@dataclass
class CheckedShard:
    marker: dict[str, Any]
    data: bytes
    table: pa.Table


def read_checked(
    store: Store,
    run_id: str,
    shard_id: str,
    stage: str = DEFAULT_STAGE,
    columns: list[str] | None = None,
) -> CheckedShard:
    """A committed shard, checked against its marker (sha256, rows, readable Parquet).

    Raises FileNotFoundError when the shard is not committed, `ShardWithdrawn` (after
    removing the marker) when the file or the marker fails the check."""
    marker = read_marker(store, run_id, shard_id, stage)
    if marker is None:
        raise FileNotFoundError(f"run {run_id}: shard {shard_id} is not committed")
    path = shard_file(store, run_id, shard_id, stage)  # the layout's key, not the marker's
    data = store.read_optional(path)
    if data is None:
        raise withdraw(store, run_id, shard_id, path, "the committed file is missing", stage)
    expect = marker_expect(marker)
    if expect is None:  # read_marker parsed it: unreachable, kept as a check
        raise withdraw(store, run_id, shard_id, path, "unreadable commit marker", stage)
    checked = check_bytes(data, expect, columns)
    if isinstance(checked, str):
        raise withdraw(store, run_id, shard_id, path, checked, stage)
    return CheckedShard(marker, data, checked)


def check_committed(
    store: Store, run_id: str, shard_id: str, stage: str = DEFAULT_STAGE
) -> str | None:
    """Check one committed shard; withdraw it if it fails. Returns the withdrawal message,
    or None (the shard is fine, or not committed)."""
    try:
        read_checked(store, run_id, shard_id, stage, columns=["prompt_id"])
    except ShardWithdrawn as exc:
        return str(exc)
    except FileNotFoundError:
        return None
    return None


__all__ = [
    "CheckedShard",
    "Expect",
    "ShardMismatch",
    "ShardWithdrawn",
    "check_bytes",
    "check_committed",
    "marker_expect",
    "parse_marker",
    "read_checked",
    "read_marker",
    "withdraw",
]
