"""The one generate loop (flows/loop.py) with its gates, on fake futures: budget, shard
timeout and verification alone and together (no Prefect, no cluster)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from flows.cost import BudgetWatch
from flows.loop import Gate, ShardLoop, windowed
from flows.timeouts import ShardTimeouts
from flows.verify import VerifyGate
from synthgen.cluster.deadlines import DeadlinePolicy
from synthgen.config import config_from_dict
from synthgen.cost.budget import Decision
from synthgen.io.store import Store
from tests.helpers import fake_config


class Fut:
    """A future that runs its callbacks when finished (at once if already finished)."""

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._callbacks: list[Callable[[Fut], None]] = []

    def finish(self, value: Any) -> None:
        self._done, self._value = True, value
        for cb in self._callbacks:
            cb(self)

    def add_done_callback(self, fn: Callable[[Fut], None]) -> None:
        self._callbacks.append(fn)
        if self._done:
            fn(self)

    def result(self) -> Any:
        if isinstance(self._value, BaseException):
            raise self._value
        return self._value


class Cluster:
    """Two workers; a shard attempt finishes at once (costing `cost`) unless it hangs."""

    def __init__(self, cost: float = 0.25, hang: set[str] | None = None) -> None:
        self.cost = cost
        self.hang = set(hang or ())
        self.workers = ["w1", "w2"]
        self.submitted: list[tuple[str, str, int]] = []  # (shard, worker, attempt)
        self.ledger: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.priorities: list[int] = []
        self.checks: list[tuple[str, str, list[str]]] = []  # (shard, generator, verifiers)
        self.speculative: list[tuple[str, str]] = []  # (shard, worker) of backup copies
        self.wall = {"w1": 1.0, "w2": 1.0}  # an attempt's wall seconds by worker

    def submit(
        self, sid: str, avoid: set[str] | None, priority: int, speculative: bool = False
    ) -> Fut:
        allowed = [w for w in self.workers if w not in (avoid or set())]
        worker = allowed[len(self.submitted) % len(allowed)]
        if speculative:
            self.speculative.append((sid, worker))
        self.attempts[sid] += 1
        attempt = self.attempts[sid]
        self.submitted.append((sid, worker, attempt))
        self.priorities.append(priority)
        fut = Fut()
        if sid in self.hang:
            self.hang.discard(sid)  # hangs once: its re-run finishes
            return fut
        row = {"shard_id": sid, "attempt": attempt, "cost_usd": self.cost, "status": "succeeded"}
        self.ledger.append(row)
        fut.finish(
            {
                "shard_id": sid,
                "status": "done",
                "attempt": attempt,
                "cost_usd": self.cost,
                "worker": worker,
                "engine_seconds": 1.0,
                "wall_seconds": self.wall.get(worker, 1.0),
                "completion_tokens": 10,
                "speculative": speculative,
            }
        )
        return fut

    def rows(self, sid: str | None) -> list[dict[str, Any]]:
        return [r for r in self.ledger if sid is None or r["shard_id"] == sid]

    def check(self, fail_on: str | None = None, cost: float = 0.0) -> Callable[..., Fut]:
        def submit_check(res: dict[str, Any], verifiers: list[str]) -> Fut:
            self.checks.append((res["shard_id"], res["worker"], verifiers))
            bad = res["worker"] == fail_on and res["attempt"] == 1
            fut = Fut()
            fut.finish(
                {
                    "shard_id": res["shard_id"],
                    "attempt": res["attempt"],
                    "generator": res["worker"],
                    "verifier": verifiers[0],
                    "status": "fail" if bad else "pass",
                    "reasons": ["cheat"] if bad else [],
                    "cost_usd": cost,
                }
            )
            return fut

        return submit_check


class Watch:
    """AttemptWatch stand-in: the given shards' first attempts are overdue at the first poll."""

    stage = "generate"

    def __init__(self, overdue: set[str], sim: Cluster | None = None) -> None:
        self.pending = set(overdue)
        self.polls = 0
        self.polled: list[list[str] | None] = []  # the running shards each poll was given
        self.sim = sim

    def worker(self, sid: str) -> str:
        """The worker of the shard's latest attempt (as its start marker would say)."""
        ran = [w for s, w, _ in self.sim.submitted if s == sid] if self.sim else []
        return ran[-1] if ran else ""

    def timeout(self, sid: str) -> float:
        return 5.0

    def elapsed(self, sid: str) -> float:
        return 0.0

    def poll(self, shards: list[str] | None = None) -> None:
        self.polls += 1
        self.polled.append(shards)

    def overdue(self, sid: str) -> int | None:
        if sid in self.pending:
            self.pending.discard(sid)
            return 1
        return None


