"""The published formats (`output.format`) and splits (`output.splits`), as pure functions over
Arrow tables of kept rows.

- `raw`: every column of the kept rows but the clean stage's internals (`minhash`,
  `drop_reason`, `error`) and a guided stage's `completion_ids`.
- `sft`: `messages` (`list<struct<role, content>>`): the request chat of one stage plus the
  generated assistant turn, TRL's conversational format; provenance columns beside it.
- `dpo`: `prompt` (the request chat), `chosen` and `rejected` (one assistant message each):
  TRL's conversational preference format, from the pairs `select: pairs` made.

A stage's columns: `NAME` (text) and `NAME.messages` (JSON chat), `NAME.model`, ...; the one
step of a single-step run, `generate`, writes the record columns (`completion`, `messages`,
`model`, ...) instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synthgen.config import RunConfig
from synthgen.config.multistage import compared_stage
from synthgen.errors import ConfigError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
# clean-stage internals; `contaminated_by` is null on every kept row (it names the benchmark
# of a dropped one, in the raw shard); a guided stage's sampled token ids (verification's)
INTERNAL_COLUMNS = ("minhash", "drop_reason", "error", "contaminated_by", "completion_ids")
SINGLE_STAGE = "generate"
TRAIN = "train"

# a single-step run's record columns, by the stage field they hold
_RECORD_COLUMN = {"text": "completion", "messages": "messages"}
# provenance kept beside the conversation (the stage's own column where it has one)
_SFT_PROVENANCE = (
    "run_id", "shard_id", "prompt_id", "sample_index", "model", "seed", "finish_reason",
    "prompt_tokens", "completion_tokens", "created_at", "meta",
)  # fmt: skip
_DPO_PROVENANCE = (
    "run_id", "shard_id", "prompt_id", "chosen_score", "rejected_score", "model", "meta",
)  # fmt: skip


def sft_stage(cfg: RunConfig) -> str:
    """`output.stage`, else the last stage without `parse` (`generate` for one step)."""
    if cfg.output.stage:
        return cfg.output.stage
    free = [s.name for s in cfg.stages if s.parse is None]
    return free[-1] if free else (cfg.stages[-1].name if cfg.stages else SINGLE_STAGE)


def pairs_stage(cfg: RunConfig) -> str:
    """The stage whose samples `select: pairs` compared (`select.stage`, else the last stage
    with `sampling.n` > 1, else the last stage)."""
    compared = compared_stage(cfg)  # the one rule `select` uses
    if compared is not None:
        return compared
    return cfg.stages[-1].name if cfg.stages else SINGLE_STAGE


def stage_column(table: pa.Table, stage: str, field: str) -> str | None:
    """The column holding `field` of `stage` (`NAME.FIELD`, `NAME` for the text), or the
    record column of a single-step run; None when the table has neither."""
    own = stage if field == "text" else f"{stage}.{field}"
    if own in table.column_names:
        return own
    if stage == SINGLE_STAGE:
        plain = _RECORD_COLUMN.get(field, field)
        if plain in table.column_names:
            return plain
    return None


def to_raw(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in INTERNAL_COLUMNS if c in table.column_names])


def _chat(raw: str | None, fallback: str | None, where: str) -> list[dict[str, str]]:
    if raw is None:
        return [{"role": "user", "content": fallback or ""}]
    try:
        turns = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: messages are not JSON ({exc})") from exc
    if not isinstance(turns, list):
        raise ValueError(f"{where}: messages must be a JSON list of {{role, content}}")
    return [{"role": str(t["role"]), "content": str(t["content"])} for t in turns]


def _need(table: pa.Table, stage: str, field: str, fmt: str) -> str:
    col = stage_column(table, stage, field)
    if col is None:
        want = stage if field == "text" else f"{stage}.{field}"
        raise ConfigError(
            f"output.format={fmt}: the rows have no column {want!r} (stage {stage!r}); "
            f"columns: {', '.join(table.column_names)}"
        )
    return col


def _provenance(table: pa.Table, stage: str, names: tuple[str, ...]) -> dict[str, pa.Array]:
    """The stage's own `NAME.x` column where it has one, else the row's plain `x`."""
    out: dict[str, pa.Array] = {}
    for name in names:
        col = stage_column(table, stage, name)
        if col is None and name in table.column_names:
            col = name
        if col is not None:
            out[name] = table.column(col)
    return out


def to_sft(table: pa.Table, stage: str = SINGLE_STAGE) -> pa.Table:
    """`messages` = the stage's request chat + {"role": "assistant", "content": text}."""
    text = table.column(_need(table, stage, "text", "sft")).to_pylist()
    chats = table.column(_need(table, stage, "messages", "sft")).to_pylist()
    prompts = table.column("prompt").to_pylist() if "prompt" in table.column_names else None
    ids = table.column("prompt_id").to_pylist() if "prompt_id" in table.column_names else None
    rows = []
    for i, (chat, completion) in enumerate(zip(chats, text, strict=True)):
        where = f"prompt {ids[i]}" if ids else f"row {i}"
        turns = _chat(chat, prompts[i] if prompts else None, where)
        rows.append([*turns, {"role": "assistant", "content": completion or ""}])
    cols: dict[str, Any] = {"messages": pa.array(rows, type=MESSAGES)}
    cols.update(_provenance(table, stage, _SFT_PROVENANCE))
    return pa.table(cols)


