"""A worker's engine never waits for a shard's I/O (issue 16): while one shard attempt writes
and commits, the next one's `generate` runs; engine calls still take turns (one at a time per
worker process) and the ledger never charges the same worker-seconds to two attempts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from synthgen.config import RunConfig
from synthgen.cost.ledger import Ledger
from synthgen.engines.cache import set_engine_wrapper
from synthgen.engines.turns import charged_until, engine_turn
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests.helpers import fake_config

WAIT_S = 60.0  # generous: the events below come within milliseconds when the code is right


class _Recording:
    """The wrapped engine, recording its calls: which shard, how many at once."""

    def __init__(self, inner: Any, shard_of: dict[str, str], generating: dict[str, Any]) -> None:
        self.inner = inner
        self.info = inner.info
        self.shard_of = shard_of
        self.generating = generating
        self.active = 0
        self.most_active = 0
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def generate(self, requests: Any, sampling: Any, guided: Any = None) -> Any:
        shard = self.shard_of[requests[0].prompt_id]
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.calls.append(shard)
        self.generating[shard].set()
        try:
            return self.inner.generate(requests, sampling)
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def recording() -> Any:
    holder: dict[str, Any] = {}

    def wrap(engine: Any) -> Any:
        holder["engine"] = _Recording(engine, holder["shard_of"], holder["generating"])
        return holder["engine"]

    yield holder, wrap
    set_engine_wrapper(None)


def test_the_next_shard_generates_while_the_previous_one_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording: Any
) -> None:
    holder, wrap = recording
    cfg = RunConfig.model_validate(
        fake_config(str(tmp_path / "out"), shards__size=4, model__fake__seconds_per_shard=0.05)
    )
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    a, b = plan.shards[0], plan.shards[1]
    holder["shard_of"] = {p: s.shard_id for s in (a, b) for p in s.prompt_ids}
    holder["generating"] = {a.shard_id: threading.Event(), b.shard_id: threading.Event()}
    set_engine_wrapper(wrap)

    a_file = RunLayout(store, cfg.run_id or "").stage().shard(a.shard_id)
    seen: dict[str, bool] = {}
    write_table = Store.write_table

    def slow_write(self: Store, path: str, table: Any) -> Any:
        if path == a_file:  # shard a's I/O lasts until shard b's generate has started
            seen["b generating while a writes"] = holder["generating"][b.shard_id].wait(WAIT_S)
        return write_table(self, path, table)

    monkeypatch.setattr(Store, "write_table", slow_write)
    config = cfg.model_dump(mode="json")
    results: dict[str, Any] = {}

    def run(shard_id: str) -> None:
        results[shard_id] = run_shard(ShardTask(config, shard_id))

    first = threading.Thread(target=run, args=(a.shard_id,))
    first.start()
    assert holder["generating"][a.shard_id].wait(WAIT_S)
    second = threading.Thread(target=run, args=(b.shard_id,))  # a worker's second slot
    second.start()
    first.join(WAIT_S)
    second.join(WAIT_S)

    assert seen == {"b generating while a writes": True}
    assert {s: r.status for s, r in results.items()} == {a.shard_id: "done", b.shard_id: "done"}
    engine = holder["engine"]
    assert engine.calls == [a.shard_id, b.shard_id] and engine.most_active == 1

    # a's charged window ends where b's generate began: the ledger's windows never overlap
    ledger = Ledger(RunLayout(store, cfg.run_id or ""))
    (ra,) = ledger.rows(a.shard_id).to_pylist()
    (rb,) = ledger.rows(b.shard_id).to_pylist()
    assert ra["finished_at"] <= rb["started_at"] < rb["finished_at"]
    assert ra["engine_seconds"] <= ra["wall_seconds"] and rb["engine_seconds"] <= rb["wall_seconds"]


def test_engine_calls_take_turns_and_charged_windows_do_not_overlap() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()
    turns = []
    start = threading.Barrier(4)

    def call() -> None:
        nonlocal inside, most
        start.wait(WAIT_S)
        with engine_turn() as turn:
            with lock:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.01)
            with lock:
                inside -= 1
        turns.append(turn)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert most == 1 and len(turns) == 4
    turns.sort(key=lambda t: t.seq)
    assert [t.seq for t in turns] == list(range(turns[0].seq, turns[0].seq + 4))
    # an attempt still writing long after its turn is charged only until the next turn began
    late = turns[-1].started + 100.0
    for t, nxt in zip(turns, turns[1:], strict=False):
        assert charged_until(t, late) == nxt.started
    assert charged_until(turns[-1], late) == late  # no later turn: charged until it ends
    assert charged_until(None, 5.0) == 5.0


def _stuck_holder(key: str, attempt: int) -> tuple[threading.Thread, threading.Event]:
    """A call holding the engine turn like a stuck GPU call, until released (or WAIT_S)."""
    held, release = threading.Event(), threading.Event()

    def stuck() -> None:
        with engine_turn(key, attempt):
            held.set()
            release.wait(WAIT_S)

    thread = threading.Thread(target=stuck)
    thread.start()
    assert held.wait(WAIT_S)
    return thread, release


def test_a_stuck_call_does_not_stop_its_worker() -> None:
    # the flow re-ran the shard (attempt 2) on the worker whose attempt 1 is stuck
    thread, release = _stuck_holder("generate/shard-00000", 1)
    with engine_turn("generate/shard-00000", 2) as turn:
        rerun_ran_while_stuck = not release.is_set()
    assert rerun_ran_while_stuck and turn.attempt == 2
    release.set()
    thread.join(WAIT_S)
    # past the shard timeout, any other unit's call stops waiting for the holder too
    thread, release = _stuck_holder("generate/shard-00001", 1)
    with engine_turn("generate/shard-00002", 1, abandon_after=0.1):
        other_ran_while_stuck = not release.is_set()
    assert other_ran_while_stuck
    release.set()
    thread.join(WAIT_S)
    with engine_turn("generate/shard-00003", 1):  # and turns go on as before
        pass
