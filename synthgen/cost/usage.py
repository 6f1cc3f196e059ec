"""Worker-side usage: how long this worker process has been held, busy and loading.

Process-global, like the engine cache: a Dask worker process records every shard attempt
it runs, and `snapshot()` turns that into a worker row (cost.worker_row) at any moment --
after each shard (so a worker that later dies still has a row) and once more when the run
ends (called on every worker through `Client.run`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from distributed import Nanny, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from synthgen.config import CostConfig, OutputConfig
from synthgen.cost.leases import WorkerIdentity, identity_of, worker_lease
from synthgen.cost.ledger import Ledger, run_ledger
from synthgen.cost.prices import (
    Price,
    WorkerUsage,
    extend_worker_row,
    price_for_device,
    worker_row,
)
from synthgen.cost.prices import parse_device_label as _parse_label
from synthgen.engines.cache import stats as engine_stats
from synthgen.engines.devices import detect_device

_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def _process_start(pid: int | None = None) -> float:
    """When a process (default: this one) started, in epoch seconds: a worker is held from
    when it joins.

    On Linux this is `now - (uptime - start ticks)`, read from /proc: accurate to a clock
    tick. psutil's `create_time()` adds the start ticks to the boot time, which /proc/stat
    gives in whole seconds, so it can be up to a second early (measured here: 0.7 s).
    """
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # the command name (field 2) may hold spaces: fields after its closing paren
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        now = time.time()
        ticks = os.sysconf("SC_CLK_TCK")
        return now - (uptime - int(fields[19]) / ticks)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional, and only needed where /proc is not readable

        return float(psutil.Process(pid).create_time())
    except Exception:  # psutil missing or /proc unreadable: the first use is the best guess
        return time.time()


_JOINED_AT = _process_start()


@dataclass
class _RunTotals:
    busy_seconds: float = 0.0
    shards: int = 0
    failed_attempts: int = 0
    device: str | None = None
    run_started_at: float | None = None  # set by the run's UsagePlugin on this worker


_RUNS: dict[str, _RunTotals] = {}


def joined_at() -> float:
    return _JOINED_AT


def record_attempt(run_id: str, wall_seconds: float, ok: bool, device: str | None = None) -> None:
    """Count one shard attempt this process ran (its wall time is busy time)."""
    with _LOCK:
        totals = _RUNS.setdefault(run_id, _RunTotals())
        totals.busy_seconds += wall_seconds
        if ok:
            totals.shards += 1
        else:
            totals.failed_attempts += 1
        if device:
            totals.device = device


def worker_address() -> str:
    try:
        return str(get_worker().address)
    except Exception:  # not inside a Dask worker (tests, local calls)
        return f"local-{os.getpid()}"


def engine_load_seconds(since: float) -> float:
    """Seconds this process spent loading engines that finished loading after `since`."""
    loads: list[dict[str, Any]] = list(engine_stats().get("loads", []))  # type: ignore[call-overload]
    return float(sum(float(ld["seconds"]) for ld in loads if float(ld.get("at", 0.0)) >= since))


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def snapshot(
    run_id: str,
    cost: CostConfig,
    run_started_at: float | None = None,
    now: float | None = None,
    device_pref: str = "auto",
    gpus: int = 1,
    final: bool = False,
    price: Price | None = None,
    address: str | None = None,
    identity: WorkerIdentity | None = None,
) -> dict[str, Any]:
    """This worker's row for `run_id`: held from max(joined, run start) until `now`.

    Priced (unless `price` is given) by this worker's lease, else the table; `identity` is
    the worker's, where the caller holds the Worker (plugin hooks, `Client.run`), else the
    task's worker."""
    now = time.time() if now is None else now
    with _LOCK:
        totals = _RUNS.get(run_id, _RunTotals())
        if run_started_at is None:
            run_started_at = totals.run_started_at
        busy, shards, failed, device = (
            totals.busy_seconds,
            totals.shards,
            totals.failed_attempts,
            totals.device,
        )
    held_from = max(_JOINED_AT, run_started_at or 0.0)
    device_info = _parse_label(device) if device else detect_device(device_pref)
    if price is None:
        lease = worker_lease(cost, identity)
        price = price_for_device(device_info, cost, lease.per_hour if lease else None, gpus)
    host = socket.gethostname()
    pid = os.getpid()
    usage = WorkerUsage(
        run_id=run_id,
        # one row per worker process per session of the run
        worker_id=f"{host}-{pid}-{int(_JOINED_AT)}-{int(held_from)}",
        worker=address or worker_address(),
        host=host,
        pid=pid,
        device=device or device_info.label,
        price=price,
        joined_at=_ts(_JOINED_AT),
        held_from=_ts(held_from),
        held_until=_ts(max(now, held_from)),
        load_seconds=engine_load_seconds(held_from),
        busy_seconds=busy,
        shards=shards,
        failed_attempts=failed,
        final=final,
    )
    return worker_row(usage)


def reset() -> None:
    """Forget recorded attempts (tests)."""
    with _LOCK:
        _RUNS.clear()


