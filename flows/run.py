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
from typing import Any

import dask
from prefect import flow, get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from flows.cost import (
    budget_message,
    cost_summary,
    finish_usage,
    publish_cost_artifact,
    record_budget,
    run_budgeted,
    runner_kwargs,
    start_usage,
)
from flows.task_runner import SynthgenTaskRunner
from synthgen.config import RunConfig, load_config
from synthgen.pipeline import ShardTask, committed_shards, run_shard
from synthgen.plan import write_plan
from synthgen.publish import publish_shard, write_manifest
from synthgen.report import manifest_totals
from synthgen.storage import Store
from synthgen.summary import RunSummary, per_worker


@task(name="generate-shard", persist_result=False)
def generate_shard(config: dict[str, Any], shard_id: str) -> dict[str, Any]:
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
def generate_flow(
    config: dict[str, Any], shard_ids: list[str], total: int, run_started_at: float | None = None
) -> dict[str, Any]:
    """Generate the given shards on the cluster (within the budget, if one is set), then
    publish if every shard is committed."""
    cfg = RunConfig.model_validate(config)
    gen = generate_shard.with_options(
        retries=cfg.cluster.task_retries,
        retry_delay_seconds=cfg.cluster.retry_delay_s,
        timeout_seconds=cfg.cluster.shard_timeout_s,
    )
    run_started_at = run_started_at or time.time()
    slots = start_usage(cfg, run_started_at)  # workers are held (and billed) from here
    started = time.perf_counter()
    order = {sid: i for i, sid in enumerate(shard_ids)}

    def submit(sid: str) -> Any:
        # plan order first: with guided sizing the big shards start early, small ones last
        with dask.annotate(priority=len(shard_ids) - order[sid]):
            return gen.submit(config, sid)

    done_before = total - len(shard_ids)
    results: list[dict[str, Any]] = []
    tokens = 0
    failures: list[str] = []

    def on_done(fut: Any) -> bool:
        nonlocal tokens
        try:
            res = fut.result()
        except Exception as exc:  # the task exhausted its retries
            failures.append(f"{exc}")
            print(f"shard failed after retries: {type(exc).__name__}: {exc}")
            return False
        results.append(res)
        tokens += res["completion_tokens"]
        elapsed = time.perf_counter() - started
        print(
            f"shard {res['shard_id']} done · {done_before + len(results)}/{total} shards · "
            f"{res['completion_tokens']} tokens in {res['engine_seconds']:.1f}s · "
            f"${res['cost_usd']:.4f} · run {tokens / elapsed:.1f} tokens/s"
        )
        return True

    with _gpu_annotation(cfg):
        sched = run_budgeted(cfg, shard_ids, submit, on_done, slots)
    gen_seconds = time.perf_counter() - started
    budget_msg = budget_message(cfg, sched, total)
    record_budget(cfg, budget_msg)
    if budget_msg:
        print(budget_msg)
    store = Store(cfg.output)
    committed = committed_shards(store, cfg.run_id or "")
    finish_usage(cfg, run_started_at)
    manifest = None
    if len(committed) == total:
        # every shard committed: publish on the cluster (CPU work, any worker)
        pubs = [publish_shard_task.submit(config, sid) for sid in sorted(committed)]
        files = [p.result() for p in pubs]
        summary = cost_summary(cfg)
        extra = {"cost": manifest_totals(summary)} if summary else None
        manifest = write_manifest(cfg, store, files, extra)
    return {
        "results": results,
        "failures": failures,
        "generate_seconds": gen_seconds,
        "manifest": manifest,
        "budget_message": budget_msg,
    }


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
    cfg = load_config(config, overrides)
    return execute(cfg, started)


def execute(cfg: RunConfig, started: float | None = None) -> dict[str, Any]:
    started = started or time.perf_counter()
    store = Store(cfg.output)
    store.check_writable()
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
    config = cfg.model_dump(mode="json")
    runner = SynthgenTaskRunner(**runner_kwargs(cfg))  # embedded: metered to process exit
    gen = generate_flow.with_options(task_runner=runner)(
        config, todo, len(plan.shards), time.time()
    )
    publish_cost_artifact(cfg)  # after the cluster closed: workers' final rows are in
    committed = committed_shards(store, run_id)
    missing = [s.shard_id for s in plan.shards if s.shard_id not in committed]
    partial = bool(missing and gen["budget_message"])
    status = "complete" if not missing else ("partial" if partial else "failed")
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
    if partial:
        print(gen["budget_message"])
    elif missing:
        raise RuntimeError(
            f"run {run_id}: {len(missing)} of {len(plan.shards)} shards failed "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); committed shards "
            f"are kept: re-run the same command to generate only the missing ones. "
            f"Errors: {'; '.join(gen['failures'][:3])}"
        )
    return summary.as_dict()
