"""Generation with spot checks (issue 8): verify each shard on another worker as it commits.

Wiring only; the checks live in `synthgen.verify`. Generation tasks are fed to the cluster
through a window (a few per worker) so that restrictions decided during the run (exclude a
flagged worker) apply to the shards not yet started. When a shard commits, a verify task
with a higher priority is submitted restricted to the *other* workers
(`dask.annotate(workers=..., allow_other_workers=False)`), so it runs alongside
generation. A failed shard has already been quarantined by the check; the flow flags its
worker and resubmits the shard restricted to workers that are not flagged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import distributed
from prefect import task

from flows.task_runner import Opaque, unwrap
from synthgen.cluster.client import generate_resources
from synthgen.config import RunConfig
from synthgen.io.store import Store
from synthgen.stages.generate import committed_shards
from synthgen.verify.check import VerifyTask, distrust_shard, verify_path, verify_shard

VERIFY_PRIORITY = 10**9  # above generation (plan-order priorities): checks start first


@task(name="verify-shard", persist_result=False, retries=1, retry_delay_seconds=1)
def verify_shard_task(
    config: dict[str, Any] | Opaque, shard_id: str, attempt: int
) -> dict[str, Any]:
    return verify_shard(VerifyTask(unwrap(config), shard_id, attempt)).as_dict()


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
            "warnings": self.warnings,
            "verify_seconds": verify_seconds,
            "verify_cost_usd": sum(c.get("cost_usd", 0.0) for c in self.checks),
            "generate_engine_seconds": generate_engine_seconds,
            "verify_fraction": verify_seconds / generate_engine_seconds
            if generate_engine_seconds
            else 0.0,
        }


def _runner_client() -> distributed.Client:
    """The Dask client of the flow's task runner (the one that submits our tasks)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx is not None else None
    client = getattr(runner, "client", None)
    if client is None:
        raise RuntimeError("verification needs a flow running on a Dask task runner")
    return client