# --------------------------------------------------------------------------- cluster side
class UsagePlugin(WorkerPlugin):
    """A Dask worker plugin: marks the worker as held by a run, writes its final row.

    `teardown` runs when the worker closes (an embedded LocalCluster shutting down: held
    until the process ends) or when the flow unregisters the plugin (an external cluster:
    held until the run ends). Its row has `final=True` and overwrites earlier snapshots.
    """

    def __init__(
        self,
        run_id: str,
        output: dict[str, Any],
        cost: dict[str, Any],
        run_started_at: float,
        device_pref: str = "auto",
        gpus: int = 1,
    ) -> None:
        self.name = plugin_name(run_id)
        self.run_id = run_id
        self.output = output
        self.cost = cost
        self.run_started_at = run_started_at
        self.device_pref = device_pref
        self.gpus = gpus

    def setup(self, worker: Any) -> None:
        with _LOCK:
            totals = _RUNS.get(self.run_id)
            if totals is None or totals.run_started_at != self.run_started_at:
                # a new session of the run (a resume on the same long-lived worker) starts
                # its own accounting; the earlier session's row stays as it was written
                _RUNS[self.run_id] = totals = _RunTotals()
            totals.run_started_at = self.run_started_at

    def teardown(self, worker: Any) -> None:
        self._write_final(str(getattr(worker, "address", "")) or None, identity_of(worker))

    def _write_final(self, address: str | None, identity: WorkerIdentity | None = None) -> None:
        if not self.output:  # an untrusted worker: no credentials, the flow writes its row
            return
        ledger = run_ledger(OutputConfig.model_validate(self.output), self.run_id)
        if address and address in removed_workers(ledger):
            # the flow removed this worker (frozen, cut off) and closed its rows then; its
            # teardown runs now because the host came back: nothing of this run changes
            return
        row = snapshot(
            self.run_id,
            CostConfig.model_validate(self.cost),
            run_started_at=self.run_started_at,
            device_pref=self.device_pref,
            gpus=self.gpus,
            final=True,
            address=address,
            identity=identity,
        )
        ledger.write_worker(row)


def removed_workers(ledger: Ledger) -> dict[str, float]:
    """Workers the flow removed from the run's cluster: address -> when (epoch seconds)."""
    raw = ledger.store.read_optional(ledger.run.removed_workers)  # one call: on teardown
    if raw is None:
        return {}
    return {str(k): float(v) for k, v in json.loads(raw).items()}


def close_removed_workers(ledger: Ledger, removed: dict[str, float]) -> int:
    """Record workers the flow removed from the cluster (`removed`: address -> when): their
    rows of the run end then (final), and their own final write, should the host come back,
    changes nothing (`UsagePlugin`). Returns the rows closed."""
    if not removed:
        return 0
    ledger.store.write_json(ledger.run.removed_workers, {**removed_workers(ledger), **removed})
    n = 0
    for row in ledger.workers().to_pylist():
        at = removed.get(row["worker"])
        if at is None or row["final"]:
            continue
        end = _ts(max(at, row["held_until"].timestamp()))
        ledger.write_worker({**extend_worker_row(row, end), "final": True})
        n += 1
    return n


def plugin_name(run_id: str) -> str:
    return f"synthgen-usage-{run_id}"


def register(client: Any, plugin: UsagePlugin) -> None:
    """Register the usage plugin on every current and future worker of the cluster."""
    client.register_plugin(plugin, name=plugin.name)


def unregister(client: Any, run_id: str) -> None:
    """End the run's hold on the workers (external clusters): each writes its final row."""
    client.unregister_worker_plugin(plugin_name(run_id))


def collect(
    client: Any,
    run_id: str,
    cost: CostConfig,
    run_started_at: float,
    device_pref: str = "auto",
    gpus: int = 1,
    workers: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every live worker's row for `run_id` (of `workers`, when given: a frozen worker would
    never answer), held until now (not final: the worker lives on)."""
    kwargs = {
        "run_id": run_id,
        "cost": cost,
        "run_started_at": run_started_at,
        "device_pref": device_pref,
        "gpus": gpus,
    }
    return list(client.run(_snapshot_on_worker, workers=workers, **kwargs).values())


def _snapshot_on_worker(dask_worker: Any, **kwargs: Any) -> dict[str, Any]:
    # Client.run passes the Worker as `dask_worker`; get_worker() only works in task threads
    return snapshot(**kwargs, address=str(dask_worker.address), identity=identity_of(dask_worker))


# --------------------------------------------------------------------------- embedded cluster
class MeteredNanny(Nanny):
    """The embedded cluster's nanny: once its worker process has ended, it extends that
    worker's row to the moment of exit (the worker's own final row is written a little
    before). LocalCluster(worker_class=MeteredNanny, synthgen_usage={"run_id": ...,
    "output": OutputConfig as JSON}) passes `synthgen_usage` to every nanny."""

    def __init__(
        self, *args: Any, synthgen_usage: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self._synthgen_usage = synthgen_usage
        super().__init__(*args, **kwargs)

    async def close(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        pid = self.pid
        result = await super().close(*args, **kwargs)
        if pid and self._synthgen_usage:
            try:
                extend_rows(self._synthgen_usage, {int(pid): time.time()})
            except Exception as exc:  # accounting must never break shutdown
                log.warning("could not extend worker %s's row to its exit: %s", pid, exc)
        return result


def extend_rows(run: dict[str, Any], ended: dict[int, float]) -> int:
    """Extend this host's worker rows of `run` whose pid ended to that time; returns count."""
    ledger = run_ledger(OutputConfig.model_validate(run["output"]), run["run_id"])
    host = socket.gethostname()
    n = 0
    for row in ledger.workers().to_pylist():
        end = ended.get(int(row["pid"]))
        if end is not None and row["host"] == host and end > row["held_until"].timestamp():
            ledger.write_worker(extend_worker_row(row, _ts(end)))
            n += 1
    return n
