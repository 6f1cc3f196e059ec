"""Prefect flows: plan -> one generate task per shard on the Dask cluster -> publish.

Flows only wire library functions together. `synthgen-run` takes a config path and
`--set`-style overrides (what the CLI, `prefect deployment run` and the UI's custom-run form
pass), validates them, plans, then runs `synthgen-generate` with a DaskTaskRunner chosen from
the config (`cluster.address` set: that scheduler; unset: a LocalCluster). Tasks exchange
shard ids, paths and counts, never the generated text.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import dask
from prefect import flow, get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.futures import as_completed, wait
from prefect.runtime import flow_run

from flows.task_runner import SynthgenTaskRunner
from synthgen.attempts import AttemptWatch
from synthgen.cluster import task_runner_kwargs
from synthgen.config import RunConfig, load_config
from synthgen.lease import RunLease
from synthgen.pipeline import ShardTask, committed_shards, run_shard
from synthgen.plan import write_plan
from synthgen.preflight import run_preflight
from synthgen.publish import publish_shard, write_manifest
from synthgen.redaction import check_overrides, protect, restore_secrets, stash_secrets
from synthgen.storage import Store
from synthgen.summary import RunSummary, per_worker


@task(name="generate-shard", persist_result=False)
def generate_shard(config: dict[str, Any], shard_id: str) -> dict[str, Any]:
    protect(config)  # mask credentials in this worker process's logs too
    return run_shard(ShardTask(config, shard_id)).as_dict()


@task(name="publish-shard", persist_result=False, retries=2, retry_delay_seconds=2)
def publish_shard_task(
    config: dict[str, Any], shard_id: str, drops: list[str] | None = None
) -> dict[str, Any]:
    return publish_shard(config, shard_id, drops)


def _gpu_annotation(cfg: RunConfig) -> contextlib.AbstractContextManager[Any]:
    if cfg.model.needs_gpu:
        return dask.annotate(resources={cfg.cluster.gpu_resource: 1})
    return contextlib.nullcontext()


def _generate_name() -> str:
    params = flow_run.parameters or {}
    cfg = params.get("config") or {}
    return f"generate/{cfg.get('run_id', '?')}/{len(params.get('shard_ids') or [])}-shards"


@flow(
    name="synthgen-generate",
    log_prints=True,
    persist_result=False,
    flow_run_name=_generate_name,
)
def generate_flow(config: dict[str, Any], shard_ids: list[str], total: int) -> dict[str, Any]:
    """Generate the given shards on the cluster, then publish if every shard is committed."""
    config = restore_secrets(config)  # the parameters carry *** placeholders, tasks need keys
    protect(config)
    cfg = RunConfig.model_validate(config)
    # no Prefect timeout_seconds: it cannot interrupt a blocking call in a Dask worker thread;
    # `cluster.shard_timeout_s` is enforced by `_collect` (re-submits overdue shards)
    gen = generate_shard.with_options(
        retries=cfg.cluster.task_retries,
        retry_delay_seconds=cfg.cluster.retry_delay_s,
    )
    started = time.perf_counter()
    futures: dict[str, Any] = {}
    with _gpu_annotation(cfg):
        for i, sid in enumerate(shard_ids):
            # plan order first: with guided sizing the big shards start early, small ones last
            with dask.annotate(priority=len(shard_ids) - i):
                futures[sid] = gen.submit(config, sid)
    done_before = total - len(shard_ids)
    results: list[dict[str, Any]] = []
    tokens = 0
    failures: list[str] = []

    def resubmit(sid: str) -> Any:
        with _gpu_annotation(cfg):
            return gen.submit(config, sid)

    for sid, res, exc in _collect(cfg, futures, resubmit):
        if exc is not None or res is None:  # the task exhausted its retries (or timeouts)
            failures.append(f"{sid}: {exc}")
            print(f"shard {sid} failed after retries: {type(exc).__name__}: {exc}")
            continue
        results.append(res)
        tokens += res["completion_tokens"]
        elapsed = time.perf_counter() - started
        print(
            f"shard {res['shard_id']} done · {done_before + len(results)}/{total} shards · "
            f"{res['completion_tokens']} tokens in {res['engine_seconds']:.1f}s · "
            f"run {tokens / elapsed:.1f} tokens/s"
        )
    gen_seconds = time.perf_counter() - started
    store = Store(cfg.output)
    committed = committed_shards(store, cfg.run_id or "")
    manifest = None
    if len(committed) == total:
        # every shard committed: publish on the cluster (CPU work, any worker)
        pubs = [publish_shard_task.submit(config, sid) for sid in sorted(committed)]
        manifest = write_manifest(cfg, store, [p.result() for p in pubs])
    return {
        "results": results,
        "failures": failures,
        "generate_seconds": gen_seconds,
        "manifest": manifest,
    }


def _collect(
    cfg: RunConfig, futures: dict[str, Any], resubmit: Callable[[str], Any], poll_s: float = 1.0
) -> Iterator[tuple[str, dict[str, Any] | None, BaseException | None]]:
    """Yield (shard_id, result, error) as shards finish. With `cluster.shard_timeout_s`, an
    attempt running longer is abandoned and its shard re-submitted (at most
    `cluster.task_retries` times); a late result of an abandoned attempt is ignored."""
    timeout = cfg.cluster.shard_timeout_s
    if timeout is None:
        by_future = {id(f): sid for sid, f in futures.items()}
        for fut in as_completed(list(futures.values())):
            sid = by_future[id(fut)]
            try:
                yield sid, fut.result(), None
            except Exception as exc:
                yield sid, None, exc
        return
    watch = AttemptWatch(Store(cfg.output), cfg.run_id or "", timeout)
    pending = dict(futures)
    reruns: dict[str, int] = {}
    while pending:
        done = wait(list(pending.values()), timeout=poll_s).done
        for sid, fut in list(pending.items()):
            if fut in done:
                del pending[sid]
                try:
                    yield sid, fut.result(), None
                except Exception as exc:
                    yield sid, None, exc
        watch.poll()
        for sid in list(pending):
            attempt = watch.overdue(sid)
            if attempt is None:
                continue
            if reruns.get(sid, 0) >= cfg.cluster.task_retries:
                del pending[sid]
                yield (
                    sid,
                    None,
                    TimeoutError(
                        f"shard {sid}: attempt {attempt} ran past cluster.shard_timeout_s="
                        f"{timeout:g}s and no re-runs are left (cluster.task_retries="
                        f"{cfg.cluster.task_retries})"
                    ),
                )
                continue
            reruns[sid] = reruns.get(sid, 0) + 1
            print(
                f"shard {sid}: attempt {attempt} ran past cluster.shard_timeout_s={timeout:g}s; "
                f"abandoning it and re-running the shard (re-run {reruns[sid]})"
            )
            pending[sid] = resubmit(sid)


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:  # execute() called outside a flow run (benchmarks)
        return logging.getLogger("synthgen")


def _run_name() -> str:
    params = flow_run.parameters or {}
    try:
        cfg = load_config(params["config"], params.get("overrides"))
        return f"{cfg.name}/{cfg.run_id}"
    except Exception:
        return f"invalid-config/{params.get('config', '?')}"


@flow(name="synthgen-run", log_prints=True, persist_result=False, flow_run_name=_run_name)
def synthgen_run(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the run described by the YAML config at `config` plus overrides."""
    started = time.perf_counter()
    check_overrides(overrides)
    cfg = load_config(config, overrides)
    return execute(cfg, started)


