"""One configured generation stage (`stages[k]`) of one shard: `StageStep`.

Upstream rows in (the plan's prompt rows for the first stage, the previous stage's committed
rows for later ones; rows flagged with a `drop_reason` are not fed forward), this stage's
rows out (schema: `synthgen.stages.columns.stage_schema`): per kept upstream row, `n`
samples, each a RECORD_SCHEMA record of this stage's generation with the carried columns of
earlier stages and this stage's own (`NAME`, `NAME.*`, parsed fields). A sample the engine
could not make valid, or whose output does not parse, is flagged `schema_invalid`; one
where `keep_if` is false, `keep_if`; a prompt too long for the context, `rejected_prompt`.

Seeds: each upstream row's request seed is `prompt_seed(stage seed, "PROMPT_ID/SAMPLE_INDEX/
STAGE")`: stable across runs, shards and workers, independent of batch-mates; its samples
are the engine's draws from it (the rows record that seed and their `sample_index`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from synthgen.config import RunConfig, SamplingConfig
from synthgen.config.multistage import (
    COMPLETION_IDS,
    SAMPLE_INDEX,
    SOURCE_PROMPT,
    parsed_fields,
    where,
)
from synthgen.config.stages import StageConfig
from synthgen.engines import abort
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.engines.turns import Turn, engine_turn
from synthgen.errors import EngineError
from synthgen.io.schema import RECORD_FIELDS
from synthgen.stages.base import DROP_COLUMN, Stage
from synthgen.stages.columns import stage_schema
from synthgen.stages.expr import compile_expr
from synthgen.stages.plan import prompt_records
from synthgen.stages.prompts import PromptRecord
from synthgen.stages.records import records_table
from synthgen.stages.template import StageTemplates

SCHEMA_INVALID = "schema_invalid"
KEEP_IF = "keep_if"


def stage_sampling(cfg: RunConfig, stage: StageConfig) -> SamplingConfig:
    """The stage's sampling: the run's `sampling` with the keys the stage sets over it."""
    merged = cfg.sampling.model_dump()
    merged.update(stage.sampling.model_dump(exclude_none=True))
    return SamplingConfig.model_validate(merged)


def stage_request_seed(base_seed: int, prompt_id: str, sample_index: int, stage: str) -> int:
    """The request seed of one upstream row in `stage`."""
    return prompt_seed(base_seed, f"{prompt_id}/{sample_index}/{stage}")


def _typed(value: Any, kind: str) -> Any:
    """`value` as a column of `kind`; ValueError when it is not of that JSON type."""
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if kind == "int64":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float64":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "string" and isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not a{'n' if kind[0] in 'ai' else ''} {kind}")


def parse_output(text: str, fields: dict[str, str]) -> dict[str, Any]:
    """`parse: json`: the output's top-level fields, typed; ValueError (the reason) when the
    output is not a JSON object or a field has the wrong type."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object (a {type(obj).__name__})")
    out = {}
    for name, kind in fields.items():
        try:
            out[name] = _typed(obj.get(name), kind)
        except ValueError as exc:
            raise ValueError(f"field {name!r}: {exc}") from None
    return out


