"""The stages of a run, in order, and where each one's unit of work runs.

Today a run is one generation step; this list is what the flow executes and what the
multi-stage `stages:` config will extend (several generation steps reading earlier stages'
columns, each sharded, committed and costed the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

from synthgen.config import RunConfig
from synthgen.stages.base import Scope, Stage
from synthgen.stages.clean import CleanStage
from synthgen.stages.generate import GenerateStage
from synthgen.stages.plan import PlanStage, PromptsStage
from synthgen.stages.publish import PublishStage, RunDedupMarks


@dataclass(frozen=True)
class StageEntry:
    """One entry of a run's stage list: the stage class, its scope and where it runs."""

    name: str
    stage: type[Stage]
    scope: Scope
    where: str  # "flow" (the orchestrating process) or "worker" (a Dask task)
    enabled: bool = True


def run_stage_list(cfg: RunConfig) -> list[StageEntry]:
    """What a run of `cfg` does, stage by stage (disabled steps listed, marked as such)."""
    dedup = cfg.clean.enabled and (cfg.clean.exact.enabled or cfg.clean.near.enabled)
    return [
        StageEntry("prompts", PromptsStage, "run", "flow"),
        StageEntry("plan", PlanStage, "run", "flow"),
        StageEntry("generate", GenerateStage, "shard", "worker"),
        StageEntry("clean", CleanStage, "shard", "worker", cfg.clean.enabled),
        StageEntry("dedup", RunDedupMarks, "shard", "worker", dedup),
        StageEntry("publish", PublishStage, "shard", "worker"),
    ]
