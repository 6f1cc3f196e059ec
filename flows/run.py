"""Prefect flows: plan -> one generate task per shard on the Dask cluster -> publish.

Flows only wire library functions together. `synthgen-run` takes a config path and
`--set`-style overrides (what the CLI, `prefect deployment run` and the UI's custom-run form
pass), validates them, plans, then runs `synthgen-generate` with a DaskTaskRunner chosen from
the config (`cluster.address` set: that scheduler; unset: a LocalCluster). Tasks exchange
shard ids, paths and counts, never the generated text.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL

import flows.credentials  # noqa: F401 - every Store in this process resolves credentials blocks
from flows.cost import (
    BudgetWatch,
    budget_message,
    cost_summary,
    finish_usage,
    publish_cost_artifact,
    read_ledger_ahead,
    record_budget,
    runner_kwargs,
    start_usage,
)
from flows.credentials import load_secret_token
from flows.grants import COMMIT_THREADS, CommittedFuture, Granter, Holders, committing
from flows.loop import Gate, ShardLoop, windowed
from flows.progress import RunProgress
from flows.refs import SUMMARY_ARTIFACT_PREFIX, deployment_default_config, resolve_config_ref
from flows.task_runner import SynthgenTaskRunner, current_runner, submit_task, submit_unit
from flows.timeouts import ShardTimeouts, remove_silent_workers
from flows.units import (
    DEDUP_RETRIES,
    Opaque,
    Retries,
    dedup_on,
    dedup_task,
    generate_granted,
    generate_unit,
    publish_batch,
    publish_batch_task,
    unwrap,
)
from flows.verify import (
    VerifyGate,
    cluster_workers,
    restrict,
    runner_client,
    submit_check_task,
    submit_granted_check,
)
from flows.warm import embedded_cluster, wait_warm
from synthgen import errors as synthgen_errors
from synthgen.checkpoints import checkpoint
from synthgen.cluster.client import run_on_workers, unit_resources
from synthgen.cluster.deadlines import DeadlinePolicy
from synthgen.cluster.preflight import check_output, check_workers_reach, reaches, run_preflight
from synthgen.cluster.roles import by_certificate
from synthgen.config import RunConfig, load_config
from synthgen.config.multistage import clean_stage
from synthgen.config.secrets import check_overrides, protect, restore_secrets, stash_secrets
from synthgen.cost.ledger import record_lost_attempts
from synthgen.cost.report import manifest_totals
from synthgen.cost.summary import RunSummary, per_worker
from synthgen.engines.abort import supersede, unit_token
from synthgen.errors import RunIncomplete
from synthgen.io.attempts import commit_markers, read_commits
from synthgen.io.grant import worker_config
from synthgen.io.hub import HubTarget, push_dataset, token_from_env
from synthgen.io.layout import RunLayout, split_key, unit_key
from synthgen.io.lease import RunLease
from synthgen.io.store import Store
from synthgen.stages.decontam import benchmark_summary, write_benchmark_index
from synthgen.stages.dedup.cross import ShardKeys
from synthgen.stages.plan import write_plan
from synthgen.stages.publish import (
    check_owner,
    collect_garbage,
    commit_publish,
    digests_of,
    place_ready,
    prepare_publish,
    publish_id,
    published_as,
    ready_shard,
)
from synthgen.stages.units import (
    all_units,
    committed_units,
    final_stage,
    next_unit,
    pending_units,
    stage_names,
)

FINISH_ROUNDS = 3  # dedup + publish, again after each regeneration of withdrawn shards
PUBLISH_WINDOW_PER_THREAD = 4  # publish tasks in flight per worker thread


@dataclass
class Published:
    """What the finishing round wrote: this publish's shard files (`shards`, the manifest's
    extras) to be switched to by `commit_publish`, or `done`: the manifest of the publish
    `dataset/` already shows (a re-run of a published run writes nothing)."""

    pid: str
    shards: list[dict[str, Any]]
    extra: dict[str, Any] | None
    done: dict[str, Any] | None = None


def _publish_error(shard_id: str, outcome: dict[str, Any]) -> Exception:
    """The exception a shard's publish raised, as the flow raises it: synthgen's own errors
    by their class (StorageError ends the run with the exit code of an incomplete run)."""
    cls = getattr(synthgen_errors, str(outcome.get("type")), None)
    if isinstance(cls, type) and issubclass(cls, synthgen_errors.SynthgenError):
        try:
            return cls(outcome["error"])
        except TypeError:  # an error class with other arguments
            pass
    return RuntimeError(f"shard {shard_id}: {outcome.get('type')}: {outcome['error']}")


def _dedup_here(
    cfg: RunConfig,
    shard_ids: list[str],
    markers: dict[str, dict[str, Any]] | None = None,
    keys: dict[str, ShardKeys] | None = None,
) -> dict[str, Any]:
    """Run-wide dedup in this (the flow's) process, on an in-process Dask cluster.

    For TLS clusters, whose workers hold worker certificates (`synthgen.cluster.roles`): a
    worker may not act as a Dask client (which `dedup_task` does to submit its map/shuffle
    tasks), and workers do not unpickle what other workers send them (the shuffle's
    partitions), so the run-wide work that mixes data from several workers runs on the
    trusted side. It reads the committed shards from storage like the tasks would."""
    threads = max(1, min(8, os.cpu_count() or 1))
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        return dedup_on(client, cfg, shard_ids, markers, keys)


def _finish(
    cfg: RunConfig,
    task_config: Opaque,
    store: Store,
    committed: dict[str, dict[str, Any]],
    on: list[str] | None = None,
    ready: dict[str, dict[str, Any]] | None = None,
    keys: dict[str, tuple[str, ShardKeys]] | None = None,
) -> tuple[Published | None, list[str]]:
    """Run-wide dedup and the publish's shard files over every committed shard of the final
    stage: (Published, []), or (None, withdrawn units) when a shard failed its check
    against its commit marker (withdrawn by the check; nothing is published from it). The
    switch (manifest, card) is the caller's, once the workers' cost rows are in.
    `committed`: the final stage's commit markers, read once by the caller (nothing commits
    while the run finishes; a shard the checks withdraw ends this round). `on`: the workers
    its cluster tasks may run on (None: any; `ShardTimeouts.finishing_workers`). `ready`:
    shard id -> its publish-ready files (`Prepublish`): moved into place when the dedup
    dropped none of its rows and its marker names the file they were made from. `keys`:
    shard id -> (the sha256 of the file they were taken from, its dedup keys): the run-wide
    dedup uses them, not the shard's file, where its marker still names that file."""
    run_id = cfg.run_id or ""
    final = final_stage(cfg)
    extra = None
    dropped: set[str] = set()
    if cfg.clean.enabled and (cfg.clean.exact.enabled or cfg.clean.near.enabled):
        # the deduplicated stage's markers, when the caller read them (the final stage's):
        # what each shard's bytes must be (10,000 markers: ~2 s to read again)
        expect = (
            {
                sid: {"sha256": m.get("sha256"), "rows": m.get("rows")}
                for sid, m in committed.items()
            }
            if clean_stage(cfg) == final
            else None
        )
        known = {
            sid: k
            for sid, (sha, k) in (keys or {}).items()
            if sid in committed and sha == str(committed[sid].get("sha256"))
        }
        if cfg.cluster.tls is not None:  # workers hold worker certificates: see _dedup_here
            dedup = _dedup_here(cfg, sorted(committed), expect, known)
        else:
            with restrict(on):
                dedup = submit_task(
                    current_runner(), dedup_task,
                    (task_config, sorted(committed), expect, Opaque(known)),
                    "dedup-run", DEDUP_RETRIES,
                ).result()  # fmt: skip
        if dedup["withdrawn"]:  # shards of the deduplicated stage: their units run again
            return None, [unit_key(clean_stage(cfg), sid) for sid in dedup["withdrawn"]]
        dropped = set(dedup["dropped_shards"])
        extra = {
            "dedup": {k: v for k, v in dedup.items() if k not in ("withdrawn", "dropped_shards")}
        }
        print(
            f"cross-shard dedup: {dedup['rows_checked']} kept rows checked, "
            f"{dedup['verified_pairs']} duplicate pairs, dropped {dedup['drop_counts'] or 'none'}"
        )
    bench = benchmark_summary(cfg, store)
    if bench:
        extra = {**(extra or {}), "decontamination": bench}
    pid = publish_id(
        cfg,
        digests_of(committed),
        (extra or {}).get("dedup", {}).get("drops_sha256"),
    )
    done = published_as(store, run_id, pid)
    if done is not None:
        gone = collect_garbage(store, done)  # a publish killed after its switch left these
        print(f"run {run_id}: already published as {pid} ({done['rows']} rows); "
              f"{len(gone)} stale file(s) removed" if gone else
              f"run {run_id}: already published as {pid} ({done['rows']} rows)")  # fmt: skip
        return Published(pid, [], extra, done), []
    check_owner(cfg, store)  # before any file is written
    shard_ids = sorted(committed)
    n = len(shard_ids)
    ready = ready or {}
    movable = [
        (ready[sid], i)
        for i, sid in enumerate(shard_ids)
        if sid in ready
        and sid not in dropped
        and ready[sid]["source_sha256"] == str(committed[sid].get("sha256"))
    ]
    placed = _place(store, movable, n, pid)
    moved = {e["shard_id"] for e in placed}
    for sid in moved:  # its ready files are gone: published the usual way in a later round
        ready.pop(sid, None)
    todo = [(i, sid) for i, sid in enumerate(shard_ids) if sid not in moved]
    # the threads that run publish batches: the flow's pool (TLS) or the cluster's workers
    threads = (
        PUBLISH_THREADS_HERE
        if cfg.cluster.tls is not None
        else max(1, sum(k for w, k in runner_client().nthreads().items() if not on or w in on))
    )
    batches = _batches(todo, _batch_size(threads, len(todo)))
    if cfg.cluster.tls is not None:
        # the published folder is written by the trusted side: on a TLS cluster the workers
        # hold worker certificates (a tampered one could answer with anything), so the
        # flow's process publishes, PUBLISH_THREADS_HERE batches at a time
        pool = concurrent.futures.ThreadPoolExecutor(PUBLISH_THREADS_HERE)
        config = unwrap(task_config)
        window = 2 * PUBLISH_THREADS_HERE

        def submit_pub(items: list[tuple[int, str]]) -> Any:
            return pool.submit(publish_batch, config, items, pid, n)
    else:
        pool = None
        runner = current_runner()
        # a few batches per worker thread in flight, not every one at once
        window = PUBLISH_WINDOW_PER_THREAD * threads

        def submit_pub(items: list[tuple[int, str]]) -> Any:
            with restrict(on):
                return submit_task(
                    runner, publish_batch_task, (task_config, items, pid, n),
                    "publish-shards", Retries(),
                )  # fmt: skip

    try:
        shards, failed = _collect_publish(windowed(batches, submit_pub, window))
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    if placed:
        order = {sid: i for i, sid in enumerate(shard_ids)}
        shards = sorted([*placed, *shards], key=lambda e: order[e["shard_id"]])
    if failed:
        still = commit_markers(store, run_id, final)
        withdrawn = [unit_key(final, sid) for sid, _ in failed if sid not in still]
        if withdrawn:
            return None, withdrawn
        raise failed[0][1]
    return Published(pid, shards, extra), []


