"""The shard function: prompts of one shard -> completions -> one committed Parquet file.

`run_shard` is what a Dask worker runs for each shard (Prefect wraps it in a task). It
returns a small `ShardResult` (counts, seconds, cost), never the text. A shard is
committed when its marker `runs/RUN_ID/_commits/SHARD_ID.json` exists; the marker is
written last, after the shard file and its ledger row, so a crash at any point leaves either
a committed shard or one that will be generated again (overwriting the same keys).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synthgen.checkpoints import checkpoint
from synthgen.config import RunConfig
from synthgen.config.multistage import clean_stage
from synthgen.cost import usage
from synthgen.cost.ledger import Ledger
from synthgen.cost.meter import AttemptMeter, Counts
from synthgen.cost.prices import SPECULATION_PREFIX, kept_counts
from synthgen.engines import abort
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.engines.cache import get_engine, worker_identity
from synthgen.engines.turns import Turn, engine_turn
from synthgen.io.attempts import next_attempt
from synthgen.io.checked import (
    Expect,
    ShardMismatch,
    ShardWithdrawn,
    check_bytes,
    read_checked,
    read_marker,
)
from synthgen.io.grant import Grant, GrantRefused, GrantStore
from synthgen.io.layout import DEFAULT_STAGE, RunLayout
from synthgen.io.store import Store
from synthgen.stages.base import Stage, merged_drops, run_stages
from synthgen.stages.clean import CleanStage
from synthgen.stages.decontam import decontam_stages
from synthgen.stages.multi import StageStep
from synthgen.stages.plan import prompt_records, read_shard_rows
from synthgen.stages.records import records_table
from synthgen.stages.units import split_key, stage_config, upstream

log = logging.getLogger(__name__)


@dataclass
class ShardTask:
    config: dict[str, Any]  # RunConfig.model_dump(mode="json")
    shard_id: str
    speculative: bool = False  # a backup copy of a running attempt (straggler speculation)


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
    stages: list[dict[str, Any]] = field(default_factory=list)  # StageStats per stage
    speculative: bool = False  # this attempt was a backup copy (straggler speculation)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Superseded(Exception):
    def __init__(self, shard_id: str, attempt: int, stopped: bool = False) -> None:
        how = "stopped mid-generation" if stopped else "nothing written"
        super().__init__(
            f"shard {shard_id}: attempt {attempt} superseded (another attempt committed the "
            f"shard first; {how})"
        )


def read_committed_shard(
    store: Store, run_id: str, shard_id: str, stage: str = DEFAULT_STAGE
) -> pa.Table:
    """The rows of a committed shard of `stage`, checked against its commit marker (sha256,
    row count, readable Parquet; `synthgen.io.checked.read_checked`).

    A file that does not match its marker (overwritten after the commit, truncated,
    corrupted), or a garbage marker, is never used: the marker is withdrawn, so that the
    shard is generated again, and `ShardWithdrawn` (a StorageError) says so."""
    return read_checked(store, run_id, shard_id, stage).table


def _now() -> str:
    return datetime.now(UTC).isoformat()


class GenerateStage(Stage):
    """Prompt rows (the plan's) -> one record per prompt: the engine's completion with its
    provenance. A prompt the engine refused (too long for the context) is flagged
    `rejected_prompt`; the shard never fails for it."""

    name = "generate"

    def __init__(
        self, cfg: RunConfig, shard_id: str, engine: Any, worker: str, attempt: int = 0
    ) -> None:
        self.cfg = cfg
        self.shard_id = shard_id
        self.attempt = attempt
        self.engine = engine
        self.worker = worker
        self.completions: list[Any] = []
        self.engine_seconds = 0.0
        self.turn: Turn | None = None  # this worker's engine turn the call ran in

    def process(self, rows: pa.Table) -> pa.Table:
        prompts = prompt_records(rows)
        seeds = [prompt_seed(self.cfg.sampling.seed, p.prompt_id) for p in prompts]
        requests = [
            GenRequest(p.prompt_id, p.messages, s) for p, s in zip(prompts, seeds, strict=True)
        ]
        # the next shard's call waits for this one only (not for an abandoned one)
        with engine_turn(
            f"{self.name}/{self.shard_id}", self.attempt, self.cfg.cluster.shard_timeout_s
        ) as self.turn:
            abort.check()  # superseded while it waited for the engine: do not start
            started = time.perf_counter()
            self.completions = self.engine.generate(requests, self.cfg.sampling)
            self.engine_seconds = time.perf_counter() - started
        return records_table(
            self.cfg, self.shard_id, prompts, self.completions, self.engine.info, self.worker, seeds
        )


def after_generate(cfg: RunConfig, store: Any = None) -> list[Stage]:
    """The stages a shard goes through on its worker after generation, in order (`store`:
    where they read run files, default the run's output)."""
    return [*decontam_stages(cfg, store), CleanStage(cfg.clean)]


def upstream_ref(marker: dict[str, Any], stage: str) -> dict[str, Any]:
    """What a unit's commit marker records of the upstream commit it read."""
    return {
        "stage": stage,
        "attempt": marker.get("result", {}).get("attempt"),
        "sha256": marker.get("sha256"),
    }


def stale_upstream(
    store: Store, run_id: str, cfg: RunConfig, stage: str, shard_id: str, marker: dict[str, Any]
) -> str | None:
    """Why the committed unit `stage:shard_id` (its `marker`) no longer rests on its upstream
    (the upstream shard was quarantined or generated again since), or None. A marker that
    records no upstream (the first stage, a one-step run, older runs) is never stale."""
    ref = marker.get("upstream")
    if not ref:
        return None
    try:
        now = read_marker(store, run_id, shard_id, ref["stage"])
    except ShardWithdrawn:
        now = None
    if now is None:
        return f"its upstream {ref['stage']}:{shard_id} is no longer committed"
    if now.get("sha256") != ref.get("sha256"):
        return (
            f"it read attempt {ref.get('attempt')} of {ref['stage']}:{shard_id}, since replaced "
            f"by attempt {now.get('result', {}).get('attempt')}"
        )
    return None


def _steps(
    cfg: RunConfig,
    store: Any,
    stage: str,
    shard_id: str,
    worker: str,
    attempt: int,
    grant: Grant | None = None,
) -> tuple[Any, pa.Table, list[Stage], Any, dict[str, Any] | None]:
    """(engine, input rows, the stages of this unit on its worker, the generating stage,
    the upstream commit it reads or None). `grant`: an untrusted worker's (`store` is its
    GrantStore): the upstream shard is checked against what the grant says of it."""
    local = None if grant is None else store
    run_id = cfg.run_id or ""
    sc = stage_config(cfg, stage)
    engine = get_engine(cfg.model if sc is None or sc.model is None else sc.model)
    if sc is None:  # the one-step run
        generate: Any = GenerateStage(cfg, shard_id, engine, worker, attempt)
        return (
            engine,
            read_shard_rows(store, run_id, shard_id),
            [generate, *after_generate(cfg, local)],
            generate,
            None,
        )
    up = upstream(cfg, stage)
    ref = None
    if up is None:
        rows = read_shard_rows(store, run_id, shard_id)
    elif grant is not None:
        rows, ref = _granted_upstream(store, grant, run_id, shard_id, up)
    else:
        checked = read_checked(store, run_id, shard_id, up)
        rows, ref = checked.table, upstream_ref(checked.marker, up)
    generate = StageStep(cfg, sc, shard_id, engine, worker, attempt)
    # the clean stage's text (default: the final stage's) is filtered and deduplicated in
    # the shard before it is committed; its dropped rows go no further
    after = after_generate(cfg, local) if stage == clean_stage(cfg) else []
    return engine, rows, [generate, *after], generate, ref


def run_shard(task: ShardTask) -> ShardResult:
    cfg = RunConfig.model_validate(task.config)
    run_id = cfg.run_id or ""
    store = Store(cfg.output)
    stage, shard_id = split_key(task.shard_id)  # a unit: one shard of one stage
    run_layout = RunLayout(store, run_id)
    layout = run_layout.stage(stage)
    marker = layout.commit(shard_id)
    try:
        done = read_marker(store, run_id, shard_id, stage)
    except ShardWithdrawn:  # a garbage marker (withdrawn, logged): generate the shard again
        done = None
    stale = None if done is None else stale_upstream(store, run_id, cfg, stage, shard_id, done)
    if stale is not None:  # committed from an upstream shard that was replaced since
        log.warning("run %s: unit %s is generated again: %s", run_id, task.shard_id, stale)
        store.rm(marker)
        done = None
    if done is not None:
        return ShardResult(**{**done["result"], "status": "skipped"})

    started_at = _now()
    worker, host = worker_identity()
    attempt = next_attempt(store, layout, shard_id)
    store.write_json(
        layout.attempt(shard_id, attempt, uuid.uuid4().hex[:8]),
        {
            "shard_id": shard_id,
            "attempt": attempt,
            "worker": worker,
            "host": host,
            "started_at": started_at,
            **({"speculative": True} if task.speculative else {}),
        },
    )

    # the engine loads before the attempt's clock starts: load time is the worker's (held)
    # cost, recorded in its worker row, not this shard's
    engine, rows, steps, generate, up_ref = _steps(cfg, store, stage, shard_id, worker, attempt)
    meter = AttemptMeter.start(cfg, task.shard_id, attempt, engine.info.device, engine.info.model)
    ledger = Ledger(run_layout)
    counts = Counts()
    try:
        counts.prompts = rows.num_rows
        # on the worker: generate, then (final stage) clean: hashes, MinHash, filters, in-shard
        # duplicates
        with abort.watching(abort.unit_token(run_id, task.shard_id)):
            try:
                table, stats = run_stages(steps, rows)
            except abort.Superseded:  # stopped mid-call: another attempt committed the unit
                meter.charge_from(getattr(generate, "turn", None))
                raise _Superseded(task.shard_id, attempt, stopped=True) from None
        meter.charge_from(generate.turn)
        drop_counts = merged_drops(stats)
        rejected = _count(counts, generate, table)

        path = layout.shard(shard_id)
        if store.exists(marker):
            # another attempt (this one was timed out and re-run) committed first: never
            # overwrite its file or marker; the shard has exactly one committed copy
            raise _Superseded(task.shard_id, attempt)
        size, sha = store.write_table(path, table)
    except _Superseded as exc:
        done = store.read_json(marker)
        # the flow may already have priced this attempt as lost (a frozen worker that thawed
        # after the run ended): one row per attempt, the thaw adds none
        priced = ledger.rows(task.shard_id).filter(pc.field("attempt") == attempt).num_rows
        if not priced:
            why = str(exc)
            if task.speculative or done["result"].get("speculative"):
                why = f"{SPECULATION_PREFIX}{why}"  # the losing copy of a speculated shard
            meter.finish_in(ledger, counts, "failed", error=why)
        return ShardResult(**{**done["result"], "status": "superseded", "attempt": attempt})
    except Exception as exc:
        # a failed attempt cost money too: record it, then let the task retry
        meter.charge_from(getattr(generate, "turn", None))
        try:
            meter.finish_in(ledger, counts, "failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as ledger_exc:  # never hide the original failure
            log.warning(
                "shard %s: could not write the failed attempt's ledger row: %s",
                task.shard_id,
                ledger_exc,
            )
        raise
    checkpoint("generate.file_written")
    row = meter.finish_in(ledger, counts, "succeeded")  # written before the commit marker
    result = ShardResult(
        run_id=run_id,
        shard_id=task.shard_id,
        status="done",
        attempt=attempt,
        prompts=rows.num_rows,
        rows=table.num_rows,
        rejected=rejected,
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        kept_records=counts.kept_records,
        kept_tokens=counts.kept_tokens,
        wall_seconds=row["wall_seconds"],
        engine_seconds=counts.engine_seconds,
        device=engine.info.device,
        device_type=row["device_type"],
        price_per_hour=row["price_per_hour"],
        cost_usd=row["cost_usd"],
        worker=worker,
        host=host,
        load_id=engine.info.load_id,
        started_at=row["started_at"].isoformat(),
        finished_at=row["finished_at"].isoformat(),
        file=path,
        drop_counts=drop_counts,
        stages=[st.as_dict() for st in stats],
        speculative=task.speculative,
    )
    commit = {
        "shard_id": shard_id,
        "stage": stage,
        "file": path,
        "bytes": size,
        "sha256": sha,
        "rows": table.num_rows,
        "result": result.as_dict(),
    }
    if up_ref is not None:  # a later stage: the upstream commit its rows come from
        commit["upstream"] = up_ref
    # first commit wins: a concurrent attempt (a timed-out one returning late) never replaces it
    if not store.create_bytes(marker, json.dumps(commit, indent=2, sort_keys=True).encode()):
        return ShardResult(**{**result.as_dict(), "status": "superseded"})
    checkpoint("generate.committed")
    return result


def _granted_upstream(
    store: GrantStore, grant: Grant, run_id: str, shard_id: str, up: str
) -> tuple[pa.Table, dict[str, Any]]:
    """An untrusted worker's upstream rows: the file its grant lets it GET, checked against
    the sha256 and rows the flow read in the upstream's commit marker."""
    path = RunLayout(store, run_id).stage(up).shard(shard_id)  # type: ignore[arg-type]
    want = grant.expect.get(path)
    if want is None:
        raise GrantRefused(f"unit {grant.unit}: its grant names no upstream file {path}")
    checked = check_bytes(store.read_bytes(path), Expect(want["sha256"], int(want["rows"])))
    if isinstance(checked, str):
        raise ShardMismatch(store.location(path), checked)
    ref = {"stage": up, "attempt": want.get("attempt"), "sha256": want["sha256"]}
    return checked, ref


def _count(counts: Counts, generate: Any, table: pa.Table) -> int:
    """Fill `counts` from a finished generation step and the table after the shard's stages;
    the number of rejected completions."""
    completions = generate.completions
    counts.engine_seconds = generate.engine_seconds
    counts.prompt_tokens = sum(c.prompt_tokens for c in completions)
    counts.completion_tokens = sum(c.completion_tokens for c in completions)
    # kept = not rejected and not dropped: count after the clean stage marked drop_reason
    counts.kept_records, counts.kept_tokens = kept_counts(table)
    return sum(1 for c in completions if c.finish_reason == "rejected")


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ledger row as plain data (datetimes as ISO text): what crosses back to the flow."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def run_granted(config: dict[str, Any], grant_data: dict[str, Any]) -> dict[str, Any]:
    """What an untrusted worker runs for one shard attempt (`cluster.untrusted_workers`):
    read its input through its grant's GET URLs, generate and clean, PUT the table to its
    staging key; return plain data only (the file's size, sha256 and rows, the attempt's
    counts, timings and ledger row). It writes no attempt marker, ledger row or commit
    marker and holds no storage credentials: the flow checks the staged file and commits
    it (`synthgen.stages.commit.commit_staged`)."""
    cfg = RunConfig.model_validate(config)
    grant = Grant.from_dict(grant_data)
    run_id = cfg.run_id or ""
    store = GrantStore(grant)
    stage, shard_id = split_key(grant.unit)
    worker, host = worker_identity()
    attempt = grant.attempt
    engine, rows, steps, generate, _ = _steps(cfg, store, stage, shard_id, worker, attempt, grant)
    meter = AttemptMeter.start(cfg, grant.unit, attempt, engine.info.device, engine.info.model)
    counts = Counts(prompts=rows.num_rows)
    base = {"unit": grant.unit, "attempt": attempt, "worker": worker, "host": host}
    with abort.watching(abort.unit_token(run_id, grant.unit)):
        try:
            table, stats = run_stages(steps, rows)
        except abort.Superseded:  # stopped mid-call: another attempt committed the unit
            meter.charge_from(getattr(generate, "turn", None))
            why = str(_Superseded(grant.unit, attempt, stopped=True))
            row = meter.row(counts, "failed", error=why)
            usage.record_attempt(run_id, row["wall_seconds"], False, engine.info.device)
            return {**base, "status": "stopped", "ledger_row": _plain_row(row)}
    meter.charge_from(generate.turn)
    rejected = _count(counts, generate, table)
    compression = None if cfg.output.compression == "none" else cfg.output.compression
    size, sha = store.write_table(grant.staged, table, compression)
    row = meter.row(counts, "succeeded")
    usage.record_attempt(run_id, row["wall_seconds"], True, engine.info.device)
    return {
        **base,
        "status": "staged",
        "staged": grant.staged,
        "bytes": size,
        "sha256": sha,
        "rows": table.num_rows,
        "prompts": rows.num_rows,
        "rejected": rejected,
        "device": engine.info.device,
        "load_id": engine.info.load_id,
        "drop_counts": merged_drops(stats),
        "stages": [st.as_dict() for st in stats],
        "speculative": grant.speculative,
        "ledger_row": _plain_row(row),
    }
