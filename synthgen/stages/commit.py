"""The trusted commit of an untrusted worker's shard attempt (`cluster.untrusted_workers`).

The worker PUT its output to its staging key and sent back plain data (`run_granted`). The
flow reads the staged object and checks it: its size and sha256 are what the worker said, it
is Parquet with the record columns' types, it holds the rows the worker said, every row
belongs to this run and this shard, and its prompt ids are exactly the unit's input's (a
later stage: a subset of them, the clean stage's drops go no further). Then it writes, from
the bytes it checked, the canonical shard file, the attempt's ledger row and the commit
marker (first commit wins, as on a trusted worker), and deletes the staged object.

The attempt's price and duration on the ledger are the flow's, not the worker's word
(`FlowView`): the operator's lease for the certificate the worker presented (else the
price table for its device, times the GPUs the config gives a unit), over at most the time
the flow saw the task out (from its submission to its result).

Anything that does not check out is a forged result (`ForgedOutput`): nothing is committed,
the staged object is deleted, and the generate loop runs the unit on another worker and
flags this one (`flows.loop.ShardLoop._forged`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synthgen.config import RunConfig
from synthgen.cost.leases import WorkerIdentity
from synthgen.cost.ledger import Ledger
from synthgen.cost.meter import recorded_price
from synthgen.cost.prices import SPECULATION_PREFIX, cost_columns
from synthgen.errors import StorageError
from synthgen.io.checked import read_checked, read_marker
from synthgen.io.grant import Grant
from synthgen.io.layout import RunLayout
from synthgen.io.schema import RECORD_SCHEMA
from synthgen.io.store import Store
from synthgen.stages.units import split_key, upstream

_LEDGER_TIMES = ("started_at", "finished_at")


class ForgedOutput(StorageError):
    """An untrusted worker's staged output does not match what it said or what the unit
    must produce: not committed; the unit runs elsewhere and the worker is flagged."""

    retry_elsewhere = True  # flows.loop: re-run away from `worker`, flag it

    def __init__(self, unit: str, reason: str, worker: str | None = None) -> None:
        super().__init__(f"unit {unit}: forged result: {reason}; not committed")
        self.unit = unit
        self.reason = reason
        self.worker = worker


@dataclass(frozen=True)
class FlowView:
    """What the flow itself knows of an attempt, which nothing the worker says changes:
    `held_s`, the seconds from the task's submission to its result reaching the flow (an
    upper bound on what the worker can have spent on it); `holder`, the identity the
    scheduler knows the worker by (the CN of the certificate it presented, its name)."""

    held_s: float | None = None
    holder: WorkerIdentity | None = None


def input_prompt_ids(cfg: RunConfig, store: Store, unit: str) -> set[str]:
    """The prompt ids the unit reads (its plan shard's, or its upstream shard's)."""
    run_id = cfg.run_id or ""
    stage, shard_id = split_key(unit)
    up = upstream(cfg, stage) if cfg.stages else None
    if up is None:
        path = RunLayout(store, run_id).plan_prompts(shard_id)
        table = store.read_table(path, columns=["prompt_id"])
    else:
        table = read_checked(store, run_id, shard_id, up, columns=["prompt_id"]).table
    return set(table.column("prompt_id").to_pylist())


def check_staged(
    cfg: RunConfig, data: bytes, said: dict[str, Any], unit: str, inputs: set[str]
) -> pa.Table | str:
    """The staged table when `data` is what the worker said (`said`: bytes, sha256, rows)
    and a well-formed output of `unit` over `inputs`; else why not."""
    stage, shard_id = split_key(unit)
    if len(data) != said.get("bytes"):
        return f"{len(data)} bytes staged, the worker said {said.get('bytes')}"
    sha = hashlib.sha256(data).hexdigest()
    if sha != said.get("sha256"):
        return f"sha256 {sha[:12]} staged, the worker said {str(said.get('sha256'))[:12]}"
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"not readable as Parquet ({type(exc).__name__})"
    if table.num_rows != said.get("rows"):
        return f"{table.num_rows} rows staged, the worker said {said.get('rows')}"
    names = set(table.schema.names)
    if "prompt_id" not in names:
        return "no prompt_id column"
    for f in RECORD_SCHEMA:
        if f.name in names and not table.schema.field(f.name).type.equals(f.type):
            return f"column {f.name} is {table.schema.field(f.name).type}, not {f.type}"
    for column, allowed in (("run_id", {cfg.run_id}), ("shard_id", {shard_id, unit})):
        if column in names:
            values = set(pc.unique(table.column(column)).to_pylist())
            if not values <= allowed:
                return f"rows of another {column} ({sorted(map(str, values - allowed))[:3]})"
    ids = set(pc.unique(table.column("prompt_id")).to_pylist())
    first = not cfg.stages or upstream(cfg, stage) is None
    if not ids <= inputs:
        return f"prompt ids not in this shard ({sorted(map(str, ids - inputs))[:3]})"
    if first and ids != inputs:
        return f"prompt ids of this shard missing ({sorted(map(str, inputs - ids))[:3]})"
    return table


def _ledger_row(
    row: dict[str, Any], grant: Grant, cfg: RunConfig, view: FlowView | None = None
) -> dict[str, Any]:
    """The worker's ledger row, with what the flow knows put back: run, unit, attempt; with
    a `view`, the duration bounded by `held_s` and the price the operator's (`FlowView`)."""
    out = dict(row)
    for k in _LEDGER_TIMES:
        out[k] = datetime.fromisoformat(str(out[k]))
    out.update(run_id=cfg.run_id or "", shard_id=grant.unit, attempt=grant.attempt)
    if view is not None:
        _flow_priced(out, cfg, view)
    return out


