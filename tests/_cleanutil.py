"""Helpers for the clean-stage tests: deterministic text and record tables."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pyarrow as pa

from synthgen.io.schema import RECORD_SCHEMA

_WORDS = (
    "river mountain engine garden window market letter silver yellow planet ocean bridge "
    "forest candle doctor island morning pencil rocket summer teacher violin winter travel "
    "number kitchen monkey orange puzzle rabbit school theory valley wonder answer basket "
    "camera desert energy flower guitar harbor jacket ladder memory nature people quartz"
).split()
_STOP = ["the", "of", "and", "to", "with", "that"]


def text(seed: int, n_words: int = 60) -> str:
    """A sentence-like text that passes the default quality filters."""
    rng = random.Random(seed)
    words = []
    for i in range(n_words):
        words.append(rng.choice(_STOP) if i % 4 == 1 else rng.choice(_WORDS) + rng.choice("aeiou"))
    return " ".join(words).capitalize() + "."


def mutate(t: str, n_changes: int, seed: int) -> str:
    """`t` with `n_changes` words replaced by fresh words (spread through the text)."""
    rng = random.Random(seed)
    words = t.split()
    step = max(len(words) // max(n_changes, 1), 1)
    for k in range(n_changes):
        i = min(k * step + rng.randrange(step), len(words) - 1)
        words[i] = f"zz{seed}x{k}"
    return " ".join(words)


def records(
    rows: list[tuple[str, str]],
    shard_id: str = "shard-00000",
    run_id: str = "run-1",
    finish: list[str] | None = None,
) -> pa.Table:
    """A full RECORD_SCHEMA table from (prompt_id, completion) pairs."""
    n = len(rows)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    data = {
        "run_id": [run_id] * n,
        "shard_id": [shard_id] * n,
        "prompt_id": [r[0] for r in rows],
        "prompt": ["p"] * n,
        "messages": [None] * n,
        "completion": [r[1] for r in rows],
        "finish_reason": finish or ["stop"] * n,
        "prompt_tokens": [1] * n,
        "completion_tokens": [len(r[1].split()) for r in rows],
        "model": ["fake"] * n,
        "engine": ["fake"] * n,
        "sampling": ["{}"] * n,
        "seed": [0] * n,
        "worker": ["w"] * n,
        "device": ["cpu"] * n,
        "created_at": [now] * n,
        "meta": [None] * n,
        "error": [None] * n,
        "text_hash": [None] * n,
        "minhash": [None] * n,
        "drop_reason": [None] * n,
    }
    return pa.table(data, schema=RECORD_SCHEMA)
