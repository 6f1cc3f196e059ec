"""`select`: which samples of one prompt the published dataset keeps (run at publish over the
final stage's kept rows).

Rows are grouped by `prompt_id` (with `span`, by (`prompt_id`, `sample_index // span`):
the samples of the compared stage that share one upstream row, see `group_span`).
- `all`: every row.
- `best`: per group the row with the highest `by` wins (ties: the lowest `sample_index`); the
  others are flagged `not_best`.
- `pairs`: per group one row, the winner's columns plus `chosen` / `rejected` (the compared
  stage's text of the highest and of the lowest scored sample), their scores and sample
  indexes. A group with fewer than two scored samples, or whose margin (chosen - rejected
  score) is not above `min_margin` (equal scores never pair), keeps its rows flagged
  `low_margin` instead.
A row with a null (or non-numeric) score never wins. Rows already flagged are passed through
untouched. The output is in input order: deterministic for the same input.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from synthgen.config import RunConfig
from synthgen.config.multistage import PAIR_COLUMNS, SAMPLE_INDEX, compared_stage, stage_n
from synthgen.config.stages import SelectConfig
from synthgen.errors import ConfigError
from synthgen.stages.base import DROP_COLUMN
from synthgen.stages.columns import column_values

NOT_BEST = "not_best"
LOW_MARGIN = "low_margin"


def group_span(cfg: RunConfig, stage: str | None = None) -> int:
    """How many final rows descend from one input row of the compared stage: the product
    of `sampling.n` from that stage to the last. Rows `sample_index // span` apart compare
    samples of different upstream rows (e.g. answers to different generated questions)."""
    name = stage or compared_stage(cfg)
    names = [s.name for s in cfg.stages]
    if name not in names:
        return 1
    span = 1
    for s in cfg.stages[names.index(name) :]:
        span *= stage_n(cfg, s)
    return span


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if isinstance(value, float) and math.isnan(value) else float(value)


def pair_schema(schema: pa.Schema, stage_type: pa.DataType | None = None) -> pa.Schema:
    """`schema` with the pair columns appended (chosen / rejected of `stage_type`: string)."""
    stage_type = stage_type or pa.string()
    extra = [
        pa.field("chosen", stage_type),
        pa.field("rejected", stage_type),
        pa.field("chosen_score", pa.float64()),
        pa.field("rejected_score", pa.float64()),
        pa.field("chosen_sample_index", pa.int32()),
        pa.field("rejected_sample_index", pa.int32()),
    ]
    return pa.schema([*schema, *extra])


def select_rows(
    table: pa.Table, select: SelectConfig, stage: str, span: int | None = None
) -> pa.Table:
    """Apply `select` to `table` (the final stage's rows); `stage` is the compared stage
    (its column holds the text that becomes chosen / rejected)."""
    if select.strategy == "all":
        return table
    by = select.by or ""
    for col in (by, "prompt_id", SAMPLE_INDEX, *([stage] if select.strategy == "pairs" else [])):
        if col not in table.column_names:
            raise ConfigError(
                f"select: the rows have no column {col!r} (columns: "
                f"{', '.join(table.column_names)})"
            )
    if DROP_COLUMN not in table.column_names:
        table = table.append_column(DROP_COLUMN, pa.nulls(table.num_rows, pa.string()))
    ids = table.column("prompt_id").to_pylist()
    index = table.column(SAMPLE_INDEX).to_pylist()
    drops = table.column(DROP_COLUMN).to_pylist()
    scores = [_score(v) for v in column_values(table, by)]
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (pid, si, drop) in enumerate(zip(ids, index, drops, strict=True)):
        if drop is None:
            groups.setdefault((pid, si // span if span else 0), []).append(i)

    def ranked(rows: list[int]) -> list[int]:
        """Scored rows, best first (ties: lowest sample_index)."""
        scored = [i for i in rows if scores[i] is not None]
        return sorted(scored, key=lambda i: (-(scores[i] or 0.0), index[i], i))

    if select.strategy == "best":
        new = list(drops)
        for rows in groups.values():
            order = ranked(rows)
            winner = order[0] if order else None
            for i in rows:
                if i != winner:
                    new[i] = NOT_BEST
        return table.set_column(
            table.schema.get_field_index(DROP_COLUMN), DROP_COLUMN, pa.array(new, pa.string())
        )

    # pairs
    texts = table.column(stage).to_pylist()
    keep: list[int] = []
    extra: dict[int, dict[str, Any]] = {}
    new = list(drops)
    member: dict[int, tuple[str, int]] = {}
    for key, rows in groups.items():
        for i in rows:
            member[i] = key
    paired: dict[tuple[str, int], int] = {}
    for key, rows in groups.items():
        order = ranked(rows)
        if len(order) >= 2:
            best = order[0]
            # the lowest score; among equals the lowest sample_index
            worst = min(order, key=lambda i: (scores[i] or 0.0, index[i], i))
            margin = (scores[best] or 0.0) - (scores[worst] or 0.0)
            if margin > select.min_margin:
                paired[key] = best
                extra[best] = {
                    "chosen": texts[best],
                    "rejected": texts[worst],
                    "chosen_score": scores[best],
                    "rejected_score": scores[worst],
                    "chosen_sample_index": index[best],
                    "rejected_sample_index": index[worst],
                }
                continue
        for i in rows:
            new[i] = LOW_MARGIN
    for i in range(table.num_rows):
        key = member.get(i)
        if key is not None and key in paired and paired[key] != i:
            continue  # represented by its group's pair row
        keep.append(i)
    out = table.set_column(
        table.schema.get_field_index(DROP_COLUMN), DROP_COLUMN, pa.array(new, pa.string())
    ).take(pa.array(keep, pa.int64()))
    schema = pair_schema(out.schema, table.schema.field(stage).type)
    for name in PAIR_COLUMNS:
        values = [extra.get(i, {}).get(name) for i in keep]
        out = out.append_column(schema.field(name), pa.array(values, schema.field(name).type))
    return out