def execute(cfg: RunConfig, started: float | None = None) -> dict[str, Any]:
    started = started or time.perf_counter()
    protect(cfg.model_dump(mode="json"))
    print(run_preflight(cfg).render())  # model, scheduler, credentials, writable: before GPUs
    store = Store(cfg.output)
    with RunLease(store, cfg.run_id or "", ttl_s=cfg.output.lease_ttl_s) as lease:
        return _execute_leased(cfg, store, lease, started)


def _execute_leased(
    cfg: RunConfig, store: Store, lease: RunLease, started: float
) -> dict[str, Any]:
    plan = write_plan(cfg, store)
    run_id = cfg.run_id or ""
    already = committed_shards(store, run_id)
    todo = [s.shard_id for s in plan.shards if s.shard_id not in already]
    print(
        f"run {run_id}: {plan.prompts} prompts in {len(plan.shards)} shards "
        f"({len(already)} already committed, {len(todo)} to generate) -> {store.url()}"
    )
    if plan.rejects:
        print(
            f"{plan.rejects} bad prompt records quarantined: {store.url('runs', run_id, 'rejects.jsonl')}"
        )
    config = stash_secrets(cfg.model_dump(mode="json"))  # flow parameters: no credentials
    runner = SynthgenTaskRunner(**task_runner_kwargs(cfg.cluster))
    gen = generate_flow.with_options(task_runner=runner)(config, todo, len(plan.shards))
    lease.check()
    committed = committed_shards(store, run_id)
    missing = [s.shard_id for s in plan.shards if s.shard_id not in committed]
    status = "complete" if not missing else "failed"
    manifest = gen["manifest"]
    summary = RunSummary.build(
        cfg=cfg,
        store=store,
        status=status,
        shards_total=len(plan.shards),
        generated=gen["results"],
        committed=[m["result"] for m in committed.values()],
        missing=missing,
        generate_seconds=gen["generate_seconds"],
        wall_seconds=time.perf_counter() - started,
        manifest=manifest,
        rejects=plan.rejects,
        workers=per_worker(gen["results"]),
    )
    _logger().info("summary\n%s", summary.render_text())
    if missing:
        raise RuntimeError(
            f"run {run_id}: {len(missing)} of {len(plan.shards)} shards failed "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); committed shards "
            f"are kept: re-run the same command to generate only the missing ones. "
            f"Errors: {'; '.join(gen['failures'][:3])}"
        )
    return summary.as_dict()
