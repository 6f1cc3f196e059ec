"""Plan a run: prompts -> shards, written under OUTPUT/runs/RUN_ID/plan/ so that a run can be
resumed on any machine from the output URI alone."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from synthgen.config import RunConfig
from synthgen.errors import ConfigError
from synthgen.io.store import Store
from synthgen.stages.prompts import PromptRecord, PromptSet, load_prompts
from synthgen.stages.sharding import Shard, make_shards

PLAN_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("messages", pa.string(), nullable=False),
        pa.field("meta", pa.string()),
        pa.field("line", pa.int64()),
    ]
)


@dataclass
class Plan:
    run_id: str
    shards: list[Shard]
    prompts: int
    rejects: int


def _plan_table(records: list[PromptRecord]) -> pa.Table:
    return pa.table(
        {
            "prompt_id": [r.prompt_id for r in records],
            "messages": [json.dumps(r.messages, ensure_ascii=False) for r in records],
            "meta": [json.dumps(r.meta, ensure_ascii=False, default=str) for r in records],
            "line": [r.line for r in records],
        },
        schema=PLAN_SCHEMA,
    )


def write_plan(cfg: RunConfig, store: Store, prompt_set: PromptSet | None = None) -> Plan:
    """Write (or, for an existing run, check and reuse) the plan of `cfg.run_id`."""
    run_id = cfg.run_id or ""
    ps = prompt_set or load_prompts(cfg)
    if cfg.shards.sizing == "guided":
        from synthgen.cluster.scheduling import make_sized_shards, plan_shard_sizes

        sizes = plan_shard_sizes(len(ps.records), cfg.shards.size, cfg.shards.expected_workers)
        shards = make_sized_shards([r.prompt_id for r in ps.records], sizes)
    else:
        shards = make_shards(ps.records, cfg.shards.size)
    index = {
        "run_id": run_id,
        "fingerprint": cfg.fingerprint(),
        "shards": [{"shard_id": s.shard_id, "prompts": len(s)} for s in shards],
        "prompts": len(ps.records),
        "source": ps.source,
    }
    index_path = store.run_path(run_id, "plan", "plan.json")
    if store.exists(index_path):
        old = store.read_json(index_path)
        if old.get("fingerprint") != index["fingerprint"] or old.get("shards") != index["shards"]:
            raise ConfigError(
                f"run_id {run_id!r} already exists at {store.url('runs', run_id)} with a "
                "different config or prompt source; choose another run_id (or remove that run)"
            )
    by_id = {r.prompt_id: r for r in ps.records}
    for shard in shards:
        path = store.run_path(run_id, "plan", "prompts", f"{shard.shard_id}.parquet")
        if not store.exists(path):
            store.write_table(path, _plan_table([by_id[p] for p in shard.prompt_ids]))
    if ps.rejects:
        lines = "\n".join(
            json.dumps({"source": r.source, "line": r.line, "reason": r.reason, "raw": r.raw})
            for r in ps.rejects
        )
        store.write_bytes(store.run_path(run_id, "rejects.jsonl"), (lines + "\n").encode())
    store.write_json(index_path, index)
    return Plan(run_id, shards, len(ps.records), len(ps.rejects))


def read_shard_prompts(store: Store, run_id: str, shard_id: str) -> list[PromptRecord]:
    table = store.read_table(store.run_path(run_id, "plan", "prompts", f"{shard_id}.parquet"))
    out = []
    for row in table.to_pylist():
        out.append(
            PromptRecord(
                row["prompt_id"],
                json.loads(row["messages"]),
                json.loads(row["meta"]) if row["meta"] else {},
                row["line"],
            )
        )
    return out
