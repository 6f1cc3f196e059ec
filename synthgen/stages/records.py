"""The records a generation step writes: one RECORD_SCHEMA row per completion."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from synthgen.config import RunConfig, SamplingConfig
from synthgen.io.schema import RECORD_SCHEMA


def records_table(
    cfg: RunConfig,
    shard_id: str,
    prompts: list[Any],
    completions: list[Any],
    info: Any,
    worker: str,
    seeds: list[int],
    sampling_cfg: SamplingConfig | None = None,
) -> pa.Table:
    """One RECORD_SCHEMA row per (prompt, completion, seed): the completion with its
    provenance; `sampling_cfg` (default: the run's `sampling`) is recorded as used."""
    created = datetime.now(UTC)
    sampling = json.dumps((sampling_cfg or cfg.sampling).model_dump(mode="json"), sort_keys=True)
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
