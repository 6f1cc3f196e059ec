"""The one generate loop: shards in plan order through a submission window, with gates.

`ShardLoop` owns the queue of shards (plan order, regenerations in front), the running
attempts (one current future per shard; a done-callback per future puts it on one queue,
so waiting is O(1) per event however many futures are pending), and a tick when a gate
needs time. What may run, what a result means and what happens when time passes is decided
by gates, which compose: every gate is asked, every gate hears every event.

  admit(shard, running)   -> None (allowed) or a refusal: submission stops (budget)
  avoid(shard)            -> workers the shard must not run on (verification)
  on_result(shard, res)   a shard's current attempt returned (budget, verification)
  on_failure(shard, err)  a shard failed for good (budget)
  on_check(shard, check)  a check future a gate submitted through `track` returned
  on_tick()               every `tick_s` while anything runs (shard deadlines)
  holds(unit)             -> True: the unit's successor waits for the gate's `advance`
                          (verification: a stage's output is read once it passed its check)

Gates act on the loop through `requeue` (run the shard again, admitted like any other),
`resubmit` (a new attempt now, the running one abandoned), `speculate` (a backup attempt
beside the running one: whichever returns first is the shard's result), `fail`, `track`,
`advance` (queue a committed unit's successor) and `cancel` (forget a unit: queued or
running). The loop knows nothing of Prefect: futures need `add_done_callback(fn)` and
`result()`.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_FORGED = 3  # re-runs of one unit after forged results before it fails

# (shard, workers to avoid, priority[, speculative=True for a backup attempt])
Submit = Callable[..., Any]


def windowed(
    items: Iterable[Any], submit: Callable[[Any], Any], window: int
) -> Iterator[tuple[Any, Any]]:
    """`(item, submit(item))` in the order of `items`, with at most `window` submitted and
    not yet handed out: the next is submitted once the caller takes one. For a phase whose
    tasks are all known up front (the publish's one task per shard): submitting them all at
    once kept every task's spec in the scheduler and every state event queued at the Prefect
    server together (10,000 shards: 9 GiB in the flow's process, task-run events dropped)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    pending: deque[tuple[Any, Any]] = deque()
    for item in items:
        pending.append((item, submit(item)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


class Gate:
    """A no-op gate; subclasses override the hooks they need."""

    tick_s: float | None = None  # on_tick every tick_s seconds while shards run
    window: int | None = None  # most generation attempts in flight (None: no limit)

    def bind(self, loop: ShardLoop) -> None:
        self.loop = loop

    def start(self) -> None:
        """Before the first submission (e.g. verify shards an earlier session committed)."""

    def admit(self, shard_id: str, running: int) -> Any | None:
        return None

    def avoid(self, shard_id: str) -> set[str]:
        return set()

    def on_result(self, shard_id: str, result: dict[str, Any]) -> None:
        pass

    def on_failure(self, shard_id: str, error: str) -> None:
        pass

    def on_check(self, shard_id: str, future: Any) -> None:
        pass

    def on_tick(self) -> None:
        pass

    def holds(self, shard_id: str) -> bool:
        return False


@dataclass
class LoopResult:
    results: list[dict[str, Any]] = field(default_factory=list)  # every attempt's result
    failures: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    stopped_by: Any | None = None  # the refusal that ended submission, if any
    resubmitted: dict[str, int] = field(default_factory=dict)  # shard -> abandoned attempts
    speculated: dict[str, str] = field(default_factory=dict)  # shard -> "backup"/"first" won
    # worker -> units whose result it sent back forged (not plain data): no more units for it
    forgers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.not_started)


class ShardLoop:
    def __init__(
        self,
        shard_ids: list[str],
        submit: Submit,
        gates: list[Gate],
        on_result: Callable[[dict[str, Any]], None] | None = None,
        successor: Callable[[str], str | None] | None = None,
        order: list[str] | None = None,
        stop_losers: Callable[[str], None] | None = None,
    ) -> None:
        """`shard_ids`: the units to run now. `successor(unit)`: the unit that reads a
        finished unit's output (multi-stage runs: the same shard's next stage), queued when
        the unit commits. `order`: every unit the loop may see, most urgent last (default
        `shard_ids` in plan order, first most urgent). `stop_losers(unit)`: called when
        a unit's result is taken while another attempt of it may still be running (the losing
        copy of a speculated shard, the abandoned attempt of a re-run one), to stop it."""
        self._stop_losers = stop_losers
        self._forged_runs: dict[str, int] = {}  # unit -> re-runs after a forged result
        self._unreachable_runs: dict[str, int] = {}  # unit -> re-runs after a lost result
        self.backups: dict[str, Any] = {}  # shard -> its backup attempt's future
        self.shard_ids = list(shard_ids)
        self.successor = successor
        ranked = order if order is not None else list(reversed(shard_ids))
        self.order = {sid: i for i, sid in enumerate(ranked)}
        self._submit = submit
        self.gates = gates
        self._report = on_result
        self.queue: list[str] = list(shard_ids)
        self.current: dict[str, Any] = {}  # shard -> its current attempt's future
        self.shard_of: dict[Any, str] = {}  # every attempt future -> its shard
        self.checks: dict[Any, str] = {}  # check future -> shard
        self.regens: set[str] = set()
        self.out = LoopResult()
        self._events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        windows = [g.window for g in gates if g.window is not None]
        self.window = min(windows) if windows else None
        ticks = [g.tick_s for g in gates if g.tick_s is not None]
        self.tick_s = min(ticks) if ticks else None
        for gate in gates:
            gate.bind(self)

    # -- what gates call ---------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.current)

    def requeue(self, shard_id: str) -> None:
        """Run the shard again (in front of the queue), admitted like a new shard."""
        self.regens.add(shard_id)
        self.queue.insert(0, shard_id)

    def resubmit(self, shard_id: str) -> None:
        """A new attempt of a running shard now; the running one's result will be ignored."""
        self.out.resubmitted[shard_id] = self.out.resubmitted.get(shard_id, 0) + 1
        self._start(shard_id)

    def speculate(self, shard_id: str, avoid: set[str]) -> bool:
        """A backup attempt of a running shard, kept away from `avoid` (besides what the
        gates avoid); the first of the two to return is the shard's result, the other is
        ignored (and stopped by `stop_losers`, if given). False when the shard is not running or has a
        backup."""
        if shard_id not in self.current or shard_id in self.backups:
            return False
        avoid = avoid | {w for w in self.out.forgers if not w.startswith("(")}
        for gate in self.gates:
            avoid = avoid | gate.avoid(shard_id)
        try:
            fut = self._submit(shard_id, avoid or None, self._priority(shard_id), speculative=True)
        except LookupError:
            return False
        self.backups[shard_id] = fut
        self.shard_of[fut] = shard_id
        fut.add_done_callback(self._events.put)
        return True

    def _forged(self, shard_id: str, fut: Any, exc: Exception) -> bool:
        """A worker sent back something that is not a plain result (`ForgedResult`): the
        worker gets no more units this run and the unit runs again elsewhere (True), up to
        MAX_FORGED times per unit (then False: it fails like any other)."""
        worker = getattr(exc, "worker", None) or "(unknown worker)"
        self.out.forgers.setdefault(worker, []).append(shard_id)
        n = self._forged_runs.get(shard_id, 0)
        if n >= MAX_FORGED:
            return False
        self._forged_runs[shard_id] = n + 1
        print(f"unit {shard_id}: {exc}; worker {worker} FLAGGED, the unit runs elsewhere")
        backup = self.backups.pop(shard_id, None)
        if backup is fut:
            return True  # its first attempt still runs
        if backup is not None and self.current.get(shard_id) is fut:
            self.current[shard_id] = backup  # the backup copy still runs: it is the attempt
            return True
        self.current.pop(shard_id, None)
        self.requeue(shard_id)
        return True

    def _rerun_unreachable(self, shard_id: str, exc: Exception) -> bool:
        """A finished attempt whose result could not be fetched (its worker froze after it
        finished): the unit runs again, up to MAX_FORGED times (its re-run finds it
        committed if it got that far). False when no re-runs are left."""
        n = self._unreachable_runs.get(shard_id, 0)
        if n >= MAX_FORGED:
            return False
        self._unreachable_runs[shard_id] = n + 1
        print(f"unit {shard_id}: {exc}; the unit runs again")
        self.current.pop(shard_id, None)
        self.requeue(shard_id)
        return True

    def fail(self, shard_id: str, error: str) -> None:
        """The shard failed for good (its running attempt, if any, is abandoned)."""
        self.current.pop(shard_id, None)
        self.backups.pop(shard_id, None)
        self.out.failures.append(error)
        for gate in self.gates:
            gate.on_failure(shard_id, error)

    def advance(self, shard_id: str) -> None:
        """Queue the unit that reads `shard_id`'s output (multi-stage runs), if any."""
        nxt = self.successor(shard_id) if self.successor is not None else None
        if nxt is not None and nxt not in self.current and nxt not in self.queue:
            self.queue.insert(0, nxt)

    def cancel(self, shard_id: str) -> None:
        """Forget the unit: out of the queue, its running attempt (if any) abandoned."""
        self.current.pop(shard_id, None)
        self.queue = [s for s in self.queue if s != shard_id]

    def track(self, shard_id: str, future: Any) -> None:
        """A check future (submitted by a gate): its gates' on_check hears it when done."""
        self.checks[future] = shard_id
        future.add_done_callback(self._events.put)

    # -- the loop ----------------------------------------------------------------------
    def _priority(self, shard_id: str) -> int:
        # plan order first (guided sizing puts big shards early); a later stage of a shard
        # before new shards; regenerations in front
        n = len(self.order)
        return n + 1 if shard_id in self.regens else self.order.get(shard_id, 0)

    def _start(self, shard_id: str) -> None:
        avoid: set[str] = set(w for w in self.out.forgers if not w.startswith("("))
        try:
            for gate in self.gates:
                avoid |= gate.avoid(shard_id)
            fut = self._submit(shard_id, avoid or None, self._priority(shard_id))
        except LookupError as exc:  # no worker left that may run it
            self.fail(shard_id, f"{shard_id}: {exc}")
            return
        self.current[shard_id] = fut
        self.shard_of[fut] = shard_id
        fut.add_done_callback(self._events.put)

    def _fill(self) -> None:
        while (
            self.queue
            and self.out.stopped_by is None
            and (self.window is None or self.running < self.window)
        ):
            shard_id = self.queue[0]
            for gate in self.gates:
                refusal = gate.admit(shard_id, self.running)
                if refusal is not None:
                    self.out.stopped_by = refusal
                    return
            self.queue.pop(0)
            self._start(shard_id)

    def _next_event(self, deadline: float | None) -> Any | None:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _finished(self, fut: Any) -> None:
        if fut in self.checks:
            shard_id = self.checks.pop(fut)
            for gate in self.gates:
                gate.on_check(shard_id, fut)
            return
        shard_id = self.shard_of.pop(fut, None)
        if shard_id is None:
            return
        backup = self.backups.get(shard_id)
        first = self.current.get(shard_id)
        if fut is not first and fut is not backup:
            return  # an abandoned attempt (timed out, or its shard failed): ignored
        other = first if fut is backup else backup
        try:
            res = fut.result()
        except Exception as exc:  # the task exhausted its retries
            if getattr(exc, "retry_elsewhere", False) and self._forged(shard_id, fut, exc):
                return
            if other is not None:  # the other attempt may still succeed
                if fut is first:
                    self.current[shard_id] = other
                self.backups.pop(shard_id, None)
                return
            if getattr(exc, "unreachable", False) and self._rerun_unreachable(shard_id, exc):
                return
            print(f"shard failed after retries: {type(exc).__name__}: {exc}")
            self.fail(shard_id, f"{exc}")
            return
        del self.current[shard_id]
        if backup is not None:
            self.backups.pop(shard_id, None)
            self.out.speculated[shard_id] = "backup" if fut is backup else "first"
        if self._stop_losers is not None and (
            backup is not None or shard_id in self.out.resubmitted
        ):
            try:
                self._stop_losers(shard_id)
            except Exception as exc:  # its result is ignored either way
                print(f"shard {shard_id}: could not stop the losing attempt: {exc}")
        self.out.results.append(res)
        if self._report is not None:
            self._report(res)
        for gate in self.gates:
            gate.on_result(shard_id, res)
        committed = res.get("status") in ("done", "skipped", "superseded")
        taken_back = shard_id in self.current or shard_id in self.queue  # e.g. verification
        held = any(gate.holds(shard_id) for gate in self.gates)
        if committed and not taken_back and not held:
            self.advance(shard_id)  # the unit committed: its next stage may start

    def run(self) -> LoopResult:
        for gate in self.gates:
            gate.start()
        self._fill()
        deadline = None if self.tick_s is None else time.monotonic() + self.tick_s
        while self.current or self.checks or (self.queue and self.out.stopped_by is None):
            fut = self._next_event(deadline)
            if fut is not None:
                self._finished(fut)
            # a tick is due even while events keep coming (a hung shard among busy ones)
            if deadline is not None and time.monotonic() >= deadline:
                for gate in self.gates:
                    gate.on_tick()
                deadline = time.monotonic() + (self.tick_s or 0.0)
            self._fill()
        self.out.not_started = list(self.queue)
        return self.out
