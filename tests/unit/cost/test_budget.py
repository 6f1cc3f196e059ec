"""Budget cap: admission arithmetic and the submission loop (no cluster needed)."""

from __future__ import annotations

import itertools
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import pytest

from synthgen.cost.budget import (
    BudgetGate,
    Decision,
    Outcome,
    admit,
    partial_message,
    projected_cost_per_shard,
    schedule,
)


def test_admit_counts_running_shards_projection() -> None:
    # spent 0.70, 2 running at 0.10 each, one more -> 1.00: allowed at exactly the cap
    assert admit(0.70, 2, 0.10, 1.00).allowed
    refused = admit(0.71, 2, 0.10, 1.00)
    assert not refused.allowed and refused.projected_usd == pytest.approx(1.01)
    assert admit(5.0, 10, 1.0, None).allowed  # no cap, no refusal
    assert not admit(1.0, 0, 0.0, 1.0).allowed  # spent reached the cap


def test_projection_spreads_failed_attempts_over_successes() -> None:
    assert projected_cost_per_shard(0.0, 0, 0) == 0.0
    assert projected_cost_per_shard(0.30, 3, 2) == pytest.approx(0.15)
    assert projected_cost_per_shard(0.20, 2, 0) == pytest.approx(0.10)


def test_gate_from_ledger_rows_counts_failures() -> None:
    rows = [
        {"cost_usd": 0.1, "status": "failed"},
        {"cost_usd": 0.1, "status": "succeeded"},
        {"cost_usd": 0.2, "status": "succeeded"},
    ]
    gate = BudgetGate.from_ledger(1.0, rows)
    assert gate.spent_usd == pytest.approx(0.4)
    assert (gate.attempts, gate.shards_done) == (3, 2)
    assert gate.per_shard_usd == pytest.approx(0.2)


class _Sim:
    """Futures that finish in submission order, each costing `cost`."""

    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.ids = itertools.count()
        self.submitted: list[str] = []

    def submit(self, item: str) -> int:
        self.submitted.append(item)
        return next(self.ids)

    def wait_any(self, pending: set[int]) -> set[int]:
        return {min(pending)}

    def outcome(self, fut: int) -> Outcome:
        return Outcome(self.cost, 1, True)


def test_schedule_stops_at_cap_and_reports_rest() -> None:
    sim = _Sim(cost=0.25)
    items = [f"shard-{i:05d}" for i in range(10)]
    gate = BudgetGate(max_cost_usd=1.0)
    res = schedule(items, sim.submit, sim.wait_any, sim.outcome, gate, max_in_flight=2)
    # first wave of 2 unmeasured; then each start needs spent + (running+1) * 0.25 <= 1.0
    assert len(sim.submitted) == 4
    assert gate.spent_usd == pytest.approx(1.0)
    assert res.partial and res.not_started == items[4:]
    assert res.stopped_by is not None and not res.stopped_by.allowed


def test_schedule_resume_with_higher_budget_runs_only_the_rest() -> None:
    items = [f"shard-{i:05d}" for i in range(10)]
    first = schedule(items, (s := _Sim(0.25)).submit, s.wait_any, s.outcome, BudgetGate(1.0), 2)
    earlier = [{"cost_usd": 0.25, "status": "succeeded"}] * len(first.finished)
    gate = BudgetGate.from_ledger(5.0, earlier)
    sim = _Sim(0.25)
    second = schedule(first.not_started, sim.submit, sim.wait_any, sim.outcome, gate, 2)
    assert not second.partial
    assert sim.submitted == items[4:]
    assert gate.spent_usd == pytest.approx(2.5)


def test_schedule_without_cap_runs_everything_with_real_threads() -> None:
    items = list(range(6))
    with ThreadPoolExecutor(2) as pool:
        res = schedule(
            items,
            lambda i: pool.submit(lambda: i * 2),
            lambda pending: wait(pending, return_when=FIRST_COMPLETED).done,
            lambda fut: Outcome(0.01, 1, True),
            BudgetGate(None),
            max_in_flight=2,
        )
    assert sorted(f.result() for _, f in res.finished if isinstance(f, Future)) == [
        0,
        2,
        4,
        6,
        8,
        10,
    ]
    assert not res.partial


def test_partial_message_says_spent_remaining_and_how_to_resume() -> None:
    msg = partial_message(
        "demo-123",
        Decision(False, 1.0, 1, 0.25, 1.0),
        remaining=6,
        total=10,
        resume_hint="synthgen run cfg.yaml --set budget.max_cost_usd=3",
    )
    assert "demo-123" in msg and "$1.0000" in msg and "6 not started" in msg
    assert "4/10 shards done" in msg and "--set budget.max_cost_usd=3" in msg
