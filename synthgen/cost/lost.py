"""Ledger rows for lost attempts: a worker that died mid-shard never wrote its own row.

Every attempt leaves a start marker (`runs/RUN_ID/attempts/`). After the generate phase,
an attempt that is neither committed nor still running and has no ledger row gets one with
`status="lost"`: started when its marker says, ended (at most) when the next attempt of the
same shard started, priced like that worker's other attempts (or the shard's committed
attempt's device when the worker left nothing else; price 0, source "unknown", if neither).
The time is an upper bound of what the dead worker spent on the shard.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from synthgen.cost.ledger import ledger_path, read_ledger, write_one
from synthgen.cost.prices import ledger_table, usd_per_million
from synthgen.io.attempts import attempt_history
from synthgen.io.store import Store


def _ts(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def lost_rows(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Ledger rows for the run's lost attempts that have none yet."""
    history = attempt_history(store, run_id)
    run_root = store.run_path(run_id)
    ledger = read_ledger(store.fs, run_root).to_pylist()
    seen = {(r["shard_id"], int(r["attempt"])) for r in ledger}
    by_worker: dict[str, dict[str, Any]] = {}
    for r in ledger:
        if r["status"] in ("succeeded", "failed"):
            by_worker.setdefault(r["worker"], r)
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for a in history:
        by_shard.setdefault(a["shard_id"], []).append(a)
    rows = []
    for shard_id, attempts in by_shard.items():
        for i, a in enumerate(attempts):
            if a["outcome"] != "lost" or (shard_id, int(a["attempt"])) in seen:
                continue
            nxt = attempts[i + 1] if i + 1 < len(attempts) else None
            started = _ts(a["started_at"])
            finished = _ts(nxt["started_at"]) if nxt else started
            finished = max(finished, started)
            ref = by_worker.get(a.get("worker", ""))
            wall = (finished - started).total_seconds()
            price = float(ref["price_per_hour"]) if ref else 0.0
            cost = price * wall / 3600.0
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
                    "error": "worker lost mid-shard (no result); time = until the next "
                    "attempt started, an upper bound",
                    "cost_usd": cost,
                    "usd_per_1m_completion_tokens": usd_per_million(cost, 0),
                    "usd_per_1m_kept_tokens": None,
                }
            )
    return rows


def record_lost_attempts(store: Store, run_id: str) -> int:
    """Write a ledger row for every lost attempt that has none; returns how many."""
    rows = lost_rows(store, run_id)
    run_root = store.run_path(run_id)
    for row in rows:
        path = ledger_path(run_root, row["shard_id"], row["attempt"], row["attempt_id"])
        write_one(store.fs, path, ledger_table([row]))
    return len(rows)
