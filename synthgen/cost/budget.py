"""Budget cap: may another shard start without the run passing `budget.max_cost_usd`?

The rule: a new shard starts only if
    spent (every ledger row of the run, failed attempts and verification checks included)
  + projected cost of each running shard
  + projected cost of the new shard
  <= max_cost_usd,
where a shard's projected cost is what shards have cost so far (spend / shards done).
Before anything is measured the projection is 0, so the first wave starts.
`schedule()` is the submission loop, written against plain callables so the Prefect flow
(futures) and the tests (anything) drive the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from synthgen.cost.prices import VERIFICATION_STATUS

F = TypeVar("F", bound=Hashable)  # a future
T = TypeVar("T")  # a shard to run


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
    """What one finished future cost, as the flow reads it (ShardResult or the ledger)."""

    cost_usd: float
    attempts: int
    succeeded: bool


@dataclass
class ScheduleResult(Generic[T, F]):
    finished: list[tuple[T, F]] = field(default_factory=list)
    not_started: list[T] = field(default_factory=list)
    stopped_by: Decision | None = None  # the refusal that ended submission, if any

    @property
    def partial(self) -> bool:
        return bool(self.not_started)


def schedule(
    items: Sequence[T],
    submit: Callable[[T], F],
    wait_any: Callable[[set[F]], set[F]],
    outcome: Callable[[F], Outcome],
    gate: BudgetGate,
    max_in_flight: int | None = None,
) -> ScheduleResult[T, F]:
    """Submit `items` while the gate admits them, keeping at most `max_in_flight` running.

    `wait_any(pending)` blocks until at least one future is done and returns the done ones;
    `outcome(future)` reports its cost. Once the gate refuses, nothing more is submitted;
    running shards finish, the rest are returned as `not_started`.
    """
    queue = list(items)
    running: dict[F, T] = {}
    result: ScheduleResult[T, F] = ScheduleResult()
    while queue or running:
        while (
            queue
            and result.stopped_by is None
            and (max_in_flight is None or len(running) < max_in_flight)
        ):
            decision = gate.admit(len(running))
            if not decision.allowed:
                result.stopped_by = decision
                break
            item = queue.pop(0)
            running[submit(item)] = item
        if not running:
            break
        for fut in wait_any(set(running)):
            item = running.pop(fut)
            out = outcome(fut)
            gate.record(out.cost_usd, out.attempts, out.succeeded)
            result.finished.append((item, fut))
    result.not_started = queue
    return result


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