SHARDS = [f"shard-{i:05d}" for i in range(10)]


def _cfg(tmp_path, **kw: Any) -> Any:
    return config_from_dict(fake_config(str(tmp_path / "out"), **kw))


def _budget(tmp_path, sim: Cluster, cap: float | None, slots: int = 2) -> BudgetWatch:
    cfg = _cfg(tmp_path, budget__max_cost_usd=cap)
    return BudgetWatch(cfg, slots, ledger_rows=sim.rows)


def _verify(tmp_path, sim: Cluster, fail_on: str | None, cost: float = 0.0) -> VerifyGate:
    cfg = _cfg(tmp_path, verify__enabled=True, verify__exclude_flagged_workers=False)
    cfg_dict = cfg.model_dump(mode="json")
    return VerifyGate(
        cfg, cfg_dict, sim.check(fail_on, cost), lambda: sim.workers, Store(cfg.output)
    )


def _timeouts(
    tmp_path, watch: Watch, retries: int = 1, sim: Cluster | None = None, **kw: Any
) -> ShardTimeouts:
    cfg = _cfg(tmp_path, cluster__shard_timeout_s=5, cluster__task_retries=retries, **kw)
    return ShardTimeouts(
        cfg,
        Store(cfg.output),
        poll_s=0.01,
        watch=watch,  # type: ignore[arg-type]
        workers=(lambda: sim.workers) if sim is not None else None,
    )


def test_without_gates_every_shard_runs_in_plan_order_priorities() -> None:
    sim = Cluster()
    out = ShardLoop(SHARDS, sim.submit, [Gate()]).run()
    assert [s for s, _, _ in sim.submitted] == SHARDS
    assert sim.priorities == sorted(sim.priorities, reverse=True)  # plan order first
    assert [r["shard_id"] for r in out.results] == SHARDS and not out.partial


def test_budget_alone_stops_at_cap_and_reports_the_rest(tmp_path) -> None:
    sim = Cluster(cost=0.25)
    budget = _budget(tmp_path, sim, 1.0)
    out = ShardLoop(SHARDS, sim.submit, [budget]).run()
    # first wave of 2 unmeasured; then each start needs spent + (running+1) * 0.25 <= 1.0
    assert len(sim.submitted) == 4
    assert budget.gate.spent_usd == pytest.approx(1.0)
    assert out.not_started == SHARDS[4:]
    assert isinstance(out.stopped_by, Decision) and not out.stopped_by.allowed


def test_timeout_alone_resubmits_the_hung_shard_and_ignores_its_first_attempt(tmp_path) -> None:
    sim = Cluster(hang={"shard-00003"})
    watch = Watch({"shard-00003"})
    stopped: list[str] = []
    loop = ShardLoop(SHARDS, sim.submit, [_timeouts(tmp_path, watch)], stop_losers=stopped.append)
    out = loop.run()
    assert [a for s, _, a in sim.submitted if s == "shard-00003"] == [1, 2]
    assert out.resubmitted == {"shard-00003": 1} and watch.polls >= 1
    # each poll looks for the running shards' attempts, the hung one among them
    assert all(p is not None and set(p) <= set(SHARDS) for p in watch.polled)
    assert any("shard-00003" in p for p in watch.polled if p)
    assert sorted(r["shard_id"] for r in out.results) == SHARDS and not out.failures
    assert stopped == ["shard-00003"]  # the abandoned attempt is told to stop, no other


def test_timeout_without_reruns_left_fails_the_shard(tmp_path) -> None:
    sim = Cluster(hang={"shard-00001"})
    out = ShardLoop(SHARDS, sim.submit, [_timeouts(tmp_path, Watch({"shard-00001"}), 0)]).run()
    assert len(out.failures) == 1 and "shard-00001" in out.failures[0]
    assert "cluster.shard_timeout_s=5s" in out.failures[0]
    assert "shard-00001" not in {r["shard_id"] for r in out.results}