def _flow_priced(row: dict[str, Any], cfg: RunConfig, view: FlowView) -> None:
    """Replace the worker's duration (when longer than the flow saw the task out) and its
    price with the flow's, and the cost columns derived from them."""
    wall = (row["finished_at"] - row["started_at"]).total_seconds()
    if view.held_s is not None and wall > view.held_s:
        wall = max(0.0, view.held_s)
        row["finished_at"] = row["started_at"] + timedelta(seconds=wall)
    row["wall_seconds"] = wall
    row["engine_seconds"] = min(float(row["engine_seconds"]), wall)
    price = recorded_price(cfg, str(row.get("device") or ""), view.holder or WorkerIdentity())
    row.update(
        device_type=price.device_type,
        price_per_hour=price.per_hour,
        price_source=price.source,
        **cost_columns(price.per_hour, wall, row.get("completion_tokens"), row.get("kept_tokens")),
    )


def _failed_row(
    ledger: Ledger,
    grant: Grant,
    cfg: RunConfig,
    res: dict[str, Any],
    why: str,
    view: FlowView | None = None,
) -> None:
    row = res.get("ledger_row")
    if not isinstance(row, dict):
        return
    try:
        failed = {"status": "failed", "error": why[:2000]}
        ledger.write({**_ledger_row(row, grant, cfg, view), **failed})
    except Exception:  # noqa: S110 - a malformed row from the worker: the attempt is lost
        pass


def _superseded(
    cfg: RunConfig,
    store: Store,
    grant: Grant,
    res: dict[str, Any],
    why: str,
    view: FlowView | None = None,
) -> dict[str, Any]:
    """Another attempt committed the unit: this one's cost on the ledger, the committed
    result (status superseded) back."""
    stage, shard_id = split_key(grant.unit)
    run_layout = RunLayout(store, cfg.run_id or "")
    done = read_marker(store, cfg.run_id or "", shard_id, stage)
    if grant.speculative or (done and done["result"].get("speculative")):
        why = f"{SPECULATION_PREFIX}{why}"
    _failed_row(Ledger(run_layout), grant, cfg, res, why, view)
    result = done["result"] if done else {"run_id": cfg.run_id, "shard_id": grant.unit}
    return {**result, "status": "superseded", "attempt": grant.attempt}


