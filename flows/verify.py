"""Generation with spot checks (issue 8): verify each shard on another worker as it commits.

Wiring only; the checks live in `synthgen.verify`. Generation tasks are fed to the cluster
through a window (a few per worker) so that restrictions decided during the run (exclude a
flagged worker) apply to the shards not yet started. When a shard commits, a verify task
with a higher priority is submitted restricted to the *other* workers
(`dask.annotate(workers=..., allow_other_workers=False)`), so it runs alongside
generation. A failed shard has already been quarantined by the check; the flow flags its
worker and resubmits the shard restricted to workers that are not flagged.

`VerifyGate` is one gate of the flow's generate loop (flows/loop.py), so budget and shard
timeout hold while verifying: a regeneration is admitted by the budget like any shard.

A multi-stage run's units (`STAGE:SHARD`) are checked the same way, each against its
stage's baseline (`synthgen.verify.baseline`), and a unit's next stage starts once the
unit passed its check (the gate `holds` it until then), so no stage reads unverified text.
When a unit is quarantined after its next stages ran (its worker flagged later, a re-check
failed, or a resumed run checks what an earlier session committed), those later units of
the shard are retracted and generated again from the regenerated unit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import distributed

from flows.grants import CommittedFuture, Holders
from flows.loop import Gate
from flows.task_runner import current_runner, submit_unit
from flows.units import Opaque, Retries, score_unit, verify_unit
from synthgen.cluster.client import workers_info
from synthgen.config import RunConfig
from synthgen.io.checked import ShardWithdrawn, read_marker
from synthgen.io.layout import RunLayout, split_key, unit_key
from synthgen.io.store import Store
from synthgen.stages.units import committed_units, stage_names, upstream
from synthgen.verify.check import (
    VerifyResult,
    VerifyTask,
    distrust_shard,
    finish_check,
    prepare_check,
    retract_shard,
    verify_path,
)
from synthgen.verify.wire import ForgedScores

MAX_FORGED_CHECKS = 3  # forged answers to a unit's checks before it is left unverified
VERIFY_PRIORITY = 10**9  # above generation (plan-order priorities): checks start first
CHECK_RETRIES = Retries(1, (1.0,))  # a check that errored runs once more on its worker


@dataclass
class VerifyRun:
    """What the verifying loop hands back to the flow."""

    results: list[dict[str, Any]] = field(default_factory=list)  # accepted generations
    failures: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    flagged: dict[str, list[str]] = field(default_factory=dict)  # worker -> reasons
    skipped: list[str] = field(default_factory=list)  # shards left unverified (and why)
    warnings: list[str] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)  # later stages of quarantined units

    def summary(self, generate_engine_seconds: float) -> dict[str, Any]:
        verify_seconds = sum(c.get("verify_seconds", 0.0) for c in self.checks)
        statuses: dict[str, int] = {}
        for c in self.checks:
            statuses[c["status"]] = statuses.get(c["status"], 0) + 1
        return {
            "checks": len(self.checks),
            "statuses": statuses,
            "quarantined": [
                {k: q.get(k) for k in ("shard_id", "attempt", "generator", "status", "reasons")}
                for q in self.quarantined
            ],
            "flagged_workers": sorted(self.flagged),
            "flag_reasons": self.flagged,
            "unverified": self.skipped,
            "retracted": self.retracted,
            "warnings": self.warnings,
            "verify_seconds": verify_seconds,
            "verify_cost_usd": sum(c.get("cost_usd", 0.0) for c in self.checks),
            "generate_engine_seconds": generate_engine_seconds,
            "verify_fraction": verify_seconds / generate_engine_seconds
            if generate_engine_seconds
            else 0.0,
        }


def runner_client() -> distributed.Client:
    """The Dask client of the flow's task runner (the one that submits our tasks)."""
    return current_runner().client


def cluster_workers(
    client: distributed.Client, resources: dict[str, float] | None = None
) -> list[str]:
    """Worker addresses, only those advertising `resources` when given (a restriction to a
    worker without them would leave the task waiting forever)."""
    info = workers_info(client)
    return sorted(
        addr
        for addr, w in info.items()
        if not resources or all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
    )


