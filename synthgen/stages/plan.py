"""Plan a run: prompts -> shards, written under OUTPUT/runs/RUN_ID/plan/ so that a run can be
resumed on any machine from the output URI alone."""

from __future__ import annotations

import concurrent.futures
import json
from dataclasses import dataclass

import pyarrow as pa

from synthgen.config import RunConfig
from synthgen.errors import ConfigError
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.base import Stage
from synthgen.stages.prompts import PromptRecord, PromptSet, load_prompts
from synthgen.stages.sharding import Shard, make_shards
from synthgen.stages.sizing import make_sized_shards, plan_shard_sizes, shard_size

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


def plan_table(records: list[PromptRecord]) -> pa.Table:
    return pa.table(
        {
            "prompt_id": [r.prompt_id for r in records],
            "messages": [json.dumps(r.messages, ensure_ascii=False) for r in records],
            "meta": [json.dumps(r.meta, ensure_ascii=False, default=str) for r in records],
            "line": [r.line for r in records],
        },
        schema=PLAN_SCHEMA,
    )


class PromptsStage(Stage):
    """The prompt source -> prompt rows (PLAN_SCHEMA), with stable ids. Records that cannot
    be used are kept aside as rejects (`prompt_set.rejects`), not rows."""

    name = "prompts"
    scope = "run"

    def __init__(self, cfg: RunConfig, prompt_set: PromptSet | None = None) -> None:
        self.cfg = cfg
        self.prompt_set = prompt_set

    def process(self, rows: pa.Table) -> pa.Table:
        if self.prompt_set is None:
            self.prompt_set = load_prompts(self.cfg)
        return plan_table(self.prompt_set.records)


class PlanStage(Stage):
    """Prompt rows -> the same rows cut into shards (`shards` holds them, in plan order):
    consecutive, in source order, so the same source and config always give the same
    shards; sized uniformly, or by expected worker speed (`shards.sizing: guided`)."""

    name = "plan"
    scope = "run"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.shards: list[Shard] = []

    def process(self, rows: pa.Table) -> pa.Table:
        ids = rows.column("prompt_id").to_pylist()
        size = shard_size(self.cfg, len(ids))
        if self.cfg.shards.sizing == "guided":
            sizes = plan_shard_sizes(len(ids), size, self.cfg.shards.expected_workers)
            self.shards = make_sized_shards(ids, sizes)
        else:
            records = [PromptRecord(pid, [], {}, None) for pid in ids]
            self.shards = make_shards(records, size)
        return rows


PLAN_IO_THREADS = 16


def write_plan(cfg: RunConfig, store: Store, prompt_set: PromptSet | None = None) -> Plan:
    """Write (or, for an existing run, check and reuse) the plan of `cfg.run_id`."""
    run_id = cfg.run_id or ""
    source = PromptsStage(cfg, prompt_set)
    rows, _ = source(plan_table([]))
    ps = source.prompt_set
    if ps is None:  # process() always sets it
        raise RuntimeError("the prompts stage produced no prompt set")
    planner = PlanStage(cfg)
    rows, _ = planner(rows)
    shards = planner.shards
    index = {
        "run_id": run_id,
        "fingerprint": cfg.fingerprint(),
        "shards": [{"shard_id": s.shard_id, "prompts": len(s)} for s in shards],
        "prompts": len(ps.records),
        "source": ps.source,
    }
    layout = RunLayout(store, run_id)
    index_path = layout.plan_index
    if store.exists(index_path):
        old = store.read_json(index_path)
        if old.get("fingerprint") != index["fingerprint"] or old.get("shards") != index["shards"]:
            raise ConfigError(
                f"run_id {run_id!r} already exists at {layout.url()} with a "
                "different config or prompt source; choose another run_id (or remove that run)"
            )
    # consecutive slices of the rows, in plan order; written PLAN_IO_THREADS at a time (each
    # is a storage round trip or two: a plan of 10^5 shards written one by one took minutes)
    slices, start = [], 0
    for shard in shards:
        slices.append((layout.plan_prompts(shard.shard_id), start, len(shard)))
        start += len(shard)

    def write(item: tuple[str, int, int]) -> None:
        path, offset, length = item
        if not store.exists(path):  # a resumed run (or a killed plan) wrote it already
            store.write_table(path, rows.slice(offset, length))

    if len(slices) <= 1:
        for item in slices:
            write(item)
    else:
        with concurrent.futures.ThreadPoolExecutor(min(PLAN_IO_THREADS, len(slices))) as pool:
            list(pool.map(write, slices))  # list(): the first failure raises here
    if ps.rejects:
        lines = "\n".join(
            json.dumps({"source": r.source, "line": r.line, "reason": r.reason, "raw": r.raw})
            for r in ps.rejects
        )
        store.write_bytes(layout.rejects, (lines + "\n").encode())
    store.write_json(index_path, index)
    return Plan(run_id, shards, len(ps.records), len(ps.rejects))


def read_shard_rows(store: Store, run_id: str, shard_id: str) -> pa.Table:
    """One shard's prompt rows (PLAN_SCHEMA), as the plan wrote them."""
    return store.read_table(RunLayout(store, run_id).plan_prompts(shard_id))


def read_shard_prompts(store: Store, run_id: str, shard_id: str) -> list[PromptRecord]:
    return prompt_records(read_shard_rows(store, run_id, shard_id))


def prompt_records(table: pa.Table) -> list[PromptRecord]:
    """PLAN_SCHEMA rows -> prompt records."""
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