def to_dpo(table: pa.Table, stage: str) -> pa.Table:
    """`prompt` (the compared stage's request chat), `chosen`, `rejected` (one assistant
    message each), from the columns `select: pairs` writes: `chosen`, `rejected` (texts),
    `chosen_score`, `rejected_score` and `STAGE.messages`."""
    for col in ("chosen", "rejected"):
        if col not in table.column_names:
            raise ConfigError(
                f"output.format=dpo: the rows have no {col!r} column (made by select: pairs)"
            )
    chats = table.column(_need(table, stage, "messages", "dpo")).to_pylist()
    prompts = table.column("prompt").to_pylist() if "prompt" in table.column_names else None
    ids = table.column("prompt_id").to_pylist() if "prompt_id" in table.column_names else None
    prompt = [
        _chat(c, prompts[i] if prompts else None, f"prompt {ids[i]}" if ids else f"row {i}")
        for i, c in enumerate(chats)
    ]

    def turn(col: str) -> pa.Array:
        texts = table.column(col).to_pylist()
        return pa.array([[{"role": "assistant", "content": t or ""}] for t in texts], MESSAGES)

    cols: dict[str, Any] = {
        "prompt": pa.array(prompt, type=MESSAGES),
        "chosen": turn("chosen"),
        "rejected": turn("rejected"),
    }
    cols.update(_provenance(table, stage, _DPO_PROVENANCE))
    return pa.table(cols)


def to_format(table: pa.Table, cfg: RunConfig) -> pa.Table:
    """The kept rows of a shard in `output.format`."""
    fmt = cfg.output.format
    if fmt == "sft":
        return to_sft(table, sft_stage(cfg))
    if fmt == "dpo":
        return to_dpo(table, pairs_stage(cfg))
    return to_raw(table)


def split_names(splits: Mapping[str, float]) -> list[str]:
    """Every split of a dataset: `train` first, then the held-out ones in config order."""
    return [TRAIN, *splits]


def split_of(prompt_id: str, splits: Mapping[str, float]) -> str:
    """The split of a prompt: a stable hash of its id in [0, 1) against the cumulative
    fractions of the held-out splits (config order); the rest is `train`."""
    h = int.from_bytes(hashlib.blake2b(prompt_id.encode(), digest_size=8).digest(), "big")
    x = h / 2**64
    edge = 0.0
    for name, frac in splits.items():
        edge += frac
        if x < edge:
            return name
    return TRAIN


def split_rows(table: pa.Table, splits: Mapping[str, float]) -> dict[str, pa.Table]:
    """Rows by split (every split present, empty ones too), decided by `prompt_id`."""
    if not splits:
        return {TRAIN: table}
    ids = table.column("prompt_id").to_pylist()
    of = pa.array([split_of(p, splits) for p in ids], pa.string())
    return {name: table.filter(pc.equal(of, name)) for name in split_names(splits)}


__all__ = [
    "MESSAGES",
    "pairs_stage",
    "sft_stage",
    "split_names",
    "split_of",
    "split_rows",
    "stage_column",
    "to_dpo",
    "to_format",
    "to_raw",
    "to_sft",
]