_PLAN_SIZES: dict[str, dict[str, int]] = {}  # run id -> shard id -> prompts (this process)
PUBLISH_THREADS_HERE = 4  # publish batches in flight in the flow's process (TLS clusters)
LEDGER_AHEAD_EVERY = 500  # results between two reads of the ledger ahead of the summary
PLACE_CHUNK = 256  # publish-ready files moved per request batch (a checkpoint per shard after)


def _place(
    store: Store, movable: list[tuple[dict[str, Any], int]], count: int, pid: str
) -> list[dict[str, Any]]:
    """`place_ready` in chunks; the entries of the shards whose files were moved."""
    out: list[dict[str, Any]] = []
    for k in range(0, len(movable), PLACE_CHUNK):
        done = place_ready(store, movable[k : k + PLACE_CHUNK], count, pid)
        for _ in done:
            checkpoint("publish.shard_done")
        out += done
    if movable:
        print(f"publish: {len(out)} shard(s) moved into place from their publish-ready files")
    return out


class Prepublish:
    """Each final-stage unit's publish-ready files, written by the worker that committed it
    (`generate_unit`) or else by the flow's process as the unit's result arrives
    (`ready_shard`, a few threads beside the generate loop): at the end of the
    run a shard the run-wide dedup left alone is moved into the publish (`place_ready`)
    instead of being read and written again, which was most of the end-of-run phase
    (benchmarks/RESULTS-speed.md). A shard whose ready files failed, or that dedup dropped
    rows of, is published the usual way. Every LEDGER_AHEAD_EVERY results its threads also
    read the ledger's new files (`read_ledger_ahead`), which the end-of-run cost summary
    then does not read again."""

    def __init__(self, config: dict[str, Any], final: str, threads: int) -> None:
        self.config = config
        self.final = final
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, "synthgen-prepublish")
        self.futures: dict[str, concurrent.futures.Future[dict[str, Any]]] = {}
        self.ready: dict[str, dict[str, Any]] = {}  # finished; `_finish` pops what it moved
        # shard id -> (sha256 of the committed file, its dedup keys): the run-wide dedup's
        # index, built as shards commit (`ready_shard` takes them from the checked table)
        self.keys: dict[str, tuple[str, ShardKeys]] = {}
        self.key_bytes = 0  # what `keys` holds; past KEYS_MAX_BYTES later shards keep none
        self.keys_full = False
        self.failed: list[str] = []
        self.prepared: concurrent.futures.Future[None] | None = None
        self.cfg = RunConfig.model_validate(config)
        self.results = 0

    def add(self, result: dict[str, Any]) -> None:
        stage, sid = split_key(result["shard_id"])
        if stage != self.final or result.get("status") not in ("done", "skipped"):
            return
        if result.get("ready"):  # written by the worker that committed it (generate_unit)
            self.futures.pop(sid, None)
            self.ready[sid] = self._index(sid, result["ready"])
            self._count()
            return
        if self.prepared is None:  # the dedup index's meta file, once (as a publish does)
            self.prepared = self.pool.submit(prepare_publish, self.config)
        self._count()
        # the latest commit's: a shard generated again replaces its earlier entry
        self.ready.pop(sid, None)
        self._forget_keys(sid)
        self.futures[sid] = self.pool.submit(self._ready, sid)

    def _count(self) -> None:
        self.results += 1
        if self.results % LEDGER_AHEAD_EVERY == 0:  # the summary then reads only the rest
            self.pool.submit(read_ledger_ahead, self.cfg)

    def _ready(self, sid: str) -> dict[str, Any]:
        assert self.prepared is not None
        self.prepared.result()  # its error (an index of other parameters) is each shard's
        return ready_shard(self.config, sid)

    def entries(self) -> dict[str, dict[str, Any]]:
        """shard id -> its ready entry, once every write submitted so far has ended (the
        caller pops the entries whose files it moved)."""
        for sid, fut in list(self.futures.items()):
            del self.futures[sid]
            try:
                self.ready[sid] = self._index(sid, fut.result())
            except Exception as exc:  # published the usual way at the end
                self.ready.pop(sid, None)
                self.failed.append(f"{sid}: {type(exc).__name__}: {exc}")
        if self.failed:
            print(
                f"warning: {len(self.failed)} shard(s) had no publish-ready files (published "
                f"the usual way): {'; '.join(self.failed[:3])}"
            )
            self.failed = []
        return self.ready

    def _index(self, sid: str, entry: dict[str, Any]) -> dict[str, Any]:
        """The entry without its dedup keys, which go to `keys` (plain data stays plain)."""
        keys = entry.pop("dedup_keys", None)
        self._forget_keys(sid)
        if keys is None:
            return entry
        size = _key_bytes(keys)
        if self.key_bytes + size > KEYS_MAX_BYTES:  # the run-wide dedup reads this shard
            if not self.keys_full:
                self.keys_full = True
                print(
                    f"run-wide dedup: the index of committed shards reached "
                    f"{self.key_bytes / 2**20:.0f} MiB in this process; later shards are "
                    f"read again at the end of the run instead"
                )
            return entry
        self.keys[sid] = (entry["source_sha256"], keys)
        self.key_bytes += size
        return entry

    def _forget_keys(self, sid: str) -> None:
        """Drop a shard's earlier keys (it committed again), with their bytes."""
        held = self.keys.pop(sid, None)
        if held is not None:
            self.key_bytes -= _key_bytes(held[1])

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# The run-wide dedup's index held in the flow's process (`Prepublish.keys`): 8 bytes per row
# and band plus 8 per row (8.6 MiB for 32,768 rows at 32 bands), so 512 MiB holds ~2M rows of
# keys; past it a shard's keys are dropped and the end-of-run dedup maps that shard from its
# file as before.
KEYS_MAX_BYTES = 512 << 20