class StageStep(Stage):
    """One generation stage of a multi-stage run, on one shard. After `process`, the
    engine's time and completions are on the instance (`engine_seconds`, `completions`,
    `prompt_tokens`, `completion_tokens`), for the shard's cost meter."""

    def __init__(
        self,
        cfg: RunConfig,
        stage_cfg: StageConfig,
        shard_id: str,
        engine: Any,
        worker: str,
        attempt: int = 0,
    ) -> None:
        self.cfg = cfg
        self.attempt = attempt
        self.stage_cfg = stage_cfg
        self.name = stage_cfg.name  # type: ignore[misc]  # a stage per configured name
        self.index = cfg.stages.index(stage_cfg)
        self.where = where(self.index, stage_cfg)
        self.shard_id = shard_id
        self.engine = engine
        self.worker = worker
        self.sampling = stage_sampling(cfg, stage_cfg)
        self.templates = StageTemplates(cfg, stage_cfg)
        self.fields = parsed_fields(cfg, stage_cfg)
        self.keep_if = (
            compile_expr(stage_cfg.keep_if, f"{self.where}: keep_if") if stage_cfg.keep_if else None
        )
        self.schema = stage_schema(cfg, self.index)
        self.completions: list[Any] = []
        self.engine_seconds = 0.0
        self.turn: Turn | None = None  # this worker's engine turn the call ran in

    @property
    def prompt_tokens(self) -> int:
        return sum(c.prompt_tokens for c in self.completions)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)

    def upstream(self, rows: pa.Table) -> pa.Table:
        """The rows this stage generates from: the plan's prompt rows as a table with
        `prompt_id`, `source_prompt`, `meta`, `sample_index` (first stage), or the previous
        stage's rows without those flagged with a drop reason."""
        if self.index == 0:
            records = prompt_records(rows)
            return pa.table(
                {
                    "prompt_id": pa.array([r.prompt_id for r in records], pa.string()),
                    SOURCE_PROMPT: pa.array([r.text for r in records], pa.string()),
                    "meta": pa.array(
                        [json.dumps(r.meta, ensure_ascii=False, default=str) for r in records],
                        pa.string(),
                    ),
                    SAMPLE_INDEX: pa.array([0] * len(records), pa.int32()),
                }
            )
        if DROP_COLUMN in rows.column_names:
            keep = pa.array([r is None for r in rows.column(DROP_COLUMN).to_pylist()])
            rows = rows.filter(keep)
        return rows

    def process(self, rows: pa.Table) -> pa.Table:
        up = self.upstream(rows)
        name, n = self.stage_cfg.name, self.sampling.n
        ids = up.column("prompt_id").to_pylist()
        parents = up.column(SAMPLE_INDEX).to_pylist()
        chats = self.templates.render_rows(up)
        seeds = [
            stage_request_seed(self.sampling.seed, pid, si, name)
            for pid, si in zip(ids, parents, strict=True)
        ]
        requests = [
            GenRequest(pid, chat, seed) for pid, chat, seed in zip(ids, chats, seeds, strict=True)
        ]
        with engine_turn(  # one engine call at a time on this worker
            f"{self.name}/{self.shard_id}", self.attempt, self.cfg.cluster.shard_timeout_s
        ) as self.turn:
            abort.check()  # superseded while it waited for the engine: do not start
            started = time.perf_counter()
            completions = (
                self.engine.generate(requests, self.sampling, guided=self.stage_cfg.guided)
                if requests
                else []
            )
            self.engine_seconds = time.perf_counter() - started
        self.completions = list(completions)
        if len(completions) != len(requests) * n:
            raise EngineError(
                f"{self.where}: shard {self.shard_id}: the engine returned "
                f"{len(completions)} completions for {len(requests)} requests x n={n}"
            )
        src = [r for r in range(len(requests)) for _ in range(n)]  # upstream row per output
        for j, c in enumerate(completions):
            got = getattr(c, "sample_index", j % n)
            if c.prompt_id != ids[src[j]] or got != j % n:
                raise EngineError(
                    f"{self.where}: shard {self.shard_id}: completion {j} is "
                    f"{c.prompt_id!r} sample {got}, expected {ids[src[j]]!r} sample {j % n} "
                    "(request-major order)"
                )
        metas = up.column("meta").to_pylist()
        prompts = [
            PromptRecord(ids[r], chats[r], json.loads(metas[r]) if metas[r] else {}) for r in src
        ]
        base = records_table(
            self.cfg,
            self.shard_id,
            prompts,
            completions,
            self.engine.info,
            self.worker,
            [seeds[r] for r in src],
            sampling_cfg=self.sampling,
        )
        return self._finish(up, base, completions, chats, src, parents)

    def _finish(
        self,
        up: pa.Table,
        base: pa.Table,
        completions: list[Any],
        chats: list[Any],
        src: list[int],
        parents: list[int],
    ) -> pa.Table:
        name, n = self.stage_cfg.name, self.sampling.n
        carried = up.take(pa.array(src, pa.int64()))
        drops = base.column(DROP_COLUMN).to_pylist()
        errors = base.column("error").to_pylist()
        parsed: list[dict[str, Any]] = []
        for j, c in enumerate(completions):
            values: dict[str, Any] = {}
            if drops[j] is None and (c.error or "").startswith(SCHEMA_INVALID):
                drops[j] = SCHEMA_INVALID
            elif drops[j] is None and self.stage_cfg.parse == "json":
                try:
                    values = parse_output(c.text, self.fields)
                except ValueError as exc:
                    drops[j], errors[j] = SCHEMA_INVALID, f"{SCHEMA_INVALID}: {exc}"
            parsed.append(values)
        own: dict[str, list[Any]] = {
            SAMPLE_INDEX: [parents[r] * n + j % n for j, r in enumerate(src)],
            SOURCE_PROMPT: carried.column(SOURCE_PROMPT).to_pylist(),
            name: [c.text for c in completions],
            f"{name}.messages": [json.dumps(chats[r], ensure_ascii=False) for r in src],
            f"{name}.finish_reason": [c.finish_reason for c in completions],
            f"{name}.prompt_tokens": [c.prompt_tokens for c in completions],
            f"{name}.completion_tokens": [c.completion_tokens for c in completions],
            f"{name}.seed": base.column("seed").to_pylist(),
            f"{name}.model": [self.engine.info.model] * len(completions),
            COMPLETION_IDS: [getattr(c, "token_ids", None) for c in completions],
        }
        for f in self.fields:
            own[f"{name}.{f}"] = [p.get(f) for p in parsed]
        arrays = []
        record_names = {f.name for f in RECORD_FIELDS}
        for field in self.schema:
            if field.name == DROP_COLUMN:
                arrays.append(pa.array(drops, field.type))
            elif field.name == "error":
                arrays.append(pa.array(errors, field.type))
            elif field.name in record_names:
                arrays.append(base.column(field.name).combine_chunks())
            elif field.name in own:
                arrays.append(pa.array(own[field.name], field.type))
            else:  # an earlier stage's column, carried
                arrays.append(carried.column(field.name).combine_chunks().cast(field.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self.keep_if is not None and table.num_rows:
            keep = self.keep_if.evaluate(table)
            drops = [d or (None if k else KEEP_IF) for d, k in zip(drops, keep, strict=True)]
            idx = self.schema.get_field_index(DROP_COLUMN)
            table = table.set_column(
                idx, self.schema.field(DROP_COLUMN), pa.array(drops, pa.string())
            )
        return table
