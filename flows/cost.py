"""Cost wiring for the flows: worker usage on the cluster, the budget gate of the generate
loop (flows/loop.py), and the cost artifact. Thin: the arithmetic lives in synthgen.cost.prices/budget/report."""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect.artifacts import create_markdown_artifact

from flows.loop import Gate, LoopResult
from flows.task_runner import current_runner
from synthgen.cluster.client import task_runner_kwargs, workers_info
from synthgen.cluster.deadlines import SILENT_S
from synthgen.config import RunConfig
from synthgen.config.secret_rule import reveal
from synthgen.cost import usage
from synthgen.cost.budget import BudgetGate, Decision, Outcome, partial_message
from synthgen.cost.ledger import Ledger
from synthgen.cost.meter import gpus_used
from synthgen.cost.prices import is_verification
from synthgen.cost.report import Summary, summarize, to_markdown
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store, retrying

_log = logging.getLogger(__name__)


def _client() -> Any:
    """The Dask client of the running flow's DaskTaskRunner (starting its cluster if needed)."""
    return current_runner().client


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
        # a worker plugin writes the ledger: it needs the credentials (not untrusted workers:
        # the flow writes their rows, `finish_usage`)
        {} if cfg.untrusted_workers() else reveal(cfg.output),
        cfg.cost.model_dump(mode="json"),
        run_started_at,
        cfg.model.device,
        gpus_used(cfg),
    )


def start_usage(cfg: RunConfig, run_started_at: float) -> int:
    """Mark every worker as held by this run; return the shard slots (concurrent shards)."""
    client = _client()
    usage.register(client, _plugin(cfg, run_started_at))
    info = workers_info(client).values()
    if cfg.model.needs_gpu:
        gpus = sum(int(w.get("resources", {}).get(cfg.cluster.gpu_resource, 0)) for w in info)
        slots = gpus * cfg.cluster.overlap  # a GPU holds `overlap` shards (one generating)
    else:
        slots = sum(int(w.get("nthreads", 1)) for w in info)
    return max(slots, 1)


def responsive_workers(client: Any, silent_s: float = SILENT_S) -> list[str]:
    """The cluster's workers heard from within `silent_s` of the freshest heartbeat (on the
    scheduler's clock): the ones a request can be sent to without waiting on a frozen one."""
    info = workers_info(client)
    if not info:
        return []
    newest = max(float(w.get("last_seen", 0.0)) for w in info.values())
    return sorted(a for a, w in info.items() if newest - float(w.get("last_seen", 0.0)) < silent_s)


def finish_usage(
    cfg: RunConfig, run_started_at: float, removed: dict[str, float] | None = None
) -> None:
    """Write every live worker's row; on an external cluster also release the workers
    (their final rows are written now). An embedded cluster's workers write their final
    rows when the cluster closes, so their held time runs to the end of the process.
    `removed`: workers the flow removed from the cluster (address -> when): held until then."""
    ledger = Ledger(RunLayout(Store(cfg.output), cfg.run_id or ""))
    client = _client()
    try:
        closed = usage.close_removed_workers(ledger, removed or {})
        if closed:
            print(f"cost: {closed} removed worker(s) held until their removal")
        for row in usage.collect(
            client,
            cfg.run_id or "",
            cfg.cost,
            run_started_at,
            cfg.model.device,
            gpus_used(cfg),
            workers=responsive_workers(client),
        ):
            if not isinstance(row, dict):  # a worker that answered with something else
                print(f"cost: a worker sent no usable worker row ({str(row)[:120]})")
                continue
            ledger.write_worker(row)
    except Exception as exc:  # the shards are committed: a missing usage row must not fail the run
        print(f"cost: could not write worker rows: {type(exc).__name__}: {exc}")
    if cfg.cluster.address:
        try:
            usage.unregister(client, cfg.run_id or "")
        except Exception as exc:  # e.g. a worker removed while it was asked
            print(f"cost: could not release the workers: {type(exc).__name__}: {exc}")


def _ledger(ledger: Ledger, shard_id: str | None = None) -> Any:
    """The ledger's rows through the storage retry helper (an outage must not fail the flow)."""
    return retrying(
        lambda: ledger.rows(shard_id),
        f"reading the ledger under {ledger.run.url()}",
        ledger.store.policy,
    )