def test_verify_alone_checks_elsewhere_and_regenerates_away_from_the_cheat(tmp_path) -> None:
    sim = Cluster()
    verify = _verify(tmp_path, sim, fail_on="w1")
    ShardLoop(SHARDS[:4], sim.submit, [verify]).run()
    vrun = verify.finish([])
    assert all(gen not in verifiers for _, gen, verifiers in sim.checks)
    assert vrun.flagged.keys() == {"w1"}
    regenerated = [(s, w) for s, w, a in sim.submitted if a == 2]
    assert regenerated and all(w == "w2" for _, w in regenerated)
    assert sorted(r["shard_id"] for r in vrun.results) == SHARDS[:4]
    assert all(r["worker"] == "w2" for r in vrun.results)


def test_verify_budget_and_timeout_together(tmp_path) -> None:
    sim = Cluster(cost=0.25, hang={"shard-00000"})
    budget = _budget(tmp_path, sim, 2.0, slots=2)
    verify = _verify(tmp_path, sim, fail_on="w1", cost=0.05)
    timeouts = _timeouts(tmp_path, Watch({"shard-00000"}))
    loop = ShardLoop(SHARDS, sim.submit, [budget, timeouts, verify])
    out = loop.run()
    vrun = verify.finish(out.failures)
    # timeout: the hung first attempt was abandoned and the shard ran again
    assert out.resubmitted == {"shard-00000": 1}
    assert ("shard-00000", 1) in {(s, a) for s, _, a in sim.submitted}
    # verification: every accepted shard was checked on another worker; w1's were redone
    assert vrun.flagged.keys() == {"w1"} and vrun.quarantined
    assert all(r["worker"] == "w2" or r["status"] == "skipped" for r in vrun.results)
    assert all(gen not in verifiers for _, gen, verifiers in sim.checks)
    # budget: check costs and regenerations counted; submission stopped before the cap
    generated = sum(r["cost_usd"] for r in sim.ledger)
    assert budget.gate.spent_usd == pytest.approx(generated + 0.05 * len(sim.checks))
    assert isinstance(out.stopped_by, Decision) and out.not_started
    assert budget.gate.spent_usd <= 2.0 + 2 * budget.gate.per_shard_usd
    assert set(out.not_started).isdisjoint({r["shard_id"] for r in vrun.results})


def test_a_withdrawn_check_regenerates_the_shard_without_flagging_its_worker(tmp_path) -> None:
    sim = Cluster()
    verify = _verify(tmp_path, sim, fail_on=None)
    base = verify.submit_check

    def check(res: dict[str, Any], verifiers: list[str]) -> Fut:
        fut = base(res, verifiers)
        if res["shard_id"] == "shard-00001" and res["attempt"] == 1:
            fut._value = {**fut._value, "status": "withdrawn", "reasons": ["sha256 differs"]}
        return fut

    verify.submit_check = check
    ShardLoop(SHARDS[:3], sim.submit, [verify]).run()
    vrun = verify.finish([])
    assert [a for s, _, a in sim.submitted if s == "shard-00001"] == [1, 2]
    assert vrun.flagged == {} and not vrun.failures
    assert sorted(r["shard_id"] for r in vrun.results) == SHARDS[:3]


