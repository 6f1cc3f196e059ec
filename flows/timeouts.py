"""Shard deadlines, enforced by the flow: frozen hosts, hung calls and partitions.

Prefect's task `timeout_seconds` cannot interrupt a blocking call (a stuck engine, a hung
socket) in a Dask worker thread, and a frozen or partitioned host keeps its connections open:
Dask waits for it until the scheduler's worker TTL. So the flow watches the attempts
(`synthgen.io.attempts.AttemptWatch`): once a shard's current attempt has run past its
deadline (`synthgen.cluster.deadlines`: `cluster.shard_timeout_s`, or derived from the
shard's expected time on that worker), the shard is submitted again, away from that worker
(at most `cluster.task_retries` times), and the abandoned attempt's result, should it ever
come, is ignored (it commits nothing: `run_shard` reports it `superseded`; the ledger prices
it as lost).

A worker that misses `cluster.flag_after_misses` deadlines is flagged: no new shard is
submitted to it for the rest of the run (the verification gate's mechanism, `avoid`), and the
summary names it. A worker that missed a deadline and has not been heard from by the
scheduler for `SILENT_S` (frozen, partitioned) is removed from the scheduler at once
(`remove_worker`), as its TTL would much later: Dask re-routes the shards queued on it.
The loop can end before that (the other workers finished the rest): run-wide dedup and
the publish then run on the workers that are neither flagged nor suspect
(`finishing_workers`), and the silent check goes on in a thread while they run
(`watching`), so no end-of-run task waits for a frozen host's TTL.

Stragglers (`cluster.speculation`): once no shard is left to submit, an idle worker runs a
copy of a shard queued behind a busy worker (submitted `WAITING_S` ago and not started:
free if the copy commits first, the original then finds the shard committed), else a backup
copy of the running shard whose expected remaining time on its worker is longest, when that
is more than `SPECULATION_GAIN` x the copy's expected time on the idle worker (MapReduce's
backup tasks); the first to return is the shard's result (the first commit
wins, as always), the loser is ignored (one not yet started finds the shard committed when
it starts: skipped, no attempt; one running is stopped: `ShardLoop(stop_losers=...)`,
`synthgen.engines.abort`) and its cost is on the ledger with the error `speculation: ...`. At most `cluster.speculation_max_fraction` of the run's shards get one.

This is a gate of the generate loop (flows/loop.py): `on_tick` polls the attempt markers and
asks the loop to `resubmit` an overdue shard (with a fixed `shard_timeout_s`, to `fail` it
once no re-run is left; a derived deadline never fails a shard: the last attempt is waited
for); the loop ignores the abandoned future's result.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flows.loop import Gate
from synthgen.cluster.client import workers_info
from synthgen.cluster.deadlines import SILENT_S, DeadlinePolicy
from synthgen.config import RunConfig
from synthgen.io.attempts import AttemptWatch
from synthgen.io.layout import split_key, unit_key
from synthgen.io.store import Store
from synthgen.stages.units import stage_names


def remove_silent_workers(client: Any, suspects: list[str], silent_s: float) -> list[str]:
    """Remove from the Dask cluster those of `suspects` its scheduler has not heard from for
    `silent_s` (measured against the freshest worker's heartbeat: the scheduler's own clock,
    no skew); returns them, and suspects that already left. Nothing is removed unless a
    worker that is not a suspect was heard from within `silent_s` (a starved machine delays
    every heartbeat; the last workers are never removed)."""
    info = workers_info(client)
    if not info:
        return []
    newest = max(float(w.get("last_seen", 0.0)) for w in info.values())
    gone = [a for a in suspects if a not in info]
    healthy = [
        a
        for a, w in info.items()
        if a not in suspects and newest - float(w.get("last_seen", 0.0)) < silent_s
    ]
    if not healthy:
        return gone
    for address in suspects:
        w = info.get(address)
        if w is not None and newest - float(w.get("last_seen", newest)) >= silent_s:
            client.sync(
                client.scheduler.unregister,
                address=address,
                stimulus_id=f"synthgen-silent-worker-{time.time()}",
            )
            gone.append(address)
    return gone


SPECULATION_GAIN = 1.2  # a backup copy must be expected to finish this much sooner
WAITING_S = 2.0  # a shard submitted this long ago and not started is queued behind a worker


def speculation_enabled(cfg: RunConfig) -> bool:
    """`cluster.speculation`, unset: on for GPU engines (where a slow card is the tail)."""
    if cfg.cluster.speculation is not None:
        return cfg.cluster.speculation
    return cfg.model.needs_gpu or cfg.model.device == "cuda"


class ShardTimeouts(Gate):
    def __init__(
        self,
        cfg: RunConfig,
        store: Store,
        poll_s: float | None = None,
        watch: AttemptWatch | None = None,
        policy: DeadlinePolicy | None = None,
        workers: Callable[[], list[str]] | None = None,
        remove_silent: Callable[[list[str], float], list[str]] | None = None,
    ) -> None:
        """`workers()`: the cluster's workers that may run a shard (None: unknown, no
        window); `remove_silent(suspects, silent_s)`: removes those not heard from for
        `silent_s` from the cluster, returns them."""
        c = cfg.cluster
        if c.shard_timeout_s is None and not c.deadlines:
            raise ValueError("ShardTimeouts needs cluster.shard_timeout_s or cluster.deadlines")
        self.policy = policy or DeadlinePolicy(cfg, {})
        self.fixed = c.shard_timeout_s
        self.max_reruns = c.task_retries
        self.flag_after = c.flag_after_misses
        self.workers = workers
        self.remove_silent = remove_silent
        self.silent_s = SILENT_S

        def timeout(stage: str) -> float | Callable[[str, str], float]:
            if self.fixed is not None:
                return self.fixed
            return lambda shard, worker: self.policy.deadline_s(unit_key(stage, shard), worker)

        # one watch per generation stage (a unit is one stage's shard)
        self.watches = {
            name: AttemptWatch(store, cfg.run_id or "", timeout(name), stage=name)
            for name in stage_names(cfg)
        }
        if watch is not None:
            self.watches = {watch.stage: watch}
        if poll_s is None:  # a listing of the attempts per tick: ~1/10 of the shortest deadline
            shortest = self.fixed if self.fixed is not None else c.deadline_floor_s
            poll_s = min(5.0, max(0.25, shortest / 10))
        self.tick_s = poll_s
        self.reruns: dict[str, int] = {}
        self.misses: dict[str, list[str]] = {}  # worker -> what it missed
        self.flagged: dict[str, list[str]] = {}  # worker -> why
        self.removed: dict[str, float] = {}  # worker -> when (epoch seconds)
        self.suspects: set[str] = set()  # missed a deadline, not yet removed
        self.away: dict[str, set[str]] = {}  # unit -> workers whose attempt of it was late
        if workers is not None and self.flag_after:
            # a few generations per worker in flight: a flag applies to shards not yet started
            self.window = max(2, 2 * len(workers()))
        self.speculation = speculation_enabled(cfg) and workers is not None
        if self.speculation:  # a straggler is caught early in its attempt, or not worth it
            self.tick_s = min(self.tick_s, 1.0)
        units = max(1, len(self.policy.prompts) * len(stage_names(cfg)))
        self.max_copies = max(1, int(c.speculation_max_fraction * units))
        self.copies: dict[str, tuple[str, str]] = {}  # unit -> (slow worker, copy's worker)
        self.unstarted: dict[str, float] = {}  # unit -> first tick it was seen not started

    # -- submission --------------------------------------------------------------------
    def avoid(self, shard_id: str) -> set[str]:
        avoid = set(self.flagged) | self.away.get(shard_id, set())
        if self.workers is None or not avoid:
            return avoid
        alive = self.workers()
        if not [w for w in alive if w not in avoid]:
            avoid = set(self.flagged)  # no other worker: a late worker may run it again
            if not [w for w in alive if w not in avoid]:
                return set()  # never refuse a shard for lateness alone
        return avoid

    def on_result(self, shard_id: str, result: dict[str, Any]) -> None:
        self.policy.observe(shard_id, result)

    # -- time --------------------------------------------------------------------------
    def _others(self, worker: str) -> list[str]:
        if self.workers is None:
            return ["?"]
        return [w for w in self.workers() if w != worker and w not in self.flagged]

    def _miss(self, worker: str, what: str) -> None:
        if not worker:
            return
        self.misses.setdefault(worker, []).append(what)
        self.suspects.add(worker)
        n = len(self.misses[worker])
        if not self.flag_after or n < self.flag_after or worker in self.flagged:
            return
        if not self._others(worker):
            print(f"worker {worker} missed {n} deadlines; not flagged: no other worker left")
            return
        self.flagged[worker] = list(self.misses[worker])
        print(f"worker {worker} FLAGGED: missed {n} deadlines; no new shards for it this run")

    def _check_silent(self) -> None:
        if not self.suspects or self.remove_silent is None:
            return
        try:
            gone = self.remove_silent(sorted(self.suspects), self.silent_s)
        except Exception as exc:  # the deadlines still hold; Dask's TTL remains
            print(f"warning: could not check workers' heartbeats: {type(exc).__name__}: {exc}")
            return
        for worker in gone:
            self.suspects.discard(worker)
            self.removed[worker] = time.time()
            self.flagged.setdefault(worker, []).extend(
                [*self.misses.get(worker, []), f"no heartbeat for {self.silent_s:g}s: removed"]
            )
            print(
                f"worker {worker} FLAGGED: missed a deadline and silent for {self.silent_s:g}s "
                "(frozen or cut off); removed from the cluster, its queued shards run elsewhere"
            )

    # -- after the loop: run-wide dedup and the publish -----------------------------------
    def finishing_workers(self, workers: list[str]) -> list[str] | None:
        """Of `workers` (the cluster's), those the end-of-run tasks may use: not flagged and
        not suspect (missed a deadline, not yet removed). None: any of them (nothing to
        avoid, or nothing else left: never refuse the run its publish)."""
        avoid = set(self.flagged) | self.suspects
        allowed = [w for w in workers if w not in avoid]
        return allowed if avoid and allowed else None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """The silent-suspect check every tick in a thread while the caller blocks (the run's
        finish: no loop ticks then). A suspect silent for `silent_s` is removed from the
        cluster; Dask runs what it held elsewhere."""
        stop = threading.Event()
        ctx = contextvars.copy_context()  # its lines go to the flow run's log

        def watch() -> None:
            while not stop.wait(self.tick_s):
                ctx.run(self._check_silent)

        thread = threading.Thread(target=watch, name="synthgen-silent-watch", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def on_tick(self) -> None:
        """Re-submit the running shards whose current attempt is overdue."""
        running: dict[str, list[str]] = {}  # stage -> its running shards
        for unit in self.loop.current:
            stage, shard = split_key(unit)
            running.setdefault(stage, []).append(shard)
        for name, watch in self.watches.items():
            watch.poll(running.get(name, []))
        for shard_id in list(self.loop.current):
            stage, shard = split_key(shard_id)
            watch = self.watches.get(stage)
            attempt = watch.overdue(shard) if watch is not None else None
            if attempt is None or watch is None:
                continue
            worker = watch.worker(shard)
            limit = watch.timeout(shard) or 0.0
            what = (
                f"cluster.shard_timeout_s={self.fixed:g}s"
                if self.fixed is not None
                else f"its {limit:.0f}s deadline"
            )
            self._miss(worker, f"{shard_id} attempt {attempt} ran past {what}")
            n = self.reruns.get(shard_id, 0)
            if n >= self.max_reruns:
                if self.fixed is None:  # a derived deadline never fails a shard
                    print(
                        f"shard {shard_id}: attempt {attempt} ran past {what} and no re-runs "
                        f"are left (cluster.task_retries={self.max_reruns}); waiting for it"
                    )
                    continue
                why = (
                    f"shard {shard_id}: attempt {attempt} ran past "
                    f"cluster.shard_timeout_s={self.fixed:g}s and no re-runs are left "
                    f"(cluster.task_retries={self.max_reruns})"
                )
                print(f"{why}: the shard failed (it runs again on the next invocation)")
                self.loop.fail(shard_id, why)
                continue
            self.reruns[shard_id] = n + 1
            if worker:
                self.away.setdefault(shard_id, set()).add(worker)
            on = f" on {worker}" if worker else ""
            print(
                f"shard {shard_id}: attempt {attempt}{on} ran past {what}; abandoning it and "
                f"re-running the shard elsewhere (re-run {n + 1})"
            )
            self.loop.resubmit(shard_id)
        self._check_silent()
        self._speculate()

    def _speculate(self) -> None:
        """Backup copies of stragglers, once every shard has started (see the module doc)."""
        if not self.speculation or self.workers is None or self.loop.queue:
            return
        if len(self.copies) >= self.max_copies:
            return
        running: dict[str, tuple[str, float]] = {}  # unit -> (worker, elapsed)
        waiting: list[str] = []  # submitted a while ago, not started: queued behind a worker
        busy = {self.copies[u][0] for u in self.loop.backups if u in self.copies}
        now = time.monotonic()
        for unit in self.loop.current:
            stage, shard = split_key(unit)
            watch = self.watches.get(stage)
            worker = watch.worker(shard) if watch is not None else ""
            elapsed = watch.elapsed(shard) if watch is not None else None
            if worker:
                busy.add(worker)
            if unit in self.loop.backups:
                continue
            if worker and elapsed is not None:
                running[unit] = (worker, elapsed)
            elif now - self.unstarted.setdefault(unit, now) >= WAITING_S:
                waiting.append(unit)
        for unit in [u for u in self.unstarted if u not in self.loop.current]:
            del self.unstarted[unit]
        idle = [
            w
            for w in self.workers()
            if w not in busy and w not in self.flagged and w not in self.suspects
        ]
        everyone = set(self.workers())
        # a shard queued behind a busy worker first: if the copy commits before it starts,
        # it finds the shard committed and costs nothing
        for unit in waiting:
            if not idle or len(self.copies) >= self.max_copies:
                return
            stage, _ = split_key(unit)
            best = max(idle, key=lambda w: self.policy.tokens_per_s(stage, w) or 0.0)
            if self.loop.speculate(unit, everyone - {best}):
                idle.remove(best)
                self.copies[unit] = ("(queued)", best)
                print(
                    f"shard {unit}: queued behind a busy worker for {WAITING_S:g}s+ while "
                    f"{best} is idle; a copy runs there, first commit wins"
                )
        for unit in sorted(running, key=lambda u: -self._remaining(u, *running[u])):
            if not idle or len(self.copies) >= self.max_copies:
                return
            worker, elapsed = running[unit]
            stage, _ = split_key(unit)
            best = max(idle, key=lambda w: self.policy.tokens_per_s(stage, w) or 0.0)
            remaining = self._remaining(unit, worker, elapsed)
            copy = self.policy.expected_s(unit, best)
            if remaining <= SPECULATION_GAIN * copy:
                return  # sorted: no later unit gains more
            if self.loop.speculate(unit, everyone - {best}):
                idle.remove(best)
                self.copies[unit] = (worker, best)
                print(
                    f"shard {unit}: straggling on {worker} (about {remaining:.0f}s left); "
                    f"a backup copy runs on idle {best} (about {copy:.0f}s), first commit wins"
                )

    def _remaining(self, unit: str, worker: str, elapsed: float) -> float:
        expected = self.policy.expected_s(unit, worker)
        return max(expected - elapsed, 0.0)

    def summary(self) -> dict[str, Any]:
        """Deadline misses and flagged workers, for the run summary."""
        return {
            **self.policy.describe(),
            "reruns": dict(self.reruns),
            "missed": self.misses,
            "flagged_workers": sorted(self.flagged),
            "flag_reasons": self.flagged,
            "removed_workers": sorted(self.removed),
            "speculation": self.speculation,
            "speculative_copies": {u: {"slow": s, "copy": c} for u, (s, c) in self.copies.items()},
            "speculation_won": sorted(
                u for u, won in self.loop.out.speculated.items() if won == "backup"
            )
            if hasattr(self, "loop")
            else [],
        }
