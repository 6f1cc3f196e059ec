"""Ledger storage: one small Parquet file per shard attempt and one per worker, per run.

Layout under a run root (OUTPUT/runs/RUN_ID; the names are `synthgen.io.layout`'s):
    ledger/SHARD_ID-attempt-N-ATTEMPTID.parquet   one row (LEDGER_SCHEMA)
    ledger/SHARD_ID-verify-aN-CHECKID.parquet     one verification check's row (status
                                                  "verification"; not matched by the
                                                  per-shard attempt glob)
    workers/WORKER_ID.parquet                     one row (WORKER_SCHEMA), overwritten
One file per writer means concurrent workers never write the same key. Every file is
written through the run's `Store` (fsynced temporary file renamed into place locally, one
PUT on object stores, the store's retry policy).

Lost attempts (a worker died mid-shard and never wrote its own row) get their row here too,
from the attempt start markers (`record_lost_attempts`).
"""

from __future__ import annotations

import io
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.config import OutputConfig
from synthgen.cost.prices import (
    LEDGER_SCHEMA,
    SPECULATION_PREFIX,
    WORKER_SCHEMA,
    cost_of,
    is_verification,
    ledger_table,
    usd_per_million,
    worker_table,
)
from synthgen.io.attempts import AttemptName, attempt_history
from synthgen.io.layout import DEFAULT_STAGE, RunLayout, StageLayout, unit_key
from synthgen.io.store import Store, read_many

__all__ = [
    "Ledger",
    "lost_rows",
    "open_run_uri",
    "record_lost_attempts",
    "run_ledger",
]


