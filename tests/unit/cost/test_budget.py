"""Budget cap: admission arithmetic, and the budget gate in the generate loop (no cluster)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from flows.cost import BudgetWatch
from flows.loop import ShardLoop
from synthgen.config import config_from_dict
from synthgen.cost.budget import (
    BudgetGate,
    Decision,
    admit,
    partial_message,
    projected_cost_per_shard,
)
from tests.helpers import fake_config


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
    """Shards that finish at once, in submission order, each costing `cost` (ledger kept)."""

    def __init__(self, cost: float) -> None:
        self.cost = cost
        self.submitted: list[str] = []
        self.ledger: list[dict[str, object]] = []

    def submit(self, item: str, avoid: set[str] | None, priority: int) -> Future:
        self.submitted.append(item)
        self.ledger.append(
            {"shard_id": item, "attempt": 1, "cost_usd": self.cost, "status": "succeeded"}
        )
        fut: Future = Future()
        fut.set_result({"shard_id": item, "status": "done", "attempt": 1, "cost_usd": self.cost})
        return fut


def _gate(tmp_path, cap: float | None, rows: list[dict[str, object]], slots: int = 2):
    cfg = config_from_dict(fake_config(str(tmp_path), budget__max_cost_usd=cap))
    return BudgetWatch(
        cfg, slots, ledger_rows=lambda sid: [r for r in rows if sid in (None, r["shard_id"])]
    )


def test_loop_stops_at_cap_and_reports_rest(tmp_path) -> None:
    sim = _Sim(cost=0.25)
    items = [f"shard-{i:05d}" for i in range(10)]
    budget = _gate(tmp_path, 1.0, sim.ledger)
    res = ShardLoop(items, sim.submit, [budget]).run()
    # first wave of 2 unmeasured; then each start needs spent + (running+1) * 0.25 <= 1.0
    assert len(sim.submitted) == 4
    assert budget.gate.spent_usd == pytest.approx(1.0)
    assert res.partial and res.not_started == items[4:]
    assert res.stopped_by is not None and not res.stopped_by.allowed


def test_loop_resume_with_higher_budget_runs_only_the_rest(tmp_path) -> None:
    items = [f"shard-{i:05d}" for i in range(10)]
    s = _Sim(0.25)
    first = ShardLoop(items, s.submit, [_gate(tmp_path, 1.0, s.ledger)]).run()
    sim = _Sim(0.25)
    sim.ledger.extend(s.ledger)  # the earlier session's rows
    budget = _gate(tmp_path, 5.0, sim.ledger)
    second = ShardLoop(first.not_started, sim.submit, [budget]).run()
    assert not second.partial
    assert sim.submitted == items[4:]
    assert budget.gate.spent_usd == pytest.approx(2.5)


def test_loop_without_cap_runs_everything_with_real_threads(tmp_path) -> None:
    items = [f"shard-{i:05d}" for i in range(6)]
    with ThreadPoolExecutor(2) as pool:
        res = ShardLoop(
            items,
            lambda sid, avoid, prio: pool.submit(
                lambda: {"shard_id": sid, "status": "done", "attempt": 1, "cost_usd": 0.01}
            ),
            [_gate(tmp_path, None, [])],
        ).run()
    assert sorted(r["shard_id"] for r in res.results) == items
    assert not res.partial and res.stopped_by is None


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
