"""The Arrow schema of generated records (raw shard files and the published dataset)."""

from __future__ import annotations

import pyarrow as pa

# Columns every generated record carries (provenance included).
RECORD_FIELDS: list[pa.Field] = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("shard_id", pa.string(), nullable=False),
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),  # the last user turn, as plain text
    pa.field("messages", pa.string()),  # the full chat sent to the model, JSON
    pa.field("completion", pa.string(), nullable=False),
    pa.field("finish_reason", pa.string(), nullable=False),  # stop | length | rejected
    pa.field("prompt_tokens", pa.int32(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("engine", pa.string(), nullable=False),
    pa.field("sampling", pa.string(), nullable=False),  # JSON of the sampling parameters
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("worker", pa.string(), nullable=False),
    pa.field("device", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("meta", pa.string()),  # JSON of the prompt's metadata
    pa.field("error", pa.string()),  # per-record problem (e.g. prompt too long), else null
    # Clean stage (issue 3). Null drop_reason = kept.
    pa.field("text_hash", pa.uint64()),
    pa.field("minhash", pa.list_(pa.uint32())),
    pa.field("drop_reason", pa.string()),
]

RECORD_SCHEMA = pa.schema(RECORD_FIELDS)

# What the published dataset keeps (the clean-stage internals are dropped).
DATASET_COLUMNS: list[str] = [
    f.name for f in RECORD_FIELDS if f.name not in {"minhash", "drop_reason", "error"}
]