def restrict(workers: list[str] | None, priority: int = 0) -> Any:
    kwargs: dict[str, Any] = {}
    if workers is not None:
        kwargs.update(workers=list(workers), allow_other_workers=False)
    if priority:
        kwargs["priority"] = priority
    return dask.annotate(**kwargs) if kwargs else contextlib.nullcontext()


class VerifyGate(Gate):
    """Verification as a gate of the generate loop (flows/loop.py).

    `on_result`: a committed shard gets a check task on another worker (tracked by the loop,
    heard back in `on_check`). A failed check (the shard is already quarantined by it) flags
    the generator; the shard is requeued and `avoid` keeps it, and every new submission,
    away from flagged workers. `window` keeps a few generations per worker in flight, so
    these restrictions apply to shards not yet started.
    """

    def __init__(
        self,
        cfg: RunConfig,
        config: dict[str, Any],
        submit_check: Callable[[dict[str, Any], list[str]], Any],
        workers: Callable[[], list[str]],
        store: Store | None = None,
        workers_for: Callable[[str], list[str]] | None = None,
    ) -> None:
        """`workers()`: every worker that may run units; `workers_for(unit)`: those that may
        run (and so verify) that unit (its stage's resources; default `workers()`)."""
        self.cfg = cfg
        self.stages = stage_names(cfg)
        self.vcfg = cfg.verify
        self.config = config
        self.submit_check = submit_check  # (shard result, allowed verifiers) -> future
        self.workers = workers
        self.workers_for = workers_for or (lambda unit: workers())
        self.waiting: set[str] = set()  # committed units whose next stage awaits their check
        self.released: set[str] = set()  # committed units whose next stage was let go
        self.store = store or Store(cfg.output)
        self.run_id = cfg.run_id or ""
        self.out = VerifyRun()
        self.regens: dict[str, int] = {}
        self.bad: dict[str, set[str]] = {}  # shard -> workers that produced a bad copy
        self.accepted: dict[str, dict[str, Any]] = {}
        self.passed_by: dict[str, list[str]] = {}  # verifier -> shards it passed
        self.forged_checks: dict[str, int] = {}  # unit -> its checks answered forged
        self.window = max(2, 2 * len(workers()))

    # -- submission --------------------------------------------------------------------
    def avoid(self, shard_id: str) -> set[str]:
        avoid = set(self.bad.get(shard_id, set()))
        if self.vcfg.exclude_flagged_workers or avoid:
            avoid |= set(self.out.flagged)
        if avoid and not [w for w in self.workers_for(shard_id) if w not in avoid]:
            raise LookupError(
                f"no worker left to generate it (excluded: {', '.join(sorted(avoid))})"
            )
        return avoid

    def start(self) -> None:
        # units committed by an earlier invocation but never checked (a resumed run)
        todo = set(self.loop.shard_ids)
        for sid, marker in sorted(committed_units(self.store, self.cfg).items()):
            res = {**marker["result"], "shard_id": sid}
            if sid not in todo and not self._checked(sid, res):
                self._verify(res)

    def holds(self, shard_id: str) -> bool:
        # awaiting its check, or not accepted at all (distrusted, waiting for its input)
        return shard_id in self.waiting or shard_id not in self.accepted

    # -- stages ------------------------------------------------------------------------
    def _later(self, sid: str) -> list[str]:
        """The units of the same shard in the stages after `sid`'s."""
        stage, shard = split_key(sid)
        if stage not in self.stages:
            return []
        return [unit_key(s, shard) for s in self.stages[self.stages.index(stage) + 1 :]]

    def _committed(self, sid: str) -> bool:
        stage, shard = split_key(sid)
        return self.store.exists(RunLayout(self.store, self.run_id).stage(stage).commit(shard))

    def _input_ready(self, sid: str) -> bool:
        """Whether the unit's upstream unit is committed and not awaiting its check."""
        stage, shard = split_key(sid)
        up = upstream(self.cfg, stage) if stage in self.stages else None
        if up is None:
            return True
        unit = unit_key(up, shard)
        if unit in self.waiting:
            return False
        return unit in self.accepted or self._committed(unit)

    def _requeue(self, sid: str) -> None:
        """Run the unit again; a later stage whose input is being regenerated waits for
        it (the upstream unit's `advance` queues it)."""
        if self._input_ready(sid):
            self.loop.requeue(sid)

    def _release(self, sid: str, attempt: int) -> None:
        """The unit's current commit passed (or cannot be checked): its next stage may
        start."""
        res = self.accepted.get(sid)
        if sid in self.waiting and res is not None and int(res["attempt"]) == attempt:
            self.waiting.discard(sid)
            self.released.add(sid)
            self.loop.advance(sid)

    def _retract_later(self, sid: str, why: str) -> None:
        """`sid` left the run: the later stages of its shard read it; they go too."""
        self.released.discard(sid)
        for unit in self._later(sid):
            self.loop.cancel(unit)
            self.accepted.pop(unit, None)
            self.waiting.discard(unit)
            self.released.discard(unit)
            if self._committed(unit):
                res = retract_shard(VerifyTask(self.config, unit, 0), f"{sid} {why}").as_dict()
                if res["status"] == "retracted":
                    print(f"unit {unit} retracted: it read {sid}, which {why}")
                    self.out.retracted.append(unit)

    def _check_committed(self, sid: str, seen: int) -> None:
        """An accepted unit whose check found another attempt committed (a superseded
        attempt reported the winner under its own number): check the committed one."""
        if sid not in self.accepted:
            return
        stage, shard = split_key(sid)
        try:
            marker = read_marker(self.store, self.run_id, shard, stage)
        except ShardWithdrawn:
            marker = None
        if marker is None:
            return
        res = {**marker["result"], "shard_id": sid}
        if int(res["attempt"]) != seen and not self._checked(sid, res):
            self.accepted[sid] = res
            self._verify(res)

    def _checked(self, sid: str, res: dict[str, Any]) -> bool:
        return self.store.exists(verify_path(self.store, self.run_id, sid, int(res["attempt"])))

    def _verify(self, res: dict[str, Any]) -> None:
        sid, generator = res["shard_id"], res["worker"]
        # no check on a flagged worker, nor on one that sent back a forged result
        bad = set(self.out.flagged) | set(self.loop.out.forgers)
        others = [w for w in self.workers_for(sid) if w != generator and w not in bad]
        if not others:
            if self.vcfg.allow_same_worker and generator not in bad:
                others = [generator]
                msg = f"{sid}: only one worker; verified on the worker that generated it"
            else:
                msg = (
                    f"{sid}: not verified: no other worker than {generator} "
                    "(set verify.allow_same_worker to check on the same worker)"
                )
                self.out.skipped.append(sid)
            if msg not in self.out.warnings:
                print(f"warning: {msg}")
            self.out.warnings.append(msg)
            if sid in self.out.skipped:
                self.waiting.discard(sid)  # unverified: its next stage goes on (warned)
                return
        if sid not in self.released:  # a re-check of a released unit holds nothing back
            self.waiting.add(sid)
        self.loop.track(sid, self.submit_check(res, others))

    # -- events ------------------------------------------------------------------------
    def on_result(self, shard_id: str, result: dict[str, Any]) -> None:
        if result["status"] == "skipped":  # committed by an earlier invocation
            self.accepted[shard_id] = result
            if not self._checked(shard_id, result):
                self._verify(result)
        elif result["worker"] in self.out.flagged and self.vcfg.exclude_flagged_workers:
            self._distrust(shard_id, result)
        else:
            self.accepted[shard_id] = result
            self._verify(result)

    def on_failure(self, shard_id: str, error: str) -> None:
        self.accepted.pop(shard_id, None)

    def on_check(self, shard_id: str, future: Any) -> None:
        try:
            check = future.result()
        except Exception as exc:
            if getattr(exc, "retry_elsewhere", False):  # a verifier's answer not used
                self._forged_check(shard_id, exc)
                return
            msg = f"{shard_id}: verification errored ({type(exc).__name__}: {exc}); left unverified"
            print(f"warning: {msg}")
            self.out.warnings.append(msg)
            self.out.skipped.append(shard_id)
            res = self.accepted.get(shard_id)
            if res is not None:
                self._release(shard_id, int(res["attempt"]))
            return
        self.out.checks.append(check)
        status = check["status"]
        print(
            f"verify {shard_id} (attempt {check['attempt']}, by {check['generator']}) on "
            f"{check['verifier']}: {status}"
            + (f" z={check['z']:.1f}" if check.get("z") is not None else "")
        )
        if status == "stale":  # another attempt (or none) is committed: check that one
            self._check_committed(shard_id, int(check["attempt"]))
            return
        if status == "withdrawn":  # its file no longer matches its commit: not the worker's
            self.accepted.pop(shard_id, None)
            self.waiting.discard(shard_id)
            print(f"shard {shard_id}: {'; '.join(check.get('reasons') or [])}")
            self._retract_later(shard_id, "was withdrawn")
            self.regens[shard_id] = self.regens.get(shard_id, 0) + 1
            if self.regens[shard_id] > self.vcfg.max_regenerations:
                self.out.failures.append(f"{shard_id}: withdrawn {self.regens[shard_id]} times")
            else:
                self._requeue(shard_id)
        elif status == "fail":
            self.out.quarantined.append(check)
            self.accepted.pop(shard_id, None)
            self._regenerate(shard_id, check["generator"], "; ".join(check.get("reasons") or []))
        elif check["verifier"] in self.out.flagged and shard_id in self.accepted:
            print(f"shard {shard_id}: re-checking (its verifier was flagged)")
            self._verify(self.accepted[shard_id])  # a flagged worker's "pass" is worth nothing
        else:
            self.passed_by.setdefault(check["verifier"], []).append(shard_id)
            self._release(shard_id, int(check["attempt"]))

    def _distrust(self, sid: str, res: dict[str, Any]) -> None:
        check = distrust_shard(
            VerifyTask(self.config, sid, int(res["attempt"])),
            f"generated by flagged worker {res['worker']}",
        ).as_dict()
        self.out.checks.append(check)
        self.accepted.pop(sid, None)
        self.waiting.discard(sid)
        if check["status"] == "distrusted":
            self.out.quarantined.append(check)
            self._regenerate(sid, res["worker"], "worker flagged")

    def _flag(self, bad_worker: str, reason: str) -> None:
        """Flag a worker: the checks it passed are run again elsewhere and, with
        `exclude_flagged_workers`, its own units leave the dataset."""
        newly = bad_worker not in self.out.flagged
        self.out.flagged.setdefault(bad_worker, []).append(reason)
        if newly:
            for other in self.passed_by.pop(bad_worker, []):
                if other in self.accepted and self.accepted[other]["worker"] != bad_worker:
                    print(f"shard {other}: re-checking (its verifier was flagged)")
                    self._verify(self.accepted[other])
        if newly and self.vcfg.exclude_flagged_workers:
            # its other shards, even those that passed a check, leave the dataset too
            for other, res in list(self.accepted.items()):
                if res["worker"] == bad_worker and res["status"] != "skipped":
                    self._distrust(other, res)

    def _forged_check(self, sid: str, exc: Exception) -> None:
        """A verifier answered with something that is not a well-formed score of what it was
        sent (`ForgedScores`, or a pickle on a TLS cluster: `ForgedResult`): the check is
        void, the verifier is flagged (as a forger too: no more units for it) and the unit
        is checked on another worker, at most MAX_FORGED_CHECKS times (then left
        unverified, warned)."""
        worker = getattr(exc, "worker", None) or "(unknown worker)"
        print(f"{exc}; verifier {worker} FLAGGED, the check runs elsewhere")
        self.loop.out.forgers.setdefault(worker, []).append(sid)
        self._flag(worker, f"{sid}: forged verification result")
        n = self.forged_checks[sid] = self.forged_checks.get(sid, 0) + 1
        res = self.accepted.get(sid)
        if res is None:
            return
        if n > MAX_FORGED_CHECKS:
            msg = f"{sid}: left unverified: {n} forged verification results"
            print(f"warning: {msg}")
            self.out.warnings.append(msg)
            self.out.skipped.append(sid)
            self._release(sid, int(res["attempt"]))
            return
        self._verify(res)

    def _regenerate(self, sid: str, bad_worker: str, reason: str) -> None:
        self.waiting.discard(sid)
        self._retract_later(sid, "was quarantined")
        self._flag(bad_worker, f"{sid}: {reason}")
        self.regens[sid] = self.regens.get(sid, 0) + 1
        if self.regens[sid] > self.vcfg.max_regenerations:
            self.out.failures.append(f"{sid}: failed verification {self.regens[sid]} times")
            return
        print(f"shard {sid} quarantined ({reason}); regenerating away from {bad_worker}")
        self.bad.setdefault(sid, set()).add(bad_worker)
        self._requeue(sid)

    def finish(self, failures: list[str]) -> VerifyRun:
        """The run's verification outcome (accepted results, flagged workers) on record."""
        self.out.results = list(self.accepted.values())
        self.out.failures = failures + self.out.failures
        self.store.write_json(
            RunLayout(self.store, self.run_id).stage().flagged,
            {"flagged_workers": self.out.flagged, "quarantined": self.out.quarantined},
        )
        return self.out