def test_a_forged_check_answer_flags_the_verifier_and_checks_the_unit_elsewhere(tmp_path) -> None:
    """Untrusted workers: a verifier whose answer is malformed (`ForgedScores`) is flagged,
    gets no more units, and every unit it was asked to check is checked by another worker."""
    from synthgen.verify.wire import ForgedScores

    sim = Cluster()
    sim.workers = ["w1", "w2", "w3"]
    verify = _verify(tmp_path, sim, fail_on=None)
    base = verify.submit_check
    started_before_flag: list[int] = []

    def check(res: dict[str, Any], verifiers: list[str]) -> Fut:
        fut = base(res, verifiers)
        if verifiers[0] == "w1":  # w1 answers every check with a malformed payload
            started_before_flag.append(len(sim.submitted))
            fut._value = ForgedScores(res["shard_id"], "2 scores for 3 requests", "w1")
        return fut

    verify.submit_check = check
    out = ShardLoop(SHARDS[:6], sim.submit, [verify]).run()
    vrun = verify.finish([])
    asked_w1 = {s for s, _, v in sim.checks if v[0] == "w1"}
    assert asked_w1 and set(vrun.flagged) == {"w1"} and set(out.forgers) == {"w1"}
    assert all("forged verification result" in r for r in vrun.flagged["w1"])
    # every unit w1 was asked to check was checked again by another worker, and passed
    for sid in asked_w1:
        later = [v for s, _, v in sim.checks if s == sid][1:]
        assert later and "w1" not in later[-1]
    assert {c["verifier"] for c in vrun.checks} <= {"w2", "w3"}
    assert sorted(r["shard_id"] for r in vrun.results) == SHARDS[:6] and not vrun.skipped
    # no unit was started on w1 once it was flagged
    assert "w1" not in {w for _, w, _ in sim.submitted[started_before_flag[0] :]}


def test_a_worker_that_forged_a_result_is_not_asked_to_check(tmp_path) -> None:
    from flows.task_runner import ForgedResult

    sim = Cluster()
    sim.workers = ["w1", "w2", "w3"]
    verify = _verify(tmp_path, sim, fail_on=None)

    def submit(sid: str, avoid: set[str] | None, priority: int, speculative: bool = False) -> Fut:
        fut = sim.submit(sid, avoid, priority, speculative)
        if sim.submitted[-1][1] == "w1":  # w1 sends back a pickle for every unit
            fut._value = ForgedResult("not a plain result", "w1")
        return fut

    out = ShardLoop(SHARDS[:6], submit, [verify]).run()
    vrun = verify.finish([])
    assert set(out.forgers) == {"w1"}
    assert sim.submitted[0][1] == "w1"  # its forged result is the loop's first event
    assert sim.checks and all("w1" not in verifiers for _, _, verifiers in sim.checks)
    assert sorted(r["shard_id"] for r in vrun.results) == SHARDS[:6]


def test_the_loop_runs_again_for_requeued_shards_with_the_same_gates(tmp_path) -> None:
    # what generate_flow does with shards withdrawn by dedup or publish
    sim = Cluster(cost=0.25)
    budget = _budget(tmp_path, sim, 100.0)
    loop = ShardLoop(SHARDS[:4], sim.submit, [budget])
    first = loop.run()
    assert len(first.results) == 4
    loop.requeue("shard-00002")
    again = loop.run()
    assert again is first and len(again.results) == 5  # one LoopResult, results accumulate
    assert [a for s, _, a in sim.submitted if s == "shard-00002"] == [1, 2]
    assert budget.gate.spent_usd == pytest.approx(1.25)


def test_verify_holds_a_units_next_stage_until_it_passed_and_redoes_it_after_a_cheat(
    tmp_path,
) -> None:
    """Two stages: `b:S` starts only after `a:S` passed its check; a cheating `b:S` (w1) is
    regenerated on w2, and the final stage's accepted units all come from w2."""
    from synthgen.stages.units import all_units, next_unit

    cfg = _cfg(
        tmp_path,
        verify__enabled=True,
        verify__exclude_flagged_workers=False,
        stages=[{"name": "a", "prompt": "{{ prompt }}"}, {"name": "b", "prompt": "{{ a }}"}],
    )
    sim = Cluster()
    events: list[tuple[str, str]] = []
    submit_check = sim.check(fail_on=None)

    def check(res: dict[str, Any], verifiers: list[str]) -> Fut:
        events.append(("check", res["shard_id"]))
        if res["shard_id"].startswith("b:") and res["worker"] == "w1" and res["attempt"] == 1:
            fut = Fut()
            fut.finish(
                {
                    "shard_id": res["shard_id"],
                    "attempt": 1,
                    "generator": "w1",
                    "verifier": verifiers[0],
                    "status": "fail",
                    "reasons": ["cheat"],
                }
            )
            return fut
        return submit_check(res, verifiers)

    def submit(sid: str, avoid: set[str] | None, priority: int) -> Fut:
        events.append(("start", sid))
        return sim.submit(sid, avoid, priority)

    verify = VerifyGate(
        cfg, cfg.model_dump(mode="json"), check, lambda: sim.workers, Store(cfg.output)
    )
    shards = SHARDS[:4]
    loop = ShardLoop(
        [f"a:{s}" for s in shards],
        submit,
        [verify],
        successor=lambda key: next_unit(cfg, key),
        order=all_units(cfg, shards),
    )
    out = loop.run()
    vrun = verify.finish(out.failures)
    assert not vrun.failures
    for s in shards:  # b:S started only after a:S was checked (and passed)
        assert events.index(("check", f"a:{s}")) < events.index(("start", f"b:{s}"))
    cheated = [q["shard_id"] for q in vrun.quarantined]
    assert cheated and all(u.startswith("b:") for u in cheated)
    redone = [(s, w, a) for s, w, a in sim.submitted if s in cheated and a == 2]
    assert len(redone) == len(cheated) and all(w == "w2" for _, w, _ in redone)
    finals = {r["shard_id"]: r for r in vrun.results if r["shard_id"].startswith("b:")}
    assert sorted(finals) == [f"b:{s}" for s in shards]
    assert all(finals[u]["worker"] == "w2" for u in cheated)


