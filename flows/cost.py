"""Cost wiring for the flows: worker usage on the cluster, the budget-gated submission loop,
and the cost artifact. Thin: the arithmetic lives in synthgen.cost.prices/budget/report."""

from __future__ import annotations

import math
import queue
import re
import time
from collections.abc import Callable
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture

from synthgen.cluster.client import task_runner_kwargs
from synthgen.config import RunConfig
from synthgen.config.secret_rule import reveal
from synthgen.cost import usage
from synthgen.cost.budget import BudgetGate, Outcome, ScheduleResult, partial_message, schedule
from synthgen.cost.ledger import read_ledger, read_workers, write_worker_row
from synthgen.cost.meter import gpus_used
from synthgen.cost.prices import is_verification
from synthgen.cost.report import BUDGET_FILE, Summary, summarize, to_markdown
from synthgen.io.store import Store, retrying


def _client() -> Any:
    """The Dask client of the running flow's DaskTaskRunner (starting its cluster if needed)."""
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx else None
    client = getattr(runner, "client", None)
    if client is None:
        raise RuntimeError("cost wiring needs a flow running on a DaskTaskRunner")
    return client


def runner_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """DaskTaskRunner kwargs; an embedded cluster is metered to its worker processes' exit."""
    kwargs = task_runner_kwargs(cfg.cluster)
    if "cluster_class" in kwargs and kwargs["cluster_kwargs"].get("processes", True):
        kwargs["cluster_kwargs"] = {
            **kwargs["cluster_kwargs"],
            "worker_class": usage.MeteredNanny,
            "synthgen_usage": {"run_id": cfg.run_id, "output": reveal(cfg.output)},
        }
    return kwargs


def _plugin(cfg: RunConfig, run_started_at: float) -> usage.UsagePlugin:
    return usage.UsagePlugin(
        cfg.run_id or "",
        reveal(cfg.output),  # a worker plugin writes the ledger: it needs the credentials
        cfg.cost.model_dump(mode="json"),
        run_started_at,
        cfg.model.device,
        gpus_used(cfg),
    )


def start_usage(cfg: RunConfig, run_started_at: float) -> int:
    """Mark every worker as held by this run; return the shard slots (concurrent shards)."""
    client = _client()
    usage.register(client, _plugin(cfg, run_started_at))
    info = client.scheduler_info(n_workers=-1)["workers"].values()
    if cfg.model.needs_gpu:
        slots = sum(int(w.get("resources", {}).get(cfg.cluster.gpu_resource, 0)) for w in info)
    else:
        slots = sum(int(w.get("nthreads", 1)) for w in info)
    return max(slots, 1)


def finish_usage(cfg: RunConfig, run_started_at: float) -> None:
    """Write every live worker's row; on an external cluster also release the workers
    (their final rows are written now). An embedded cluster's workers write their final
    rows when the cluster closes, so their held time runs to the end of the process."""
    store = Store(cfg.output)
    root = store.run_path(cfg.run_id or "")
    client = _client()
    try:
        for row in usage.collect(
            client, cfg.run_id or "", cfg.cost, run_started_at, cfg.model.device, gpus_used(cfg)
        ):
            write_worker_row(store.fs, root, row)
    except Exception as exc:  # the shards are committed: a missing usage row must not fail the run
        print(f"cost: could not write worker rows: {type(exc).__name__}: {exc}")
    if cfg.cluster.address:
        usage.unregister(client, cfg.run_id or "")


def _ledger(store: Store, root: str, shard_id: str | None = None) -> Any:
    """read_ledger through the storage retry helper (an outage must not fail the flow)."""
    return retrying(
        lambda: read_ledger(store.fs, root, shard_id),
        f"reading the ledger under {root}",
        store.policy,
    )