def submit_check_task(
    config: Opaque, gpu_annotation: Callable[[str], contextlib.AbstractContextManager[Any]]
) -> Callable[[dict[str, Any], list[str]], Any]:
    """Submits a check of a unit's result (`verify_unit`, a plain Dask task) on the given
    workers, ahead of generation; `gpu_annotation(unit)`: the resources of the unit's stage
    (scoring loads its engine)."""
    runner = current_runner()

    def submit(res: dict[str, Any], workers: list[str]) -> Any:
        sid = res["shard_id"]
        with gpu_annotation(sid), restrict(workers, VERIFY_PRIORITY):
            args = (config, sid, int(res["attempt"]))
            return submit_unit(runner, verify_unit, args, f"verify-{sid}", CHECK_RETRIES)

    return submit


class Settled:
    """A check decided on the flow's side, without a worker (stale, withdrawn, retracted,
    or its preparation failed): a future that is already done."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value = value
        self._error = error

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


def submit_granted_check(
    config: dict[str, Any],
    store: Store,
    gpu_annotation: Callable[[str], contextlib.AbstractContextManager[Any]],
    pool: concurrent.futures.Executor,
    holders: Holders,
) -> Callable[[dict[str, Any], list[str]], Any]:
    """Checks with untrusted workers (`cluster.untrusted_workers`): the flow prepares each
    check (`prepare_check`: it reads the committed unit with its own credentials), the
    verifier only scores the plain-data sample it is sent (`score_unit`: no config,
    no storage path, no credential), and the flow judges its answer, prices it from the
    run config (the lease of the identity the scheduler knows the verifier by, `holders`,
    else the price table) over at most the time the flow saw the task out, writes the
    ledger row and record and quarantines (`finish_check`, in `pool` as the answer
    arrives). A malformed answer raises `ForgedScores` naming the verifier (the worker that
    held the result, else the one asked, else the one the answer names if it was asked)."""
    runner = current_runner()

    def submit(res: dict[str, Any], workers: list[str]) -> Any:
        sid = res["shard_id"]
        try:
            prep = prepare_check(VerifyTask(config, sid, int(res["attempt"])), store)
        except Exception as exc:  # heard as an errored check: left unverified, warned
            return Settled(error=exc)
        if isinstance(prep, VerifyResult):
            return Settled(prep.as_dict())
        with gpu_annotation(sid), restrict(workers, VERIFY_PRIORITY):
            args = (Opaque(prep.payload()),)
            fut = submit_unit(runner, score_unit, args, f"verify-{sid}", CHECK_RETRIES)

        def finish(answer: Any, holder: str | None, held_s: float) -> dict[str, Any]:
            claimed = answer.get("worker") if isinstance(answer, dict) else None
            verifier = holder or (workers[0] if len(workers) == 1 else None)
            if verifier is None and claimed in workers:
                verifier = claimed
            if verifier is None:
                raise ForgedScores(sid, f"the answer names worker {claimed!r}, not one asked")
            who = holders.identity(verifier)
            return finish_check(prep, answer, verifier, who, held_s).as_dict()

        return CommittedFuture(fut, finish, pool)

    return submit