def test_a_worker_that_misses_two_deadlines_is_flagged_and_avoided(tmp_path) -> None:
    # round robin puts shards 0 and 2 on w1, where both hang: two missed deadlines
    sim = Cluster(hang={"shard-00000", "shard-00002"})
    watch = Watch({"shard-00000", "shard-00002"}, sim)
    timeouts = _timeouts(tmp_path, watch, retries=2, sim=sim)
    assert timeouts.window == 4  # a few shards per worker in flight: a flag applies soon
    out = ShardLoop(SHARDS, sim.submit, [timeouts]).run()
    assert sorted(r["shard_id"] for r in out.results) == SHARDS and not out.failures
    assert out.resubmitted == {"shard-00000": 1, "shard-00002": 1}
    # each late shard ran again on the other worker; w1 is flagged for the rest of the run
    assert [w for s, w, a in sim.submitted if a == 2] == ["w2", "w2"]
    late = timeouts.summary()
    assert late["flagged_workers"] == ["w1"] and len(late["missed"]["w1"]) == 2
    assert "shard-00002 attempt 1 ran past cluster.shard_timeout_s=5s" in late["flag_reasons"]["w1"]
    assert timeouts.avoid("shard-00009") == {"w1"}


def test_the_last_unflagged_worker_is_never_flagged(tmp_path) -> None:
    sim = Cluster(hang={"shard-00000", "shard-00001"})
    sim.workers = ["w1"]
    watch = Watch({"shard-00000", "shard-00001"}, sim)
    timeouts = _timeouts(tmp_path, watch, retries=1, sim=sim)
    out = ShardLoop(SHARDS[:3], sim.submit, [timeouts]).run()
    assert sorted(r["shard_id"] for r in out.results) == SHARDS[:3]
    # late twice, but nowhere else to run: it keeps running shards, re-runs included
    assert timeouts.summary()["flagged_workers"] == []
    assert [w for s, w, a in sim.submitted if a == 2] == ["w1", "w1"]


def test_the_first_of_two_copies_to_return_is_the_result_and_the_other_is_stopped() -> None:
    hold: dict[str, Fut] = {}
    stopped: list[str] = []

    def submit(sid: str, avoid: set[str] | None, priority: int, speculative: bool = False):
        fut = Fut()
        hold["backup" if speculative else "first"] = fut
        return fut

    class Backup(Gate):
        tick_s = 0.01

        def on_tick(self) -> None:
            if "backup" not in hold:
                assert self.loop.speculate("shard-00000", {"w1"})
                assert not self.loop.speculate("shard-00000", {"w1"})  # one backup a shard
                hold["backup"].finish({"shard_id": "shard-00000", "status": "done", "n": 2})

    loop = ShardLoop(["shard-00000"], submit, [Backup()], stop_losers=stopped.append)
    out = loop.run()
    assert [r["n"] for r in out.results] == [2]  # the backup's result
    assert out.speculated == {"shard-00000": "backup"} and stopped == ["shard-00000"]
    hold["first"].finish({"shard_id": "shard-00000", "status": "superseded", "n": 1})
    assert len(out.results) == 1  # the loser's late result is ignored