def commit_staged(
    cfg: RunConfig,
    store: Store,
    grant: Grant,
    res: Any,
    worker: str | None = None,
    view: FlowView | None = None,
) -> dict[str, Any]:
    """Check and commit an untrusted worker's attempt (`res`: what `run_granted` returned);
    the unit's result (as `run_shard` returns it). Raises `ForgedOutput`. With `view`, the
    ledger row's duration and price are the flow's (`FlowView`)."""
    try:
        return _commit(cfg, store, grant, res, worker, view)
    finally:
        store.rm(grant.staged)  # checked and copied, or refused: the staged object goes


def _commit(
    cfg: RunConfig,
    store: Store,
    grant: Grant,
    res: Any,
    worker: str | None,
    view: FlowView | None = None,
) -> dict[str, Any]:
    unit = grant.unit
    if not isinstance(res, dict) or res.get("unit") != unit or res.get("attempt") != grant.attempt:
        raise ForgedOutput(unit, "the result is not this attempt's", worker)
    stage, shard_id = split_key(unit)
    run_id = cfg.run_id or ""
    run_layout = RunLayout(store, run_id)
    layout = run_layout.stage(stage)
    if res.get("status") == "stopped":
        return _superseded(cfg, store, grant, res, "stopped mid-generation", view)
    if res.get("status") != "staged" or res.get("staged") != grant.staged:
        raise ForgedOutput(unit, f"status {res.get('status')!r}, staged {res.get('staged')!r}", worker)  # fmt: skip
    data = store.read_optional(grant.staged)
    if data is None:
        raise ForgedOutput(unit, "nothing staged", worker)
    checked = check_staged(cfg, data, res, unit, input_prompt_ids(cfg, store, unit))
    if isinstance(checked, str):
        raise ForgedOutput(unit, checked, worker)
    marker = layout.commit(shard_id)
    if store.exists(marker):  # another attempt committed first: never overwrite its file
        return _superseded(
            cfg, store, grant, res, "another attempt committed the shard first", view
        )
    path = layout.shard(shard_id)
    store.write_bytes(path, data)
    try:
        row = _ledger_row(res["ledger_row"], grant, cfg, view)
        Ledger(run_layout).write(row)
    except (KeyError, TypeError, ValueError) as exc:
        raise ForgedOutput(unit, f"its ledger row is malformed ({exc})", worker) from exc
    result = {
        "run_id": run_id,
        "shard_id": unit,
        "status": "done",
        "attempt": grant.attempt,
        "prompts": int(res.get("prompts", 0)),
        "rows": checked.num_rows,
        "rejected": int(res.get("rejected", 0)),
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "kept_records": row["kept_records"] or 0,
        "kept_tokens": row["kept_tokens"] or 0,
        "wall_seconds": row["wall_seconds"],
        "engine_seconds": row["engine_seconds"],
        "device": str(res.get("device", "")),
        "device_type": row["device_type"],
        "price_per_hour": row["price_per_hour"],
        "cost_usd": row["cost_usd"],
        "worker": worker or str(res.get("worker", "")),
        "host": str(res.get("host", "")),
        "load_id": str(res.get("load_id", "")),
        "started_at": row["started_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat(),
        "file": path,
        "drop_counts": dict(res.get("drop_counts") or {}),
        "stages": list(res.get("stages") or []),
        "speculative": grant.speculative,
    }
    commit: dict[str, Any] = {
        "shard_id": shard_id,
        "stage": stage,
        "file": path,
        "bytes": len(data),
        "sha256": res["sha256"],
        "rows": checked.num_rows,
        "result": result,
    }
    up = grant.expect.get(next(iter(grant.expect), ""), None)
    if up is not None:
        commit["upstream"] = {"stage": up["stage"], "attempt": up.get("attempt"), "sha256": up["sha256"]}  # fmt: skip
    if not store.create_bytes(marker, json.dumps(commit, indent=2, sort_keys=True).encode()):
        return {**result, "status": "superseded"}
    return result


__all__ = ["FlowView", "ForgedOutput", "check_staged", "commit_staged", "input_prompt_ids"]
