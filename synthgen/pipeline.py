"""The shard function: prompts of one shard -> completions -> one committed Parquet file.

`run_shard` is what a Dask worker runs for each shard (Prefect wraps it in a task). It
returns a small `ShardResult` (counts, seconds, cost), never the text. A shard is
committed when its marker `runs/RUN_ID/_commits/SHARD_ID.json` exists; the marker is
written last, after the shard file and its ledger row, so a crash at any point leaves either
a committed shard or one that will be generated again (overwriting the same keys).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.config import RunConfig
from synthgen.devices import detect_device
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.engines.cache import get_engine, worker_identity
from synthgen.engines.fake import maybe_hang
from synthgen.errors import StorageError
from synthgen.plan import read_shard_prompts
from synthgen.schema import RECORD_SCHEMA
from synthgen.storage import Store


@dataclass
class ShardTask:
    config: dict[str, Any]  # RunConfig.model_dump(mode="json")
    shard_id: str


@dataclass
class ShardResult:
    run_id: str
    shard_id: str
    status: str  # "done" | "skipped" (already committed) | "superseded" (a re-run committed first)
    attempt: int = 0
    prompts: int = 0
    rows: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kept_records: int = 0
    kept_tokens: int = 0
    wall_seconds: float = 0.0
    engine_seconds: float = 0.0
    device: str = ""
    device_type: str = ""
    price_per_hour: float = 0.0
    cost_usd: float = 0.0
    worker: str = ""
    host: str = ""
    load_id: str = ""
    started_at: str = ""
    finished_at: str = ""
    file: str = ""
    drop_counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def commit_path(store: Store, run_id: str, shard_id: str) -> str:
    return store.run_path(run_id, "_commits", f"{shard_id}.json")


def shard_path(store: Store, run_id: str, shard_id: str) -> str:
    return store.run_path(run_id, "shards", f"{shard_id}.parquet")


def read_committed_shard(store: Store, run_id: str, shard_id: str) -> pa.Table:
    """The rows of a committed shard, checked against its commit marker's sha256.

    A file that does not match its marker (overwritten after the commit, corrupted) is never
    used: the marker is removed, so that a re-run generates the shard again, and the error
    says so."""
    marker_path = commit_path(store, run_id, shard_id)
    marker = store.read_json(marker_path)
    data = store.read_bytes(marker.get("file") or shard_path(store, run_id, shard_id))
    if hashlib.sha256(data).hexdigest() != marker.get("sha256"):
        store.rm(marker_path)
        raise StorageError(
            f"run {run_id}: shard {shard_id}: the file does not match its commit marker "
            "(sha256 differs); the commit was withdrawn, re-run to generate the shard again"
        )
    return pq.read_table(pa.BufferReader(data))


def committed_shards(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    """shard_id -> commit marker, for every committed shard of the run."""
    out = {}
    for name in store.ls(store.run_path(run_id, "_commits")):
        if name.endswith(".json"):
            out[name.removesuffix(".json")] = store.read_json(
                store.run_path(run_id, "_commits", name)
            )
    return out


def match_price(device_label: str, prices: dict[str, float], cores: int) -> tuple[str, float]:
    """(device type, USD per hour) for a detected device; CPU is priced per core-hour."""
    if device_label.startswith("cpu"):
        return "cpu-core", prices.get("cpu-core", 0.0) * cores
    name = device_label.lower()
    best = ""
    for key in prices:
        if key.lower() in name and len(key) > len(best):
            best = key
    return (best, prices[best]) if best else (device_label, 0.0)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _records_table(
    cfg: RunConfig,
    shard_id: str,
    prompts: list[Any],
    completions: list[Any],
    info: Any,
    worker: str,
    seeds: list[int],
) -> pa.Table:
    created = datetime.now(UTC)
    sampling = json.dumps(cfg.sampling.model_dump(mode="json"), sort_keys=True)
    rows = []
    for p, c, seed in zip(prompts, completions, seeds, strict=True):
        rows.append(
            {
                "run_id": cfg.run_id,
                "shard_id": shard_id,
                "prompt_id": p.prompt_id,
                "prompt": p.text,
                "messages": json.dumps(p.messages, ensure_ascii=False),
                "completion": c.text,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "model": info.model,
                "engine": info.engine,
                "sampling": sampling,
                "seed": seed,
                "worker": worker,
                "device": info.device,
                "created_at": created,
                "meta": json.dumps(p.meta, ensure_ascii=False, default=str),
                "error": c.error,
                "text_hash": None,
                "minhash": None,
                "drop_reason": "rejected_prompt" if c.finish_reason == "rejected" else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def run_shard(task: ShardTask) -> ShardResult:
    cfg = RunConfig.model_validate(task.config)
    run_id = cfg.run_id or ""
    store = Store(cfg.output)
    marker = commit_path(store, run_id, task.shard_id)
    if store.exists(marker):
        done = store.read_json(marker)
        return ShardResult(**{**done["result"], "status": "skipped"})

    started_at = _now()
    t0 = time.perf_counter()
    worker, host = worker_identity()
    attempt_dir = store.run_path(run_id, "attempts")
    attempt = 1 + sum(1 for n in store.ls(attempt_dir) if n.startswith(task.shard_id + "."))
    store.write_json(
        store.run_path(
            run_id, "attempts", f"{task.shard_id}.{attempt}.{uuid.uuid4().hex[:8]}.json"
        ),
        {
            "shard_id": task.shard_id,
            "attempt": attempt,
            "worker": worker,
            "host": host,
            "started_at": started_at,
        },
    )

    maybe_hang(cfg.model, task.shard_id, attempt)
    prompts = read_shard_prompts(store, run_id, task.shard_id)
    engine = get_engine(cfg.model)
    seeds = [prompt_seed(cfg.sampling.seed, p.prompt_id) for p in prompts]
    requests = [GenRequest(p.prompt_id, p.messages, s) for p, s in zip(prompts, seeds, strict=True)]
    t_engine = time.perf_counter()
    completions = engine.generate(requests, cfg.sampling)
    engine_seconds = time.perf_counter() - t_engine

    table = _records_table(cfg, task.shard_id, prompts, completions, engine.info, worker, seeds)
    kept = [c for c in completions if c.finish_reason != "rejected"]
    drop_counts: dict[str, int] = {}
    rejected = len(completions) - len(kept)
    if rejected:
        drop_counts["rejected_prompt"] = rejected

    path = shard_path(store, run_id, task.shard_id)
    if store.exists(marker):
        # a later attempt (this one was timed out and re-run) committed first: never
        # overwrite its file or marker; the shard has exactly one committed copy
        done = store.read_json(marker)
        return ShardResult(**{**done["result"], "status": "superseded", "attempt": attempt})
    size, sha = store.write_table(path, table)
    wall = time.perf_counter() - t0
    device = detect_device(cfg.model.device if cfg.model.engine != "fake" else "cpu")
    device_type, price = match_price(engine.info.device, cfg.cost.prices, device.count)
    result = ShardResult(
        run_id=run_id,
        shard_id=task.shard_id,
        status="done",
        attempt=attempt,
        prompts=len(prompts),
        rows=table.num_rows,
        rejected=rejected,
        prompt_tokens=sum(c.prompt_tokens for c in completions),
        completion_tokens=sum(c.completion_tokens for c in completions),
        kept_records=len(kept),
        kept_tokens=sum(c.completion_tokens for c in kept),
        wall_seconds=wall,
        engine_seconds=engine_seconds,
        device=engine.info.device,
        device_type=device_type,
        price_per_hour=price,
        cost_usd=price * wall / 3600.0,
        worker=worker,
        host=host,
        load_id=engine.info.load_id,
        started_at=started_at,
        finished_at=_now(),
        file=path,
        drop_counts=drop_counts,
    )
    commit = {
        "shard_id": task.shard_id,
        "file": path,
        "bytes": size,
        "sha256": sha,
        "rows": table.num_rows,
        "result": result.as_dict(),
    }
    # first commit wins: a concurrent attempt (a timed-out one returning late) never replaces it
    if not store.create_bytes(marker, json.dumps(commit, indent=2, sort_keys=True).encode()):
        return ShardResult(**{**result.as_dict(), "status": "superseded"})
    return result
