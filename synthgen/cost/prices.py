"""Prices and the cost ledger: which price a worker pays, and what each shard attempt cost.

Pure functions over explicit arguments: the pipeline measures, this module does the
arithmetic. `cost_usd = price_per_hour * wall_seconds / 3600`, kept at full float
precision (rounding happens only when a report prints it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import pyarrow as pa

from synthgen.config import CostConfig
from synthgen.engines.devices import DeviceInfo
from synthgen.errors import ConfigError

CPU_CORE_KEY = "cpu-core"
# "lease": the operator's cost.worker_prices named this worker; "worker" only in ledgers
# written before prices stopped being read on the host (its own SYNTHGEN_PRICE_PER_HOUR)
PriceSource = Literal["table", "lease", "worker", "unknown"]
AttemptStatus = Literal["succeeded", "failed"]
# the `error` of an attempt that lost to (or was) a speculative copy of its shard: the cost
# of straggler speculation (`cluster.speculation`), told apart from other failures
SPECULATION_PREFIX = "speculation: "
# A verification check's own engine time (issue 8): money spent, but not a shard attempt.
VERIFICATION_STATUS = "verification"

_TS = pa.timestamp("us", tz="UTC")

# One row per shard attempt (failed attempts cost money too).
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("attempt_id", pa.string(), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
        pa.field("host", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("device_type", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("price_per_hour", pa.float64(), nullable=False),
        pa.field("price_source", pa.string(), nullable=False),
        pa.field("started_at", _TS, nullable=False),
        pa.field("finished_at", _TS, nullable=False),
        pa.field("wall_seconds", pa.float64(), nullable=False),
        pa.field("engine_seconds", pa.float64(), nullable=False),
        pa.field("prompts", pa.int64(), nullable=False),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("completion_tokens", pa.int64(), nullable=False),
        pa.field("kept_records", pa.int64()),
        pa.field("kept_tokens", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("cost_usd", pa.float64(), nullable=False),
        pa.field("usd_per_1m_completion_tokens", pa.float64()),
        pa.field("usd_per_1m_kept_tokens", pa.float64()),
    ]
)

# One row per worker process per run: what the rented machine bills, busy or not.
WORKER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("worker_id", pa.string(), nullable=False),
        pa.field("worker", pa.string(), nullable=False),
        pa.field("host", pa.string(), nullable=False),
        pa.field("pid", pa.int64(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("device_type", pa.string(), nullable=False),
        pa.field("price_per_hour", pa.float64(), nullable=False),
        pa.field("price_source", pa.string(), nullable=False),
        pa.field("joined_at", _TS, nullable=False),
        pa.field("held_from", _TS, nullable=False),
        pa.field("held_until", _TS, nullable=False),
        pa.field("held_seconds", pa.float64(), nullable=False),
        pa.field("load_seconds", pa.float64(), nullable=False),
        pa.field("busy_seconds", pa.float64(), nullable=False),
        pa.field("idle_seconds", pa.float64(), nullable=False),
        pa.field("shards", pa.int64(), nullable=False),
        pa.field("failed_attempts", pa.int64(), nullable=False),
        pa.field("cost_usd", pa.float64(), nullable=False),
        pa.field("load_cost_usd", pa.float64(), nullable=False),
        pa.field("idle_cost_usd", pa.float64(), nullable=False),
        pa.field("final", pa.bool_(), nullable=False),
    ]
)


# --------------------------------------------------------------------------- prices
@dataclass(frozen=True)
class Price:
    """The hourly price a worker pays and where it came from."""

    per_hour: float
    device_type: str  # the matched price key, else the device's label
    source: PriceSource


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _contains(words: list[str], key: list[str]) -> bool:
    n = len(key)
    return n > 0 and any(words[i : i + n] == key for i in range(len(words) - n + 1))


def match_device_type(name: str, keys: Iterable[str]) -> str | None:
    """The price key whose words appear, in order and whole, in `name`; the longest wins.

    "NVIDIA GeForce RTX 4090" -> "RTX 4090"; "NVIDIA A100-SXM4-80GB" -> "A100";
    "NVIDIA L40S" does not match "L4".
    """
    words = _words(name)
    best: str | None = None
    best_rank = (0, 0)
    for key in keys:
        if key == CPU_CORE_KEY:
            continue
        kw = _words(key)
        rank = (len(kw), len("".join(kw)))
        if _contains(words, kw) and rank > best_rank:
            best, best_rank = key, rank
    return best


_CPU_LABEL = re.compile(r"^cpu: (?P<name>.*) \((?P<cores>\d+) cores?\)$")


def parse_device_label(label: str) -> DeviceInfo:
    """Invert `DeviceInfo.label`: "cpu: MODEL (N cores)" or a GPU name."""
    m = _CPU_LABEL.match(label.strip())
    if m:
        return DeviceInfo(kind="cpu", name=m["name"], count=int(m["cores"]))
    return DeviceInfo(kind="cuda", name=label.strip())


def price_for_device(
    device: DeviceInfo,
    cfg: CostConfig,
    lease: float | None = None,
    gpus: int = 1,
) -> Price:
    """The hourly price of a worker on `device`.

    The operator's lease of this worker (`cost.worker_prices`, see `synthgen.cost.leases`)
    wins, as it stands (per worker process, not x `gpus`). A GPU pays its matched table
    price x `gpus` it uses. A CPU worker pays a table entry matching its model if there is
    one (per machine), else `cpu-core` x its usable cores. No match: price 0 (source
    "unknown"), or ConfigError when `cfg.unknown_device == "error"`.
    """
    if lease is not None:
        return Price(lease, match_device_type(device.name, cfg.prices) or device.label, "lease")
    key = match_device_type(device.name, cfg.prices)
    if key is not None:
        per = cfg.prices[key] * (max(gpus, 1) if device.kind == "cuda" else 1)
        return Price(per, key, "table")
    if device.kind == "cpu" and CPU_CORE_KEY in cfg.prices:
        return Price(cfg.prices[CPU_CORE_KEY] * device.count, CPU_CORE_KEY, "table")
    if cfg.unknown_device == "error":
        raise ConfigError(
            f"cost.prices: no price matches device {device.label!r}; add a key for it "
            f"(e.g. cost.prices.{device.name!r}) or lease the worker at a price "
            f"(cost.worker_prices)"
        )
    return Price(0.0, device.label, "unknown")


# --------------------------------------------------------------------------- ledger rows
@dataclass(frozen=True)
class ShardAttempt:
    """What the pipeline measured for one attempt at one shard."""

    run_id: str
    shard_id: str
    attempt: int
    attempt_id: str
    worker: str
    host: str
    device: str
    model: str
    price: Price
    started_at: datetime
    finished_at: datetime
    engine_seconds: float
    prompts: int
    prompt_tokens: int
    completion_tokens: int
    kept_records: int | None
    kept_tokens: int | None
    status: AttemptStatus
    error: str | None = None


def usd_per_million(cost_usd: float, tokens: float | None) -> float | None:
    """$ per 1M tokens (None without tokens): the one definition, used by the ledger rows,
    the report and the estimate."""
    if not tokens:
        return None
    return cost_usd / tokens * 1_000_000


def cost_of(price_per_hour: float, seconds: float) -> float:
    """USD of `seconds` at `price_per_hour`."""
    return price_per_hour * seconds / 3600.0


def ledger_row(a: ShardAttempt) -> dict[str, Any]:
    """The ledger row of one attempt; derived columns computed from the measured ones."""
    if a.started_at.tzinfo is None or a.finished_at.tzinfo is None:
        raise ValueError(f"shard {a.shard_id}: started_at/finished_at must be timezone-aware")
    if a.finished_at < a.started_at:
        raise ValueError(f"shard {a.shard_id}: finished_at is before started_at")
    if a.attempt < 1:
        raise ValueError(f"shard {a.shard_id}: attempt numbers start at 1, got {a.attempt}")
    if a.status not in ("succeeded", "failed"):
        raise ValueError(f"shard {a.shard_id}: unknown status {a.status!r}")
    wall = (a.finished_at - a.started_at).total_seconds()
    return {
        "run_id": a.run_id,
        "shard_id": a.shard_id,
        "attempt": a.attempt,
        "attempt_id": a.attempt_id,
        "worker": a.worker,
        "host": a.host,
        "device": a.device,
        "device_type": a.price.device_type,
        "model": a.model,
        "price_per_hour": a.price.per_hour,
        "price_source": a.price.source,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "wall_seconds": wall,
        "engine_seconds": a.engine_seconds,
        "prompts": a.prompts,
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "kept_records": a.kept_records,
        "kept_tokens": a.kept_tokens,
        "status": a.status,
        "error": a.error,
        **cost_columns(a.price.per_hour, wall, a.completion_tokens, a.kept_tokens),
    }


def cost_columns(
    price_per_hour: float, wall_seconds: float, completion_tokens: Any, kept_tokens: Any
) -> dict[str, Any]:
    """A ledger row's columns derived from its price and duration: its cost and its $ per 1M
    completion and kept tokens."""
    cost = cost_of(price_per_hour, wall_seconds)
    return {
        "cost_usd": cost,
        "usd_per_1m_completion_tokens": usd_per_million(cost, completion_tokens),
        "usd_per_1m_kept_tokens": usd_per_million(cost, kept_tokens),
    }


def verification_row(
    run_id: str,
    shard_id: str,
    attempt: int,
    check_id: str,
    worker: str,
    host: str,
    device: str,
    model: str,
    price: Price,
    started_at: datetime,
    seconds: float,
) -> dict[str, Any]:
    """The ledger row of one verification check of `shard_id`'s attempt `attempt`.

    Priced on the verify seconds (the scoring time): `cost_usd = price * seconds / 3600`;
    token columns 0; status "verification", which the report and the budget never count as
    a shard attempt.
    """
    if started_at.tzinfo is None:
        raise ValueError(f"verify {shard_id}: started_at must be timezone-aware")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"verify {shard_id}: verify seconds must be finite and >= 0, got {seconds}"
        )
    cost = cost_of(price.per_hour, seconds)
    return {
        "run_id": run_id,
        "shard_id": shard_id,
        "attempt": attempt,
        "attempt_id": check_id,
        "worker": worker,
        "host": host,
        "device": device,
        "device_type": price.device_type,
        "model": model,
        "price_per_hour": price.per_hour,
        "price_source": price.source,
        "started_at": started_at,
        "finished_at": started_at + timedelta(seconds=seconds),
        "wall_seconds": seconds,
        "engine_seconds": seconds,
        "prompts": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "kept_records": None,
        "kept_tokens": None,
        "status": VERIFICATION_STATUS,
        "error": None,
        "cost_usd": cost,
        "usd_per_1m_completion_tokens": None,
        "usd_per_1m_kept_tokens": None,
    }


def is_verification(row: Mapping[str, Any]) -> bool:
    return row["status"] == VERIFICATION_STATUS


def ledger_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def kept_counts(table: pa.Table) -> tuple[int, int]:
    """(kept records, their completion tokens) of a records table (schema.RECORD_SCHEMA).

    Kept = not rejected and, when the clean stage ran, not dropped (null drop_reason).
    """
    rows = table.select(["finish_reason", "completion_tokens", "drop_reason"]).to_pylist()
    kept = [r for r in rows if r["finish_reason"] != "rejected" and r["drop_reason"] is None]
    return len(kept), sum(int(r["completion_tokens"]) for r in kept)


# --------------------------------------------------------------------------- worker rows
@dataclass(frozen=True)
class WorkerUsage:
    """What one worker process measured about itself for one run."""

    run_id: str
    worker_id: str
    worker: str
    host: str
    pid: int
    device: str
    price: Price
    joined_at: datetime
    held_from: datetime
    held_until: datetime
    load_seconds: float
    busy_seconds: float
    shards: int
    failed_attempts: int
    final: bool = False


def worker_row(u: WorkerUsage) -> dict[str, Any]:
    """Held = held_until - held_from; idle = held - load - busy (never negative)."""
    if u.held_until < u.held_from:
        raise ValueError(f"worker {u.worker_id}: held_until is before held_from")
    held = (u.held_until - u.held_from).total_seconds()
    idle = max(held - u.load_seconds - u.busy_seconds, 0.0)
    p = u.price.per_hour
    return {
        "run_id": u.run_id,
        "worker_id": u.worker_id,
        "worker": u.worker,
        "host": u.host,
        "pid": u.pid,
        "device": u.device,
        "device_type": u.price.device_type,
        "price_per_hour": p,
        "price_source": u.price.source,
        "joined_at": u.joined_at,
        "held_from": u.held_from,
        "held_until": u.held_until,
        "held_seconds": held,
        "load_seconds": u.load_seconds,
        "busy_seconds": u.busy_seconds,
        "idle_seconds": idle,
        "shards": u.shards,
        "failed_attempts": u.failed_attempts,
        "cost_usd": cost_of(p, held),
        "load_cost_usd": cost_of(p, u.load_seconds),
        "idle_cost_usd": cost_of(p, idle),
        "final": u.final,
    }


def extend_worker_row(row: dict[str, Any], held_until: datetime) -> dict[str, Any]:
    """The same worker row held until a later moment (idle time and costs recomputed)."""
    price = Price(row["price_per_hour"], row["device_type"], row["price_source"])
    usage = WorkerUsage(
        run_id=row["run_id"],
        worker_id=row["worker_id"],
        worker=row["worker"],
        host=row["host"],
        pid=row["pid"],
        device=row["device"],
        price=price,
        joined_at=row["joined_at"],
        held_from=row["held_from"],
        held_until=held_until,
        load_seconds=row["load_seconds"],
        busy_seconds=row["busy_seconds"],
        shards=row["shards"],
        failed_attempts=row["failed_attempts"],
        final=row["final"],
    )
    return worker_row(usage)


def worker_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=WORKER_SCHEMA)
