"""Budget cap: may another shard start without the run passing `budget.max_cost_usd`?

The rule: a new shard starts only if
    spent (every ledger row of the run, failed attempts and verification checks included)
  + projected cost of each running shard
  + projected cost of the new shard
  <= max_cost_usd,
where a shard's projected cost is what shards have cost so far (spend / shards done).
Before anything is measured the projection is 0, so the first wave starts.
The submission loop is the flow's one generate loop (flows/loop.py); `BudgetGate` is the
arithmetic its budget gate (flows/cost.py `BudgetWatch`) asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from synthgen.cost.prices import VERIFICATION_STATUS


@dataclass(frozen=True)
class Decision:
    allowed: bool
    spent_usd: float
    running: int
    per_shard_usd: float
    max_cost_usd: float | None

    @property
    def projected_usd(self) -> float:
        return self.spent_usd + (self.running + 1) * self.per_shard_usd


def projected_cost_per_shard(spent_usd: float, attempts: int, shards_done: int) -> float:
    """Spend per finished shard (failed attempts' spend spread over the successes)."""
    if shards_done > 0:
        return spent_usd / shards_done
    if attempts > 0:  # only failures so far: each try is the best guess we have
        return spent_usd / attempts
    return 0.0


def admit(
    spent_usd: float, running: int, per_shard_usd: float, max_cost_usd: float | None
) -> Decision:
    if max_cost_usd is None:
        return Decision(True, spent_usd, running, per_shard_usd, None)
    projected = spent_usd + (running + 1) * per_shard_usd
    allowed = projected <= max_cost_usd and spent_usd < max_cost_usd
    return Decision(allowed, spent_usd, running, per_shard_usd, max_cost_usd)


@dataclass
class BudgetGate:
    """Spend so far (ledger rows, this and earlier sessions of the run) and admissions."""

    max_cost_usd: float | None
    spent_usd: float = 0.0
    attempts: int = 0
    shards_done: int = 0

    @classmethod
    def from_ledger(
        cls, max_cost_usd: float | None, rows: Iterable[dict[str, object]]
    ) -> BudgetGate:
        gate = cls(max_cost_usd)
        for row in rows:
            cost = float(row["cost_usd"])  # type: ignore[arg-type]
            if row["status"] == VERIFICATION_STATUS:
                gate.spent_usd += cost  # money spent, but no shard attempt
                continue
            gate.record(cost, attempts=1, succeeded=row["status"] == "succeeded")
        return gate

    @property
    def per_shard_usd(self) -> float:
        return projected_cost_per_shard(self.spent_usd, self.attempts, self.shards_done)

    def record(self, cost_usd: float, attempts: int, succeeded: bool) -> None:
        """A shard finished (or failed for good) after `attempts` tries costing `cost_usd`."""
        self.spent_usd += cost_usd
        self.attempts += attempts
        self.shards_done += 1 if succeeded else 0

    def admit(self, running: int) -> Decision:
        return admit(self.spent_usd, running, self.per_shard_usd, self.max_cost_usd)


@dataclass(frozen=True)
class Outcome:
    """What one finished shard cost, as the flow reads it (ShardResult or the ledger)."""

    cost_usd: float
    attempts: int
    succeeded: bool


def partial_message(
    run_id: str,
    decision: Decision,
    remaining: int,
    total: int,
    resume_hint: str,
) -> str:
    """The message a run stopped by the budget ends with: spend, what is left, how to resume."""
    done = total - remaining
    cap = decision.max_cost_usd or 0.0
    return (
        f"run {run_id} is partial: budget.max_cost_usd=${cap:.2f} reached -- spent "
        f"${decision.spent_usd:.4f}, {done}/{total} shards done, {remaining} not started "
        f"(next shard projected at ${decision.per_shard_usd:.4f}, which with "
        f"{decision.running} running would pass the cap). To finish, run it again with the "
        f"same run id and a higher budget, e.g.: {resume_hint}"
    )
