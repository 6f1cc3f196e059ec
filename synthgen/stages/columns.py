"""The columns of a multi-stage run's rows: the Arrow schema of each stage's shard, and
reading a column's values (parsed fields typed as JSON strings are decoded).

A stage's shard has the RECORD_SCHEMA columns describing that stage's generation, then
`sample_index`, `source_prompt` (the prompt record's text), and per stage so far, in order:
`NAME`, `NAME.messages`, `NAME.finish_reason`, `NAME.prompt_tokens`,
`NAME.completion_tokens`, `NAME.seed`, `NAME.model` and its parsed fields `NAME.FIELD`;
a guided stage's shard ends with `completion_ids` (its own samples' token ids, or null).
A parsed field without a JSON type (an object, a list, or no schema) is a JSON string,
marked in the field's metadata so that `keep_if`, templates and `select` read the value.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from synthgen.config import RunConfig
from synthgen.config.multistage import (
    COMPLETION_IDS,
    SAMPLE_INDEX,
    SOURCE_PROMPT,
    parsed_fields,
)
from synthgen.config.stages import StageConfig
from synthgen.io.schema import RECORD_FIELDS

KIND_KEY = b"synthgen.kind"
JSON_KIND = b"json"

_ARROW = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
    "json": pa.string(),
}


def parsed_field(name: str, kind: str) -> pa.Field:
    """The Arrow field of a parsed column of kind int64 / float64 / bool / string / json."""
    meta = {KIND_KEY: JSON_KIND} if kind == "json" else None
    return pa.field(name, _ARROW[kind], metadata=meta)


def own_fields(cfg: RunConfig, stage: StageConfig) -> list[pa.Field]:
    """The columns stage NAME adds (later stages carry them)."""
    n = stage.name
    return [
        pa.field(n, pa.string()),
        pa.field(f"{n}.messages", pa.string()),
        pa.field(f"{n}.finish_reason", pa.string()),
        pa.field(f"{n}.prompt_tokens", pa.int32()),
        pa.field(f"{n}.completion_tokens", pa.int32()),
        pa.field(f"{n}.seed", pa.int64()),
        pa.field(f"{n}.model", pa.string()),
        *(parsed_field(f"{n}.{f}", kind) for f, kind in parsed_fields(cfg, stage).items()),
    ]


def stage_schema(cfg: RunConfig, index: int) -> pa.Schema:
    """The schema of every shard of `cfg.stages[index]` (the same for every shard)."""
    fields = [
        *RECORD_FIELDS,
        pa.field(SAMPLE_INDEX, pa.int32(), nullable=False),
        pa.field(SOURCE_PROMPT, pa.string()),
    ]
    for stage in cfg.stages[: index + 1]:
        fields += own_fields(cfg, stage)
    if cfg.stages[index].guided is not None:
        # the sampled token ids, where the engine has them: verifying a guided stage scores
        # them (re-tokenised text is not what a constrained sampler picked); not carried
        fields.append(pa.field(COMPLETION_IDS, pa.list_(pa.int32())))
    return pa.schema(fields)


def is_json(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(KIND_KEY) == JSON_KIND


def _decode(value: Any) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def column_values(table: pa.Table, name: str) -> list[Any]:
    """The values of column `name`, JSON-kind parsed fields decoded."""
    values = table.column(name).to_pylist()
    if is_json(table.schema.field(name)):
        return [_decode(v) for v in values]
    return values