def _workers(client: distributed.Client, resources: dict[str, float] | None = None) -> list[str]:
    """Worker addresses, only those advertising `resources` when given (a restriction to a
    worker without them would leave the task waiting forever)."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(
        addr
        for addr, w in info.items()
        if not resources or all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
    )


def _restrict(workers: list[str] | None, priority: int = 0) -> Any:
    kwargs: dict[str, Any] = {}
    if workers is not None:
        kwargs.update(workers=list(workers), allow_other_workers=False)
    if priority:
        kwargs["priority"] = priority
    return dask.annotate(**kwargs) if kwargs else contextlib.nullcontext()


def generate_verified(
    cfg: RunConfig,
    config: dict[str, Any],
    shard_ids: list[str],
    gen: Any,
    gpu_annotation: Callable[[], contextlib.AbstractContextManager[Any]],
    on_result: Callable[[dict[str, Any]], None],
) -> VerifyRun:
    """Generate `shard_ids` with `gen` (a Prefect task) and verify each commit elsewhere."""
    vcfg = cfg.verify
    task_config = Opaque(config)  # see flows.task_runner.Opaque
    client = _runner_client()
    resources = generate_resources(cfg)  # verify tasks load the same engine
    out = VerifyRun()
    regens: dict[str, int] = {}
    queue = list(shard_ids)
    order = {sid: i for i, sid in enumerate(shard_ids)}
    pending = distributed.as_completed(loop=client.loop)
    meta: dict[str, tuple[str, Any, str]] = {}  # dask key -> (kind, prefect future, shard)
    store = Store(cfg.output)
    run_id = cfg.run_id or ""

    in_flight = 0  # generation tasks submitted and not yet returned

    def excluded() -> set[str]:
        return set(out.flagged) if vcfg.exclude_flagged_workers else set()

    def submit_gen(sid: str, avoid: set[str]) -> bool:
        allowed = None
        if avoid:
            allowed = [w for w in _workers(client, resources) if w not in avoid]
            if not allowed:
                out.failures.append(
                    f"{sid}: no worker left to generate it (excluded: {', '.join(sorted(avoid))})"
                )
                return False
        # plan order first, as without verification; a regeneration goes to the front
        priority = len(shard_ids) - order[sid] if sid not in regens else len(shard_ids) + 1
        with gpu_annotation(), _restrict(allowed, priority):
            fut: Any = gen.submit(task_config, sid)
        meta[fut.wrapped_future.key] = ("gen", fut, sid)
        pending.add(fut.wrapped_future)
        nonlocal in_flight
        in_flight += 1
        return True

    def submit_verify(res: dict[str, Any]) -> None:
        sid, generator = res["shard_id"], res["worker"]
        workers = _workers(client, resources)
        others = [w for w in workers if w != generator and w not in out.flagged]
        if not others:
            if vcfg.allow_same_worker and generator not in out.flagged:
                others = [generator]
                msg = f"{sid}: only one worker; verified on the worker that generated it"
            else:
                msg = (
                    f"{sid}: not verified: no other worker than {generator} "
                    "(set verify.allow_same_worker to check on the same worker)"
                )
                out.skipped.append(sid)
            if msg not in out.warnings:
                print(f"warning: {msg}")
            out.warnings.append(msg)
            if sid in out.skipped:
                return
        with gpu_annotation(), _restrict(others, VERIFY_PRIORITY):  # scoring needs the engine
            fut: Any = verify_shard_task.submit(task_config, sid, int(res["attempt"]))
        meta[fut.wrapped_future.key] = ("verify", fut, sid)
        pending.add(fut.wrapped_future)

    accepted: dict[str, dict[str, Any]] = {}

    def distrust(sid: str, res: dict[str, Any]) -> None:
        check = distrust_shard(
            VerifyTask(config, sid, int(res["attempt"])),
            f"generated by flagged worker {res['worker']}",
        ).as_dict()
        out.checks.append(check)
        accepted.pop(sid, None)
        if check["status"] == "distrusted":
            out.quarantined.append(check)
            regenerate(sid, res["worker"], "worker flagged")

    passed_by: dict[str, list[str]] = {}  # verifier -> shards it passed

    def recheck(sid: str) -> None:
        res = accepted[sid]
        print(f"shard {sid}: re-checking (its verifier was flagged)")
        submit_verify(res)

    def regenerate(sid: str, bad_worker: str, reason: str) -> None:
        newly = bad_worker not in out.flagged
        out.flagged.setdefault(bad_worker, []).append(f"{sid}: {reason}")
        if newly:
            for other in passed_by.pop(bad_worker, []):
                if other in accepted and accepted[other]["worker"] != bad_worker:
                    recheck(other)
        if newly and vcfg.exclude_flagged_workers:
            # its other shards, even those that passed a check, leave the dataset too
            for other, res in list(accepted.items()):
                if res["worker"] == bad_worker and res["status"] != "skipped":
                    distrust(other, res)
        regens[sid] = regens.get(sid, 0) + 1
        if regens[sid] > vcfg.max_regenerations:
            out.failures.append(f"{sid}: failed verification {regens[sid]} times")
            return
        print(f"shard {sid} quarantined ({reason}); regenerating away from {bad_worker}")
        submit_gen(sid, set(out.flagged) | {bad_worker})

    window = max(2, 2 * len(_workers(client, resources)))

    def fill() -> None:
        while queue and in_flight < window:
            submit_gen(queue.pop(0), excluded())

    fill()
    # shards committed by an earlier invocation but never checked (a resumed run)
    for sid, marker in sorted(committed_shards(store, run_id).items()):
        res = marker["result"]
        if sid not in order and not store.exists(
            verify_path(store, run_id, sid, int(res["attempt"]))
        ):
            submit_verify(res)
    for dfut in pending:
        kind, fut, sid = meta.pop(dfut.key)
        if kind == "gen":
            in_flight = max(0, in_flight - 1)
            try:
                res = fut.result()
            except Exception as exc:  # the task exhausted its retries
                out.failures.append(f"{sid}: {exc}")
                print(f"shard failed after retries: {type(exc).__name__}: {exc}")
                fill()
                continue
            on_result(res)
            if res["status"] == "skipped":  # committed by an earlier invocation
                accepted[sid] = res
                if not store.exists(verify_path(store, run_id, sid, int(res["attempt"]))):
                    submit_verify(res)
            elif res["worker"] in out.flagged and vcfg.exclude_flagged_workers:
                distrust(sid, res)
            else:
                accepted[sid] = res
                submit_verify(res)
            fill()
            continue
        try:
            check = fut.result()
        except Exception as exc:
            msg = f"{sid}: verification errored ({type(exc).__name__}: {exc}); left unverified"
            print(f"warning: {msg}")
            out.warnings.append(msg)
            out.skipped.append(sid)
            continue
        out.checks.append(check)
        status = check["status"]
        print(
            f"verify {sid} (attempt {check['attempt']}, by {check['generator']}) on "
            f"{check['verifier']}: {status}"
            + (f" z={check['z']:.1f}" if check.get("z") is not None else "")
        )
        if status == "fail":
            out.quarantined.append(check)
            accepted.pop(sid, None)
            regenerate(sid, check["generator"], "; ".join(check.get("reasons") or []))
        elif check["verifier"] in out.flagged and sid in accepted:
            recheck(sid)  # a flagged worker's "pass" is worth nothing
        else:
            passed_by.setdefault(check["verifier"], []).append(sid)
    out.results = list(accepted.values())
    store.write_json(
        store.run_path(run_id, "verify", "flagged.json"),
        {"flagged_workers": out.flagged, "quarantined": out.quarantined},
    )
    return out