class BudgetWatch(Gate):
    """The budget cap as a gate of the generate loop (flows/loop.py): a shard is admitted
    while `BudgetGate` says the ledger plus the running shards' projection stays under the
    cap; every finished shard (and every verification check) adds its cost.

    A shard's cost comes from its result (this session's first try succeeded) or from its
    new ledger rows (retries, failures, regenerations); checks' rows are counted once, from
    the check's result.
    """

    def __init__(
        self,
        cfg: RunConfig,
        slots: int,
        ledger_rows: Callable[[str | None], list[dict[str, Any]]] | None = None,
    ) -> None:
        if ledger_rows is None:
            ledger = Ledger(RunLayout(Store(cfg.output), cfg.run_id or ""))
            ledger_rows = lambda sid: _ledger(ledger, sid).to_pylist()  # noqa: E731
        self.rows = ledger_rows
        self.max_cost_usd = cfg.budget.max_cost_usd
        self.window = slots if cfg.budget.max_cost_usd is not None else None
        # the ledger as it stands (a resumed run's spending and earlier attempts) is read
        # beside the first submissions: a run without a cap admits without it (0.2 s on S3,
        # more for a long ledger, of the engine's time before its first shard)
        self._gate: BudgetGate | None = None
        self._counted: set[tuple[str, int]] = set()  # (shard, attempt) already in the gate
        self._earlier: dict[str, int] = {}  # shard -> attempts in the ledger before
        self._error: BaseException | None = None
        self._loading = threading.Thread(  # in the flow run's context: its print is logged
            target=contextvars.copy_context().run,
            args=(self._load,),
            name="synthgen-budget-ledger",
            daemon=True,
        )
        self._loading.start()

    def _load(self) -> None:
        try:
            before = self.rows(None)
            gate = BudgetGate.from_ledger(self.max_cost_usd, before)
            for r in before:
                if is_verification(r):  # a check's cost row, not an attempt
                    continue
                self._counted.add((r["shard_id"], int(r["attempt"])))
                self._earlier[r["shard_id"]] = self._earlier.get(r["shard_id"], 0) + 1
            if gate.max_cost_usd is not None and gate.spent_usd > 0:
                print(
                    f"budget: ${gate.spent_usd:.4f} of ${gate.max_cost_usd:.2f} "
                    "already spent by this run"
                )
            self._gate = gate
        except BaseException as exc:  # raised where the gate is first needed
            self._error = exc

    def _loaded(self) -> BudgetGate:
        self._loading.join()
        if self._error is not None:
            raise self._error
        assert self._gate is not None
        return self._gate

    @property
    def gate(self) -> BudgetGate:
        return self._loaded()

    @property
    def counted(self) -> set[tuple[str, int]]:
        self._loaded()
        return self._counted

    @property
    def earlier(self) -> dict[str, int]:
        self._loaded()
        return self._earlier

    def admit(self, shard_id: str, running: int) -> Decision | None:
        if self.max_cost_usd is None and self._gate is None:
            # no cap: every shard is admitted (the ledger read finishes beside the run)
            if self._error is not None:
                raise self._error
            return None
        decision = self.gate.admit(running)
        return None if decision.allowed else decision

    def _new_rows(self, shard_id: str) -> Outcome:
        rows = [
            r
            for r in self.rows(shard_id)
            if not is_verification(r) and (r["shard_id"], int(r["attempt"])) not in self.counted
        ]
        self.counted.update((r["shard_id"], int(r["attempt"])) for r in rows)
        return Outcome(sum(r["cost_usd"] for r in rows), len(rows), True)

    def on_result(self, shard_id: str, result: dict[str, Any]) -> None:
        if result.get("status") == "skipped":  # committed by an earlier session
            self.gate.record(0.0, 0, True)
            return
        attempt = int(result.get("attempt", 0))
        if result.get("status") == "done" and attempt == self.earlier.get(shard_id, 0) + 1:
            # first try of this session succeeded: its cost is in the result, no listing
            self.counted.add((shard_id, attempt))
            self.gate.record(float(result["cost_usd"]), 1, True)
            return
        out = self._new_rows(shard_id)
        self.gate.record(out.cost_usd, out.attempts, True)

    def on_failure(self, shard_id: str, error: str) -> None:
        out = self._new_rows(shard_id)
        self.gate.record(out.cost_usd, out.attempts, False)

    def on_check(self, shard_id: str, future: Any) -> None:
        try:
            check = future.result()
        except Exception:  # an errored check wrote no ledger row
            return
        self.gate.spent_usd += float(check.get("cost_usd", 0.0))  # money, not a shard attempt


def budget_message(cfg: RunConfig, sched: LoopResult, total: int) -> str | None:
    """The partial-run message when the budget stopped submission, else None."""
    if not isinstance(sched.stopped_by, Decision) or not sched.not_started:
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
    path = RunLayout(store, cfg.run_id or "").budget
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


def read_ledger_ahead(cfg: RunConfig) -> None:
    """Read the run's ledger as it stands (best effort), so that the end-of-run summary
    reads only the files written since (`Ledger.rows` remembers what it read)."""
    try:
        Ledger(RunLayout(Store(cfg.output), cfg.run_id or "")).rows()
    except Exception as exc:  # the summary reads it again at the end
        _log.debug("reading the ledger ahead failed: %s", exc)


def cost_summary(cfg: RunConfig) -> Summary | None:
    store = Store(cfg.output)
    layout = RunLayout(store, cfg.run_id or "")
    run_ledger = Ledger(layout)
    ledger = _ledger(run_ledger).to_pylist()
    workers = run_ledger.workers().to_pylist()
    if not ledger and not workers:
        return None
    budget_path = layout.budget
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