def run_budgeted(
    cfg: RunConfig,
    shard_ids: list[str],
    submit: Callable[[str], PrefectFuture[Any]],
    on_done: Callable[[PrefectFuture[Any]], bool],
    slots: int,
    wait_any: Callable[[set[Any]], set[Any]] | None = None,
) -> ScheduleResult[str, PrefectFuture[Any]]:
    """Submit shards while the budget allows (all at once without a budget).

    `on_done(future)` handles a finished future (the flow's progress/result bookkeeping)
    and says whether the shard succeeded; the cost comes from the result (a first try that
    succeeded) or from the shard's new ledger rows (retries, failures).
    """
    store = Store(cfg.output)
    root = store.run_path(cfg.run_id or "")
    before = _ledger(store, root).to_pylist()
    seen = {r["attempt_id"] for r in before}
    gate = BudgetGate.from_ledger(cfg.budget.max_cost_usd, before)
    shard_of: dict[PrefectFuture[Any], str] = {}

    # futures in completion order, one done-callback each (prefect's as_completed over the
    # pending set on every wait registered a callback per pending future: O(shards^2))
    finished: queue.SimpleQueue[PrefectFuture[Any]] = queue.SimpleQueue()

    def _submit(shard_id: str) -> PrefectFuture[Any]:
        fut = submit(shard_id)
        shard_of[fut] = shard_id
        if wait_any is None:
            fut.add_done_callback(finished.put)
        return fut

    def _wait_any(pending: set[PrefectFuture[Any]]) -> set[PrefectFuture[Any]]:
        while True:
            fut = finished.get()
            if fut in pending:
                return {fut}

    earlier: dict[str, int] = {}
    for r in before:
        if is_verification(r):  # a check's cost row, not an attempt
            continue
        earlier[r["shard_id"]] = earlier.get(r["shard_id"], 0) + 1

    def _outcome(fut: PrefectFuture[Any]) -> Outcome:
        ok = on_done(fut)
        shard_id = shard_of[fut]
        if ok:
            res = fut.result()
            if res.get("status") == "skipped":
                return Outcome(0.0, 0, True)
            if res.get("attempt") == earlier.get(shard_id, 0) + 1:
                # first try of this session succeeded: its cost is in the result, no listing
                return Outcome(float(res["cost_usd"]), 1, True)
        rows = [
            r for r in _ledger(store, root, shard_id).to_pylist() if r["attempt_id"] not in seen
        ]
        seen.update(r["attempt_id"] for r in rows)
        return Outcome(sum(r["cost_usd"] for r in rows), len(rows), ok)

    if gate.max_cost_usd is not None and gate.spent_usd > 0:
        print(
            f"budget: ${gate.spent_usd:.4f} of ${gate.max_cost_usd:.2f} already spent by this run"
        )
    in_flight = slots if cfg.budget.max_cost_usd is not None else None
    # wait_any: the flow's shard-timeout watcher (flows/timeouts.py), when one is configured
    return schedule(shard_ids, _submit, wait_any or _wait_any, _outcome, gate, in_flight)


def budget_message(cfg: RunConfig, sched: ScheduleResult[str, Any], total: int) -> str | None:
    """The partial-run message when the budget stopped submission, else None."""
    if sched.stopped_by is None or not sched.not_started:
        return None
    d = sched.stopped_by
    remaining = len(sched.not_started)
    need = d.spent_usd + remaining * d.per_shard_usd * 1.2
    suggest = max(math.ceil(need * 100) / 100, (d.max_cost_usd or 0.0) + 0.01)
    hint = f"synthgen run CONFIG --set run_id={cfg.run_id} --set budget.max_cost_usd={suggest:.2f}"
    return partial_message(cfg.run_id or "", d, remaining, total, hint)


def record_budget(cfg: RunConfig, message: str | None) -> None:
    """runs/RUN_ID/budget.json: the cap of the latest session and whether it stopped the run."""
    store = Store(cfg.output)
    path = store.run_path(cfg.run_id or "", BUDGET_FILE)
    if cfg.budget.max_cost_usd is None and not store.exists(path):
        return
    store.write_json(
        path,
        {
            "max_cost_usd": cfg.budget.max_cost_usd,
            "partial": message is not None,
            "message": message,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def cost_summary(cfg: RunConfig) -> Summary | None:
    store = Store(cfg.output)
    root = store.run_path(cfg.run_id or "")
    ledger = _ledger(store, root).to_pylist()
    workers = read_workers(store.fs, root).to_pylist()
    if not ledger and not workers:
        return None
    budget_path = store.run_path(cfg.run_id or "", BUDGET_FILE)
    budget = store.read_json(budget_path) if store.exists(budget_path) else None
    return summarize(ledger, workers, run_id=cfg.run_id or "", budget=budget)


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "synthgen-cost-" + (re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-") or "run")


def publish_cost_artifact(cfg: RunConfig) -> Summary | None:
    """The report's markdown as a Prefect artifact of this flow run (visible in the UI)."""
    summary = cost_summary(cfg)
    if summary is None:
        return None
    try:
        create_markdown_artifact(
            markdown=to_markdown(summary),
            key=artifact_key(cfg.run_id or ""),
            description=f"synthgen cost report for run {cfg.run_id} "
            f"({time.strftime('%Y-%m-%d %H:%M:%S')})",
        )
    except Exception as exc:  # the run's outcome does not depend on the UI artifact
        print(f"cost: could not publish the Prefect artifact: {type(exc).__name__}: {exc}")
    return summary