def _parquet(table: pa.Table) -> bytes:
    """A one-row ledger or worker file. Written twice per shard attempt, on the worker: no
    compression, dictionary or column statistics, which do nothing for one row (zstd made
    the file larger) and took ~60 % of the encoding time (1-row ledger table: 0.93 ms of
    CPU with zstd, 0.33 ms without the three; readers see the same table)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", use_dictionary=False, write_statistics=False)
    return buf.getvalue()


READ_THREADS = 8
# the whole-run ledger last read in this process: (path -> size, its rows)
_SEEN: dict[str, tuple[dict[str, int], pa.Table]] = {}
_SEEN_LOCK = threading.Lock()


class Ledger:
    """The cost ledger of one run (its default stage's attempt rows, its worker rows)."""

    def __init__(self, run: RunLayout, stage: StageLayout | None = None) -> None:
        self.run = run
        self.store = run.store
        self.stage = stage or run.stage()

    def write(self, row: dict[str, Any]) -> str:
        """Write one ledger row (an attempt's, or a verification check's); returns its path."""
        if is_verification(row):
            path = self.stage.ledger_verification(
                row["shard_id"], row["attempt"], row["attempt_id"]
            )
        else:
            path = self.stage.ledger_attempt(row["shard_id"], row["attempt"], row["attempt_id"])
        self.store.write_bytes(path, _parquet(ledger_table([row])))
        return path

    def write_worker(self, row: dict[str, Any]) -> str:
        """Write (overwrite) one worker's row; returns its path."""
        path = self.run.worker(row["worker_id"])
        self.store.write_bytes(path, _parquet(worker_table([row])))
        return path

    def _list(self, pattern: str) -> dict[str, int]:
        """path -> size of the files matching `pattern`."""
        fs = self.store.fs

        def _glob() -> dict[str, int]:
            try:
                found = fs.glob(pattern, detail=True)
            except FileNotFoundError:
                return {}
            return {p: int(info.get("size") or 0) for p, info in sorted(found.items())}

        return self.store.retry(_glob, f"listing {self.store.location(pattern)}")

    def _load(self, paths: list[str], schema: pa.Schema) -> pa.Table:
        def one(path: str) -> pa.Table:
            data = self.store.read_bytes(path)
            return pq.read_table(pa.BufferReader(data)).select(schema.names).cast(schema)

        if not paths:
            return schema.empty_table()
        # storage round trips (and Parquet decoding, off the GIL) overlap
        return pa.concat_tables(read_many(one, paths, READ_THREADS))

    def _read(self, pattern: str, schema: pa.Schema) -> pa.Table:
        return self._load(list(self._list(pattern)), schema)

    def rows(self, shard_id: str | None = None) -> pa.Table:
        """Every row of the run, verification checks included, sorted by start time; with
        `shard_id`, that shard's attempt rows only (never its verification rows).

        The whole run's rows are read once per process: a ledger file is written once (its
        name carries its attempt's id), so a later call reads only the files it has not
        seen (the flow's cost summary, then the report after the flow: each read every
        file, ~1.6 s per 1,000 shards on a local disk). A file gone or changed in size
        since makes it read them all again."""
        if shard_id is not None:
            table = self._read(self.stage.ledger_glob(shard_id), LEDGER_SCHEMA)
        else:
            table = self._all_rows()
        return table.sort_by([("started_at", "ascending"), ("shard_id", "ascending")])

    def _all_rows(self) -> pa.Table:
        pattern = self.stage.ledger_glob()
        key = self.store.location(pattern)
        found = self._list(pattern)
        with _SEEN_LOCK:
            seen = _SEEN.get(key)
        if seen is None or any(found.get(p) != n for p, n in seen[0].items()):
            seen = ({}, LEDGER_SCHEMA.empty_table())
        new = [p for p in found if p not in seen[0]]
        table = pa.concat_tables([seen[1], self._load(new, LEDGER_SCHEMA)])
        with _SEEN_LOCK:
            _SEEN.clear()  # one run's ledger at a time (a long-lived process runs many)
            _SEEN[key] = (dict(found), table)
        return table

    def workers(self) -> pa.Table:
        table = self._read(f"{self.run.workers_dir}/*.parquet", WORKER_SCHEMA)
        return table.sort_by([("joined_at", "ascending"), ("worker_id", "ascending")])


def run_ledger(output: OutputConfig, run_id: str) -> Ledger:
    """The ledger of OUTPUT/runs/RUN_ID."""
    return Ledger(RunLayout(Store(output), run_id))


def open_run_uri(run_uri: str, storage_options: dict[str, Any] | None = None) -> Ledger:
    """The ledger of the run at `run_uri` (OUTPUT/runs/RUN_ID, local or s3://), with the same
    S3 handling as the output store."""
    store = Store(OutputConfig(uri=run_uri, storage_options=storage_options or {}))
    return Ledger(RunLayout.at_root(store))


# --------------------------------------------------------------------------- lost attempts
def _ts(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _may_have_lost(store: Store, run_id: str, stage: str) -> bool:
    """Whether any attempt of `stage` can be lost, from two listings (no file read): a lost
    attempt belongs to a committed shard and is not the attempt that committed it, so a
    committed shard with a single attempt marker has none (that attempt wrote its marker
    before it committed), and an uncommitted shard's attempts are still running."""
    layout = RunLayout(store, run_id).stage(stage)
    per_shard: dict[str, int] = {}
    for name in store.ls(layout.attempts_dir):
        parsed = AttemptName.parse(name)
        if parsed is not None:
            per_shard[parsed.shard_id] = per_shard.get(parsed.shard_id, 0) + 1
    if all(n == 1 for n in per_shard.values()):
        return False
    committed = {n.removesuffix(".json") for n in store.ls(layout.commits_dir)}
    return any(n > 1 and sid in committed for sid, n in per_shard.items())


def lost_rows(store: Store, run_id: str, stage: str = DEFAULT_STAGE) -> list[dict[str, Any]]:
    """Ledger rows for the run's lost attempts that have none yet, and the "lost" row that
    replaces the "succeeded" row of an attempt whose result was not kept.

    An attempt is lost when it is neither committed nor still running (`io.attempts`). Its
    row starts when its marker says and ends (at most) when the next attempt of the same
    shard started, priced like that worker's other attempts (price 0, source "unknown", if
    the worker left nothing else). The time is an upper bound of what the dead worker spent.
    """
    if not _may_have_lost(store, run_id, stage):
        return []  # the usual end of a run: two listings, no file read
    history = attempt_history(store, run_id, stage)
    ledger = Ledger(RunLayout(store, run_id)).rows().to_pylist()  # every stage's rows
    seen = {(r["shard_id"], int(r["attempt"])) for r in ledger}
    # an attempt that wrote its "succeeded" row (before its commit marker) and then died, or
    # whose result another attempt's commit superseded: its output was not kept, so its row
    # becomes a "lost" one, with what it measured (the spending was real)
    unkept = {
        (r["shard_id"], int(r["attempt"])): r
        for r in ledger
        if r["status"] == "succeeded" and not is_verification(r)
    }
    by_worker: dict[str, dict[str, Any]] = {}
    for r in ledger:
        if r["status"] in ("succeeded", "failed"):
            by_worker.setdefault(r["worker"], r)
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for a in history:  # keyed like the ledger rows: by unit (the stage's shard)
        by_shard.setdefault(unit_key(stage, a["shard_id"]), []).append(a)
    rows = []
    for shard_id, attempts in by_shard.items():
        winner = next((a for a in attempts if a["outcome"] == "committed"), None)
        # a speculated shard (a backup copy ran beside the first attempt): its losing
        # attempt's cost is speculation's, and it ran at least until the winner committed
        speculated = any(a.get("speculative") for a in attempts)
        prefix = SPECULATION_PREFIX if speculated else ""
        for i, a in enumerate(attempts):
            key = (shard_id, int(a["attempt"]))
            if a["outcome"] == "lost" and key in unkept:
                rows.append(
                    {
                        **unkept[key],
                        "status": "lost",
                        "kept_records": None,
                        "kept_tokens": None,
                        "usd_per_1m_kept_tokens": None,
                        "error": f"{prefix}finished generating but its result was not kept "
                        "(its worker died before the commit, or another attempt committed "
                        "first)",
                    }
                )
                continue
            if a["outcome"] != "lost" or key in seen:
                continue
            nxt = attempts[i + 1] if i + 1 < len(attempts) else None
            started = _ts(a["started_at"])
            finished = _ts(nxt["started_at"]) if nxt else started
            if speculated and winner is not None and winner.get("finished_at"):
                finished = _ts(winner["finished_at"])
            finished = max(finished, started)
            ref = by_worker.get(a.get("worker", ""))
            wall = (finished - started).total_seconds()
            price = float(ref["price_per_hour"]) if ref else 0.0
            cost = cost_of(price, wall)
            rows.append(
                {
                    "run_id": run_id,
                    "shard_id": shard_id,
                    "attempt": int(a["attempt"]),
                    "attempt_id": f"lost-{uuid.uuid4().hex[:8]}",
                    "worker": a.get("worker", "?"),
                    "host": a.get("host", "?"),
                    "device": ref["device"] if ref else "unknown",
                    "device_type": ref["device_type"] if ref else "unknown",
                    "model": ref["model"] if ref else "",
                    "price_per_hour": price,
                    "price_source": ref["price_source"] if ref else "unknown",
                    "started_at": started,
                    "finished_at": finished,
                    "wall_seconds": wall,
                    "engine_seconds": 0.0,
                    "prompts": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "kept_records": None,
                    "kept_tokens": None,
                    "status": "lost",
                    "error": f"{prefix}lost to a speculative copy (still running when the run "
                    "ended); time = until the winning copy committed"
                    if speculated
                    else "worker lost mid-shard (no result); time = until the next "
                    "attempt started, an upper bound",
                    "cost_usd": cost,
                    "usd_per_1m_completion_tokens": usd_per_million(cost, 0),
                    "usd_per_1m_kept_tokens": None,
                }
            )
    return rows


def record_lost_attempts(
    store: Store, run_id: str, stages: tuple[str, ...] | list[str] = (DEFAULT_STAGE,)
) -> int:
    """Write a ledger row for every lost attempt of the run's `stages` that has none, and
    turn the "succeeded" row of an attempt whose result was not kept into a "lost" one (same
    file: the row keeps its attempt_id); returns how many."""
    rows = [r for stage in stages for r in lost_rows(store, run_id, stage)]
    ledger = Ledger(RunLayout(store, run_id))
    for row in rows:
        ledger.write(row)
    return len(rows)
