"""The stage contract: a run is a list of stages; a stage reads rows and writes rows.

In the spirit of datatrove's `PipelineStep`, a stage implements one method,
`process(rows) -> rows`, over an Arrow table. The base does the bookkeeping every stage
needs and none should repeat: rows in and out, time, and the drop reasons the stage decided.
A stage drops a record in one of two ways, both counted by reason:
- it *flags* the row: sets `drop_reason` (the row stays, so raw shards keep every record
  with the reason it was dropped — what generate and clean do);
- it *removes* the row, naming the reason in `removed_reason` (what publish does with the
  rows that were flagged earlier, which the base then does not count twice).

`scope` says what one unit of the stage's work is: `"shard"` (one shard of the run: the unit
of scheduling, commit, retry, resume and cost — generate, clean, publish) or `"run"` (the
whole run at once — the prompt source, the plan, run-wide dedup's search for duplicates).
`run_stages` chains shard stages on one shard's rows; a run's stages, in order, are listed
by `synthgen.stages.pipeline.run_stage_list(cfg)`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pyarrow as pa

DROP_COLUMN = "drop_reason"
Scope = Literal["shard", "run"]


@dataclass
class StageStats:
    """What one stage did to one unit of work (a shard, or the run)."""

    stage: str
    rows_in: int = 0
    rows_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "drops": dict(self.drops),
            "seconds": round(self.seconds, 6),
        }


def drop_counts(rows: pa.Table) -> Counter[str]:
    """{reason: rows flagged with it} of a table (empty without a `drop_reason` column)."""
    if DROP_COLUMN not in rows.column_names:
        return Counter()
    return Counter(r for r in rows.column(DROP_COLUMN).to_pylist() if r is not None)


class Stage:
    """One step of a run. Subclasses set `name` (and `scope`) and implement `process`."""

    name: ClassVar[str] = "stage"
    scope: ClassVar[Scope] = "shard"

    def process(self, rows: pa.Table) -> pa.Table:
        """Rows in, rows out. Flag a dropped row by setting its `drop_reason`; a row taken out
        of the table altogether is counted through `removed_reason`."""
        raise NotImplementedError(f"{type(self).__name__}.process")

    def removed_reason(self, rows_in: pa.Table, rows_out: pa.Table) -> str | None:
        """The reason counted for rows `process` removed (None: removals are not drops, e.g.
        rows flagged earlier and now left out of a published file)."""
        return None

    def __call__(self, rows: pa.Table) -> tuple[pa.Table, StageStats]:
        started = time.perf_counter()
        before = drop_counts(rows)
        out = self.process(rows)
        stats = StageStats(self.name, rows.num_rows, out.num_rows)
        flagged = drop_counts(out) - before  # reasons this stage set (Counter drops <= 0)
        removed = rows.num_rows - out.num_rows
        why = self.removed_reason(rows, out) if removed > 0 else None
        if why is not None:
            flagged[why] += removed
        stats.drops = dict(sorted(flagged.items()))
        stats.seconds = time.perf_counter() - started
        return out, stats


def run_stages(stages: Sequence[Stage], rows: pa.Table) -> tuple[pa.Table, list[StageStats]]:
    """Chain shard-scope stages over one shard's rows; each stage's stats in order."""
    stats = []
    for stage in stages:
        if stage.scope != "shard":
            raise ValueError(f"stage {stage.name!r} works on the whole run, not on one shard")
        rows, s = stage(rows)
        stats.append(s)
    return rows, stats


def merged_drops(stats: Sequence[StageStats]) -> dict[str, int]:
    """{reason: count} over several stages' stats."""
    total: Counter[str] = Counter()
    for s in stats:
        total.update(s.drops)
    return dict(sorted(total.items()))