def test_a_straggler_on_a_slow_worker_gets_a_backup_copy_on_an_idle_fast_one(tmp_path) -> None:
    sim = Cluster(hang={"shard-00001"})  # round robin: shard 1 runs on w2 and never returns
    sim.wall = {"w1": 1.0, "w2": 3.0}  # w2 is 3x slower
    cfg = _cfg(tmp_path, cluster__speculation=True, cluster__speculation_max_fraction=0.1)
    policy = DeadlinePolicy(cfg, {sid: 5 for sid in SHARDS[:6]})
    gate = ShardTimeouts(
        cfg,
        Store(cfg.output),
        poll_s=0.01,
        watch=Watch(set(), sim),  # type: ignore[arg-type]
        policy=policy,
        workers=lambda: sim.workers,
    )
    out = ShardLoop(SHARDS[:6], sim.submit, [gate]).run()
    assert sorted(r["shard_id"] for r in out.results) == SHARDS[:6]
    # once every shard had started: w2's shard copied to w1 (3 s left there vs 1 s on w1)
    assert sim.speculative == [("shard-00001", "w1")]
    assert out.speculated == {"shard-00001": "backup"}
    late = gate.summary()
    assert late["speculative_copies"] == {"shard-00001": {"slow": "w2", "copy": "w1"}}
    assert late["speculation_won"] == ["shard-00001"]


def test_speculation_is_capped_and_off_by_default_for_cpu_engines(tmp_path) -> None:
    sim = Cluster(hang={"shard-00001", "shard-00003"})
    sim.wall = {"w1": 1.0, "w2": 3.0}
    cfg = _cfg(tmp_path, cluster__speculation=True, cluster__speculation_max_fraction=0.1)
    gate = ShardTimeouts(
        cfg,
        Store(cfg.output),
        poll_s=0.01,
        watch=Watch(set(), sim),  # type: ignore[arg-type]
        policy=DeadlinePolicy(cfg, {sid: 5 for sid in SHARDS}),
        workers=lambda: sim.workers,
    )
    assert gate.max_copies == 1  # 10 % of 10 shards
    sim.hang.discard("shard-00003")
    ShardLoop(SHARDS, sim.submit, [gate]).run()
    assert len(sim.speculative) == 1
    off = ShardTimeouts(_cfg(tmp_path), Store(cfg.output), workers=lambda: sim.workers)
    assert not off.speculation  # the fake engine: off unless set


def test_a_shard_queued_behind_a_busy_worker_is_copied_to_an_idle_one(
    tmp_path, monkeypatch
) -> None:
    import flows.timeouts

    monkeypatch.setattr(flows.timeouts, "WAITING_S", 0.0)
    sim = Cluster(hang={"shard-00001"})  # submitted to w2, never starts there

    class Queued(Watch):
        def worker(self, sid: str) -> str:
            return "" if sid == "shard-00001" else super().worker(sid)  # no start marker

        def elapsed(self, sid: str) -> float | None:  # type: ignore[override]
            return None if sid == "shard-00001" else 0.0

    cfg = _cfg(tmp_path, cluster__speculation=True)
    gate = ShardTimeouts(
        cfg,
        Store(cfg.output),
        poll_s=0.01,
        watch=Queued(set(), sim),  # type: ignore[arg-type]
        policy=DeadlinePolicy(cfg, {sid: 5 for sid in SHARDS[:4]}),
        workers=lambda: sim.workers,
    )
    out = ShardLoop(SHARDS[:4], sim.submit, [gate]).run()
    assert sorted(r["shard_id"] for r in out.results) == SHARDS[:4]
    assert sim.speculative == [("shard-00001", "w1")]  # both look idle; equally fast: the first
    assert gate.summary()["speculative_copies"] == {
        "shard-00001": {"slow": "(queued)", "copy": "w1"}
    }