def _key_bytes(keys: ShardKeys) -> int:
    return sum(a.nbytes for a in (keys.exact, keys.bands) if a is not None)


# Shards per publish task: one task (a Prefect task run, a Dask task) per shard cost ~30 ms of
# orchestration each, most of the end-of-run phase at 1,000+ shards (benchmarks/bench_scale.py)
PUBLISH_BATCH_MAX = 64
PUBLISH_BATCHES_PER_THREAD = 4  # enough batches that every worker thread stays busy


def _batch_size(threads: int, n: int) -> int:
    return max(1, min(PUBLISH_BATCH_MAX, n // (threads * PUBLISH_BATCHES_PER_THREAD)))


def _batches(items: list[tuple[int, str]], size: int) -> list[list[tuple[int, str]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _collect_publish(pubs: Any) -> tuple[list[dict[str, Any]], list[tuple[str, Exception]]]:
    """Each batch's outcomes, in shard order: (the shards' files, (shard, error) failed)."""
    shards: list[dict[str, Any]] = []
    failed: list[tuple[str, Exception]] = []
    for items, fut in pubs:
        try:
            outcomes = fut.result()
        except Exception as exc:  # the task itself failed (its worker died, ...)
            failed += [(sid, exc) for _, sid in items]
            continue
        for (_, sid), outcome in zip(items, outcomes, strict=True):
            if "shard" in outcome:
                shards.append(outcome["shard"])
                checkpoint("publish.shard_done")
            else:  # a withdrawn shard, or a storage failure
                failed.append((sid, _publish_error(sid, outcome)))
    return shards, failed


def _check_api_reach(cfg: RunConfig, timeout_s: float = 15.0) -> None:
    """Every worker of the cluster can open a connection to the Prefect API URL this flow
    ships with its tasks (PreflightError naming those that cannot). A worker that does not
    answer within `timeout_s` (frozen: the deadlines deal with it) is not waited for."""
    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        answers = run_on_workers(runner_client(), reaches, url, 5.0, timeout_s=timeout_s)
    except TimeoutError:
        print(
            f"preflight: not every worker answered within {timeout_s:g}s; Prefect API reach not checked"
        )
        return
    checked = {w: a for w, a in answers.items() if a is None or isinstance(a, str)}
    line = check_workers_reach(checked, url)
    if cfg.cluster.address:  # an existing cluster: worth a line (a local one always reaches)
        print(f"preflight: {line}")


def _stop_losers(run_id: str, unit: str) -> None:
    """Tell every worker to stop the engine calls of `unit` still running (the losing copy of
    a speculated shard, an abandoned attempt on a slow host: `synthgen.engines.abort`). Sent
    from a daemon thread and not waited for: the broadcast reaches live workers at once, and
    a frozen one that never answers holds nothing up."""
    client = runner_client()
    token = unit_token(run_id, unit)
    thread = threading.Thread(
        target=client.run,
        args=(supersede, token),
        kwargs={"on_error": "ignore"},
        name=f"synthgen-stop-{unit}",
        daemon=True,
    )
    with _STOPS_LOCK:
        _STOPS[:] = [t for t in _STOPS if t.is_alive()]
        _STOPS.append(thread)
    thread.start()


def _await_stops(timeout_s: float | None = None) -> None:
    """Give the stop broadcasts still in flight up to `timeout_s` (in all) before the flow
    ends and its cluster closes: a broadcast started just before the end (a busy flow
    process) would otherwise die with the client, leaving an abandoned call running on a
    worker that outlives the run (an external cluster's). A frozen worker that never
    answers holds the end up by at most this."""
    with _STOPS_LOCK:
        pending, _STOPS[:] = list(_STOPS), []
    deadline = time.monotonic() + (STOP_WAIT_S if timeout_s is None else timeout_s)
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))


_STOPS: list[threading.Thread] = []
_STOPS_LOCK = threading.Lock()
STOP_WAIT_S = 10.0


def _withdrawn_since(
    cfg: RunConfig, store: Store, sched: Any, plan_shards: list[str]
) -> tuple[list[str] | None, dict[str, dict[str, Any]]]:
    """Before a finishing round, from one read of the final stage's commit markers: the units
    to generate again when a marker turned unreadable since the loop committed it (withdrawn
    here, logged); else [] when every shard of the final stage is committed, None when not
    (failed, not started for the budget, or given up by verification): nothing is
    published. Second: the usable markers read (shard id -> marker)."""
    run_id = cfg.run_id or ""
    plan = set(plan_shards)
    committed, unreadable = read_commits(store, run_id, final_stage(cfg))
    gone = sorted(sid for sid in unreadable if sid in plan)
    if gone and not (sched.failures or sched.not_started or sched.stopped_by is not None):
        return pending_units(cfg, gone, set(committed_units(store, cfg))), committed
    return ([] if all(sid in committed for sid in plan_shards) else None), committed


def _gpu_annotation(
    cfg: RunConfig, unit: str | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A unit's tasks ask for its stage's resources (a GPU, `stages[i].resources`): only
    workers that advertise them receive them."""
    resources = unit_resources(cfg, unit)
    if resources:
        return dask.annotate(resources=resources)
    return contextlib.nullcontext()


def _placeable(cfg: RunConfig, unit: str, workers: list[str]) -> None:
    """LookupError (the unit fails with it, naming its stage) when no worker of the cluster
    advertises the resources the unit needs: its task would wait forever."""
    resources = unit_resources(cfg, unit)
    if resources and not workers:
        stage = split_key(unit)[0]
        named = next(
            (f"stages[{i}] ({stage})" for i, s in enumerate(cfg.stages) if s.name == stage),
            f"stage {stage}",
        )
        raise LookupError(
            f"{named} needs worker resources {resources} and no worker of the cluster "
            "advertises them (start one with `dask worker ... --resources "
            + ",".join(f"{k}={v:g}" for k, v in resources.items())
            + "`, or change the stage's `resources`)"
        )


def _backoff(cfg: RunConfig) -> list[float]:
    """Exponential backoff between shard attempts: d, 2d, 4d, ... (capped at 5 minutes)."""
    d = cfg.cluster.retry_delay_s
    return [min(d * 2**i, 300.0) for i in range(cfg.cluster.task_retries)] or [0.0]


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
    config: dict[str, Any],
    shard_ids: list[str],
    total: int,
    run_started_at: float | None = None,
    plan_shards: list[str] | None = None,
    committed_before: int | None = None,
) -> dict[str, Any]:
    """Generate the given units (shards of a stage) on the cluster, within the budget if one
    is set, each stage's shard as soon as the shard it reads committed; then publish if every
    shard of the final stage is committed. `total`: the run's units; `plan_shards`: the
    plan's shard ids (default: `shard_ids`, a one-stage run's units); `committed_before`:
    units committed before this call (default: those of `total` not in `shard_ids`, right for
    one stage; a multi-stage run's `shard_ids` hold only the units that can start now)."""
    config = restore_secrets(config)  # the parameters carry *** placeholders, tasks need keys
    cfg = RunConfig.model_validate(config)
    task_config = Opaque(config)  # one value: not walked for futures per unit or task
    # no timeout on a unit's Dask task: it cannot interrupt a blocking call in a worker
    # thread; `cluster.shard_timeout_s` and the derived deadlines are enforced by
    # ShardTimeouts (re-submits overdue shards)
    # each unit's retries run on its worker, exponential backoff with jitter
    retries = Retries(cfg.cluster.task_retries, tuple(_backoff(cfg)), 0.2)
    runner = current_runner()
    run_started_at = run_started_at or time.time()
    slots = start_usage(cfg, run_started_at)  # workers are held (and billed) from here
    if not cfg.cluster.address:  # embedded: its workers warm up while the flow run starts
        waited = wait_warm(runner_client())
        if waited is not None and waited >= 1.0:
            print(f"workers warmed up (code, output store, model): waited {waited:.1f}s")
    started = time.perf_counter()
    checkpoint("generate.started")
    store = Store(cfg.output)
    placed = any(s.resources for s in cfg.stages)  # stages placed on their own workers
    # untrusted workers: no credentials in what they get; each attempt gets a grant
    granter = Granter(cfg, store) if cfg.untrusted_workers() else None
    commit_pool: concurrent.futures.ThreadPoolExecutor | None = None
    if granter is not None:
        print(
            "untrusted workers: they hold no storage credentials; each shard attempt gets "
            "presigned URLs for its input and staging key, the flow checks and commits"
        )
        worker_task_config = Opaque(worker_config(config))
        commit_pool = concurrent.futures.ThreadPoolExecutor(COMMIT_THREADS, "synthgen-commit")
        holders = Holders(runner_client())  # who holds a result, as the scheduler knows
        pool_of_commits = commit_pool

    def able(unit: str | None = None) -> list[str]:
        """The workers that may run (and verify) `unit`: those with its resources."""
        return cluster_workers(runner_client(), unit_resources(cfg, unit))

    def submit(sid: str, avoid: set[str] | None, priority: int, speculative: bool = False) -> Any:
        # plan order first (priority): with guided sizing the big shards start early;
        # `avoid`: workers flagged by verification or late (restricted to the others)
        allowed = None
        if avoid or placed:
            workers = able(sid)
            _placeable(cfg, sid, workers)
            if avoid:
                allowed = [w for w in workers if w not in avoid]
                if not allowed:
                    raise LookupError(f"no worker left (excluded: {', '.join(sorted(avoid))})")
        with _gpu_annotation(cfg, sid), restrict(allowed, priority):
            if granter is not None:
                grant = granter.grant(sid, speculative)
                fut = submit_unit(
                    runner,
                    generate_granted,
                    (worker_task_config, grant.as_dict()),
                    f"generate-{sid}",
                    retries,
                )
                return CommittedFuture(fut, committing(cfg, store, grant, holders), pool_of_commits)
            if speculative:  # a backup copy of a straggler (its own Dask task)
                args: tuple[Any, ...] = (task_config, sid, True)
            else:
                args = (task_config, sid)
            return submit_unit(runner, generate_unit, args, f"generate-{sid}", retries)

    # gates: budget (admission), shard deadlines (ticks, late workers avoided), verification
    # (checks, exclusions)
    _check_api_reach(cfg)  # a worker that cannot report to Prefect fails every task
    budget = BudgetWatch(cfg, slots)
    gates: list[Gate] = [budget]
    deadlines = None
    if cfg.cluster.shard_timeout_s is not None or cfg.cluster.deadlines:
        sizes = _PLAN_SIZES.get(cfg.run_id or "")
        if sizes is None:  # not planned in this process (a flow run started on its own)
            plan = store.read_json(RunLayout(store, cfg.run_id or "").plan_index)
            sizes = {s["shard_id"]: int(s["prompts"]) for s in plan["shards"]}
        deadlines = ShardTimeouts(
            cfg,
            store,
            policy=DeadlinePolicy(cfg, sizes),
            workers=able,
            remove_silent=lambda suspects, silent_s: remove_silent_workers(
                runner_client(), suspects, silent_s
            ),
        )
        gates.append(deadlines)
    verify = None
    if cfg.verify.enabled:  # spot checks on other workers as shards commit (issue 8)
        if granter is not None:  # the flow reads and judges, the verifier only scores
            check = submit_granted_check(
                config,
                store,
                lambda unit: _gpu_annotation(cfg, unit),
                pool_of_commits,
                holders,
            )
        else:
            check = submit_check_task(task_config, lambda unit: _gpu_annotation(cfg, unit))
        verify = VerifyGate(
            cfg,
            config,
            check,
            able,
            store,
            workers_for=able,
        )
        gates.append(verify)

    done_before = total - len(shard_ids) if committed_before is None else committed_before
    last_line = float("-inf")
    # units returned, tokens, $: counted once, for the log lines and the Prefect UI's view
    progress = RunProgress(cfg.run_id or "", total, done_before, started=started)

    # publish-ready files of each shard as it commits, beside the loop (the flow's process)
    prepub = Prepublish(unwrap(task_config), final_stage(cfg), PUBLISH_THREADS_HERE)

    def report(res: dict[str, Any]) -> None:
        nonlocal last_line
        prepub.add(res)
        progress.add(res)
        now = time.perf_counter()
        # a line per shard, at most one a second (plus the first and last): thousands of
        # small shards would otherwise flood the terminal and the Prefect run's log
        if now - last_line < 1.0 and progress.returned not in (1, total - done_before):
            return
        last_line = now
        print(
            f"shard {res['shard_id']} done · {min(progress.done, total)}/{total} shards · "
            f"{res['completion_tokens']} tokens in {res['engine_seconds']:.1f}s · "
            f"${res['cost_usd']:.4f} · run {progress.tokens_per_s():.1f} tokens/s"
        )

    plan_shards = plan_shards if plan_shards is not None else list(shard_ids)
    multi = len(stage_names(cfg)) > 1
    loop = ShardLoop(
        shard_ids,
        submit,
        gates,
        on_result=report,
        successor=(lambda key: next_unit(cfg, key)) if multi else None,
        order=all_units(cfg, plan_shards) if multi else None,
        # the losing copy of a speculated shard (or the abandoned attempt of a re-run one) is
        # stopped by its engine (its task then ends: Dask's view of its worker stays true;
        # a Dask cancel would free the worker in Dask's eyes while it still computes); one
        # not started finds the shard committed when it starts (skipped, no attempt)
        stop_losers=lambda unit: _stop_losers(cfg.run_id or "", unit),
    )
    sched = loop.run()
    # the generate phase: first submission to last result (regeneration rounds added below);
    # dedup, publish and the bookkeeping after it are in the summary's wall_seconds
    gen_seconds = time.perf_counter() - started
    progress.finish()
    checkpoint("generate.done")
    _clear_staging(granter, cfg)
    published = None
    for _ in range(FINISH_ROUNDS):
        withdrawn, committed = _withdrawn_since(cfg, store, sched, plan_shards)
        if withdrawn is None:
            break  # failed or not started (budget): nothing is published
        if not withdrawn:
            # every shard of the final stage committed: run-wide dedup, then publish, both
            # on the cluster; each reads a shard only as its commit marker describes it,
            # withdrawing any that differ
            # not on a worker that missed a deadline (a frozen host stays in the cluster
            # until silent for SILENT_S: the loop can end sooner), and one that goes silent
            # meanwhile is removed (Dask re-runs its tasks elsewhere)
            on = None
            watching: Any = contextlib.nullcontext()
            if deadlines is not None:
                on = deadlines.finishing_workers(cluster_workers(runner_client()))
                watching = deadlines.watching()
            with watching:
                published, withdrawn = _finish(
                    cfg, task_config, store, committed, on, prepub.entries(), prepub.keys
                )
            if not withdrawn:
                break
        print(
            f"{len(withdrawn)} committed shard(s) failed their check and were withdrawn "
            f"({', '.join(withdrawn[:5])}{'...' if len(withdrawn) > 5 else ''}); "
            "generating them again"
        )
        for unit in withdrawn:
            loop.requeue(unit)
        again = time.perf_counter()
        sched = loop.run()  # the same loop and gates (budget, timeouts, verification)
        gen_seconds += time.perf_counter() - again
        progress.finish()
        _clear_staging(granter, cfg)
    prepub.close()
    results, failures = sched.results, sched.failures
    verification = None
    if verify is not None:
        vrun = verify.finish(failures)
        failures, results = vrun.failures, vrun.results  # accepted generations only
        verification = vrun.summary(sum(r["engine_seconds"] for r in sched.results))
    late = deadlines.summary() if deadlines is not None else None
    if late and late["flagged_workers"]:
        print(
            "workers flagged for missed deadlines (no new shards this run): "
            + ", ".join(late["flagged_workers"])
        )
    refused = _refusals(cfg)
    budget_msg = budget_message(cfg, sched, total)
    record_budget(cfg, budget_msg)
    if budget_msg:
        print(budget_msg)
    try:  # attempts whose worker died wrote no ledger row: price them from their markers
        lost = record_lost_attempts(store, cfg.run_id or "", stage_names(cfg))
        if lost:
            print(
                f"{lost} lost attempt(s) (worker died or was abandoned mid-shard, or its "
                "result was not kept) recorded in the ledger"
            )
    except Exception as exc:  # bookkeeping never fails a run
        print(f"warning: could not record lost attempts: {type(exc).__name__}: {exc}")
    finish_usage(cfg, run_started_at, deadlines.removed if deadlines is not None else None)
    manifest = None
    if published is not None:
        manifest = published.done
        if manifest is None:  # the switch: manifest and card, after the workers' rows are in
            summary = cost_summary(cfg)
            extra = published.extra
            if summary:
                extra = {**(extra or {}), "cost": manifest_totals(summary)}
            if late and (late["missed"] or late["flagged_workers"]):
                extra = {**(extra or {}), "deadlines": _deadline_record(late)}
            # a single-stage run's committed units are the markers the publish was made from
            marker_results = (
                [m["result"] for m in committed.values()]
                if stage_names(cfg) == [final_stage(cfg)]
                else None
            )
            manifest = commit_publish(
                cfg, store, published.shards, published.pid, extra, marker_results
            )
        _clear_ready(store, cfg.run_id or "")
    if commit_pool is not None:
        commit_pool.shutdown(wait=True)  # commits of abandoned attempts still in flight
    _await_stops()
    return {
        # one value to Prefect: it walks a flow's return value for futures (~1 s per walk
        # at 10,000 shards' results, several walks as the flow run ends)
        "results": Opaque(results),
        "failures": failures,
        "generate_seconds": gen_seconds,
        "manifest": manifest,
        "budget_message": budget_msg,
        "verification": verification,
        "deadlines": late,
        "refused": refused,
        "forged": dict(sched.forgers) or None,
        # the final stage's markers the publish was made from (a single-stage run's every
        # unit): the summary does not read them again (10,000 markers: ~2 s)
        "committed": Opaque(committed) if manifest is not None else None,
    }


def _clear_ready(store: Store, run_id: str) -> None:
    """Once published: the publish-ready files not moved into it (shards with run-wide drops,
    generated again, or a re-run of a published run) are removed (best effort)."""
    ready = RunLayout(store, run_id).publish_ready
    try:
        store.fs.rm(ready, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as exc:  # housekeeping never fails a run
        print(f"warning: could not remove {store.location(ready)}: {type(exc).__name__}: {exc}")


def _clear_staging(granter: Granter | None, cfg: RunConfig) -> None:
    """Untrusted workers: staged objects of attempts that never committed (failed, abandoned,
    forged) are removed once no attempt runs, so the bucket keeps only the run's files."""
    if granter is None:
        return
    try:
        n = granter.clear_staging(stage_names(cfg))
    except Exception as exc:  # housekeeping never fails a run
        print(f"warning: could not clear the staging keys: {type(exc).__name__}: {exc}")
        return
    if n:
        print(f"untrusted workers: {n} staged object(s) of uncommitted attempts removed")


def _refusals(cfg: RunConfig) -> list[dict[str, Any]] | None:
    """What the scheduler refused of worker certificates this session (certificate roles,
    `synthgen.cluster.roles`), grouped by certificate; None without TLS or when the
    scheduler does not enforce roles (said once in the log)."""
    if cfg.cluster.tls is None:
        return None
    client = runner_client()
    try:
        records = client.sync(client.scheduler.synthgen_refusals)
    except Exception as exc:  # a summary line never fails a run
        print(f"warning: could not ask the scheduler for refused connections: {exc}")
        return None
    if records is None:
        print(
            "warning: the scheduler does not enforce certificate roles: a worker's "
            "certificate can act as a client there (start it with infra/start-scheduler.sh "
            "or `dask scheduler --preload synthgen.cluster.roles`)"
        )
        return None
    groups = by_certificate(list(records))
    for g in groups:
        print(
            f"REFUSED {g['count']} request(s) from certificate {g['certificate']!r} "
            f"(hosts {', '.join(g['peers'])}; workers {', '.join(g['workers']) or 'none named'}): "
            + "; ".join(g["what"][:3])
        )
    return groups


def _deadline_record(late: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps of the run's missed deadlines."""
    return {
        "reruns": sum(late["reruns"].values()),
        "missed": {w: len(m) for w, m in late["missed"].items()},
        "flagged_workers": late["flagged_workers"],
        "removed_workers": late["removed_workers"],
    }


def _push_to_hub(cfg: RunConfig, store: Store) -> None:
    """`output.hub`: the published dataset folder to the Hub, one commit (the token from
    the Secret block or HF_TOKEN; masked)."""
    hub = cfg.output.hub
    if hub is None:
        return
    if hub.token_block:
        token, source = load_secret_token(hub.token_block), hub.token_block
    else:
        token, source = token_from_env(), "HF_TOKEN"
    target = HubTarget(hub.repo, private=hub.private, revision=hub.revision)
    done = push_dataset(
        store, target, token, message=f"synthgen: run {cfg.run_id}", token_source=source
    )
    print(f"pushed {len(done['files'])} files to the Hub: {done['repo']}@{done['revision']}")


def summary_artifact_key(run_id: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return f"{SUMMARY_ARTIFACT_PREFIX}-{slug}"[:100]


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:  # execute() called outside a flow run (benchmarks)
        return logging.getLogger("synthgen")


_named: dict[tuple[str, tuple[str, ...]], RunConfig] = {}  # loaded for the run's name


def _run_name() -> str:
    params = flow_run.parameters or {}
    try:
        path = resolve_config_ref(params["config"], deployment_default_config())
        overrides = tuple(params.get("overrides") or [])
        cfg = load_config(path, list(overrides))
        _named[(path, overrides)] = cfg  # the flow takes it from here: one load per run
        return f"{cfg.name}/{cfg.run_id}"
    except Exception:
        return f"invalid-config/{params.get('config', '?')}"


@flow(name="synthgen-run", log_prints=True, persist_result=False, flow_run_name=_run_name)
def synthgen_run(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the run described by the YAML config at `config` plus overrides."""
    started = time.perf_counter()
    check_overrides(overrides or [], "overrides")  # no credentials in run parameters
    config = resolve_config_ref(config, deployment_default_config())
    cfg = _named.pop((config, tuple(overrides or [])), None) or load_config(config, overrides)
    return execute(cfg, started)


def run_checked(cfg: RunConfig, config: str, overrides: list[str]) -> dict[str, Any]:
    """The CLI's way into `synthgen-run`: `cfg` is `config` + `overrides`, already validated
    and preflighted by the caller, so the run starts up once. The flow run shows the same
    parameters (path and overrides) as `synthgen_run`; the config itself travels in memory,
    never as a Prefect parameter."""
    started = time.perf_counter()

    def checked_run(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
        return execute(cfg, started, preflighted=True)

    checked_run.__doc__ = synthgen_run.__doc__
    entry = flow(
        checked_run,
        name="synthgen-run",
        log_prints=True,
        persist_result=False,
        flow_run_name=f"{cfg.name}/{cfg.run_id}",
    )
    return entry(config=config, overrides=overrides)


def execute(
    cfg: RunConfig, started: float | None = None, preflighted: bool = False
) -> dict[str, Any]:
    """Run a validated config. `preflighted`: the caller (the CLI) ran the preflight, all but
    the storage check when the credentials live in a Prefect block (readable only now)."""
    started = started or time.perf_counter()
    output = cfg.output  # a Store resolves output.credentials_block itself (flows.credentials)
    protect(cfg)  # the masker learns the config's credentials (a dump shows only ***)
    # model, scheduler, credentials, writable output: all checked before any GPU time
    if not preflighted:
        print(run_preflight(cfg, output).render())
    elif output.credentials_block is not None:
        print(f"preflight: {check_output(output)}")
    store = Store(output)
    with RunLease(store, cfg.run_id or "", ttl_s=cfg.output.lease_ttl_s) as lease:
        return _execute_leased(cfg, store, lease, started)


def _execute_leased(
    cfg: RunConfig, store: Store, lease: RunLease, started: float
) -> dict[str, Any]:
    check_owner(cfg, store)  # another run's dataset here: refuse before any GPU time
    plan = write_plan(cfg, store)
    # the flow's deadlines need each shard's size: from here, not read back (0.4 s on S3)
    _PLAN_SIZES[cfg.run_id or ""] = {s.shard_id: len(s) for s in plan.shards}
    checkpoint("run.planned")
    bench = write_benchmark_index(cfg, store)  # hashed once here; the workers load the file
    if bench:
        print(
            f"decontamination: {bench['ngrams']} {bench['ngram']}-grams of "
            f"{', '.join(b['name'] for b in bench['benchmarks'])}"
        )
    run_id = cfg.run_id or ""
    layout = RunLayout(store, run_id)
    shard_ids = [s.shard_id for s in plan.shards]
    units = all_units(cfg, shard_ids)
    already = committed_units(store, cfg)
    todo = pending_units(cfg, shard_ids, set(already))
    stages = stage_names(cfg)
    of_stages = f" x {len(stages)} stages ({', '.join(stages)})" if len(stages) > 1 else ""
    print(
        f"run {run_id}: {plan.prompts} prompts in {len(plan.shards)} shards{of_stages} "
        f"({len(already)} already committed, {len(units) - len(already)} to generate) -> "
        f"{store.url()}"
    )
    if plan.rejects:
        print(f"{plan.rejects} bad prompt records quarantined: {layout.url(layout.rejects)}")
    config = stash_secrets(cfg)  # flow parameters: no credentials
    # an embedded cluster starts (and its workers warm up) before Prefect starts the flow
    # run: its workers are held (metered) from their start, not from the flow's
    held_from = time.time()
    try:
        with embedded_cluster(cfg, runner_kwargs(cfg)) as kwargs:
            runner = SynthgenTaskRunner(**kwargs)  # embedded: metered to process exit
            gen = generate_flow.with_options(task_runner=runner)(
                config, todo, len(units), held_from, shard_ids, len(already)
            )
    finally:  # a served process runs many runs: their sizes are not kept
        _PLAN_SIZES.pop(run_id, None)
    lease.check()
    publish_cost_artifact(cfg)  # after the cluster closed: workers' final rows are in
    final = final_stage(cfg)
    known = unwrap(gen.get("committed"))
    if known is not None and stage_names(cfg) == [final]:
        committed = {unit_key(final, sid): m for sid, m in known.items()}
    else:
        committed = committed_units(store, cfg)
    missing = [u for u in reversed(units) if u not in committed]
    if not missing and gen["manifest"] is None:  # committed, but failed their checks again
        raise RunIncomplete(
            f"run {run_id}: every shard is committed but the dataset was not published: "
            f"shards kept failing their check against their commit markers "
            f"({FINISH_ROUNDS} rounds); see the log for the files. Re-run the same command."
        )
    partial = bool(missing and gen["budget_message"])
    status = "complete" if not missing else ("partial" if partial else "failed")
    manifest = gen["manifest"]
    summary = RunSummary.build(
        cfg=cfg,
        store=store,
        status=status,
        shards_total=len(units),
        generated=unwrap(gen["results"]),
        committed=[m["result"] for m in committed.values()],
        missing=missing,
        generate_seconds=gen["generate_seconds"],
        wall_seconds=time.perf_counter() - started,
        manifest=manifest,
        rejects=plan.rejects,
        workers=per_worker(unwrap(gen["results"])),
        verification=gen.get("verification"),
        deadlines=gen.get("deadlines"),
        refused=gen.get("refused"),
        forged=gen.get("forged"),
    )
    _logger().info("summary\n%s", summary.render_text())
    if flow_run.id:  # a Prefect flow run (not a bare execute() call in a benchmark)
        create_markdown_artifact(
            key=summary_artifact_key(run_id),
            markdown=f"## synthgen run `{cfg.name}` / `{run_id}`\n\n{summary.render_markdown()}",
            description=f"cost and throughput of run {run_id}",
        )
    if status == "complete" and cfg.output.hub is not None:
        _push_to_hub(cfg, store)
    if partial:
        print(gen["budget_message"])
    elif missing:
        raise RunIncomplete(
            f"run {run_id}: {len(missing)} of {len(units)} shards failed "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); committed shards "
            f"are kept: re-run the same command to generate only the missing ones. "
            f"Errors: {'; '.join(gen['failures'][:3])}"
        )
    return summary.as_dict()