def test_windowed_submits_in_order_with_at_most_window_outstanding() -> None:
    submitted: list[int] = []
    outstanding = 0
    most = 0

    def submit(item: int) -> str:
        nonlocal outstanding, most
        submitted.append(item)
        outstanding += 1
        most = max(most, outstanding)
        return f"fut-{item}"

    got = []
    for item, fut in windowed(range(10), submit, 3):
        assert fut == f"fut-{item}"
        # nothing beyond the window was submitted before this item was handed out
        assert len(submitted) <= item + 3
        got.append(item)
        outstanding -= 1
    assert got == list(range(10)) and submitted == list(range(10))
    assert most == 3
    # fewer items than the window: all handed out; a window of 1 is one at a time
    assert [i for i, _ in windowed(range(2), submit, 5)] == [0, 1]
    seen: list[int] = []
    for item, _ in windowed(range(4), lambda i: seen.append(i), 1):
        assert seen[-1] == item
    with pytest.raises(ValueError, match="window must be at least 1"):
        list(windowed(range(3), submit, 0))


def test_a_forged_result_reruns_the_unit_elsewhere_and_flags_its_worker(tmp_path) -> None:
    """A worker that sends back something that is not a plain result (ForgedResult, from
    the task runner on TLS clusters) gets no more units; its units run on the others."""
    from flows.task_runner import ForgedResult

    sim = Cluster()
    real_submit = sim.submit

    def submit(sid: str, avoid: set[str] | None, priority: int, speculative: bool = False):
        fut = real_submit(sid, avoid, priority, speculative)
        _, worker, _ = sim.submitted[-1]
        if worker == "w2":  # w2 is tampered: every result it returns is forged
            fut._value = ForgedResult(f"{sid}: not a plain result", worker="w2")
        return fut

    out = ShardLoop(SHARDS, submit, []).run()
    assert sorted(r["shard_id"] for r in out.results) == SHARDS and not out.failures
    assert all(r["worker"] == "w1" for r in out.results)
    assert set(out.forgers) == {"w2"} and out.forgers["w2"]
    # the forged units ran again, all on w1 (submitted after w2 was flagged)
    reruns = [(s, w) for s, w, a in sim.submitted if a > 1]
    assert sorted(s for s, _ in reruns) == sorted(out.forgers["w2"])
    assert {w for _, w in reruns} == {"w1"}


def test_a_unit_forged_every_time_fails_after_its_reruns(tmp_path) -> None:
    from flows.loop import MAX_FORGED
    from flows.task_runner import ForgedResult

    sim = Cluster()
    real_submit = sim.submit

    def submit(sid: str, avoid: set[str] | None, priority: int, speculative: bool = False):
        fut = real_submit(sid, None, priority, speculative)  # nowhere else to go
        if sid == SHARDS[0]:
            fut._value = ForgedResult("not plain")  # worker unknown: nothing to avoid
        return fut

    out = ShardLoop(SHARDS, submit, []).run()
    assert [a for s, _, a in sim.submitted if s == SHARDS[0]] == list(range(1, MAX_FORGED + 2))
    assert len(out.failures) == 1 and "not plain" in out.failures[0]
    assert out.forgers == {"(unknown worker)": [SHARDS[0]] * (MAX_FORGED + 1)}


def test_a_result_that_could_not_be_fetched_runs_the_unit_again() -> None:
    """`ResultUnreachable` (its worker froze after the unit finished): the unit runs again
    instead of failing the run; the re-run's result is the unit's."""
    from flows.task_runner import ResultUnreachable

    sim = Cluster()
    lost = {"shard-00001"}

    def submit(sid: str, avoid: set[str] | None, priority: int, speculative: bool = False):
        fut = sim.submit(sid, avoid, priority, speculative)
        if sid in lost:
            lost.discard(sid)
            fut._value = ResultUnreachable("generate-shard-00001: not fetched within 30 s", "w2")
        return fut

    out = ShardLoop(SHARDS[:4], submit, []).run()
    assert not out.failures and not out.forgers
    assert sorted(r["shard_id"] for r in out.results) == SHARDS[:4]
    assert [a for s, _, a in sim.submitted if s == "shard-00001"] == [1, 2]

    always = ShardLoop(["shard-00002"], lambda *a, **k: _unreachable_fut(), []).run()
    assert len(always.failures) == 1 and "not fetched" in always.failures[0]


def _unreachable_fut():
    from flows.task_runner import ResultUnreachable

    fut = Fut()
    fut.finish(ResultUnreachable("generate-shard-00002: not fetched within 30 s", "w1"))
    return fut
