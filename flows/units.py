"""What Dask workers run for a run's units and end-of-run tasks (plain Dask tasks, no
Prefect task runs), in a module that does not import Prefect.

A worker imports the module of every function it is sent (they are pickled by reference):
with these in `flows.run` and `flows.task_runner`, a fresh worker imported Prefect (2.2 s
of CPU here) and the flow's whole module tree before its first unit, 4.3 s against 1.8 s
for this module's (`benchmarks/RESULTS-speed.md`), on every GPU host's every worker start.
The flow's modules import these names from here. A run whose output credentials live in a
Prefect block loads `flows.credentials` (Prefect) on the worker when a unit opens the store
(`credentials_resolver`)."""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import msgpack
from distributed import worker_client

from synthgen.config import RunConfig
from synthgen.config.secrets import protect
from synthgen.io.checked import ShardWithdrawn
from synthgen.io.layout import RunLayout, split_key
from synthgen.io.store import Store
from synthgen.stages.dedup.cross import ShardKeys
from synthgen.stages.dedup.stage import dedup_run
from synthgen.stages.generate import ShardTask, run_granted, run_shard
from synthgen.stages.publish import prepare_publish, publish_shard, ready_shard
from synthgen.stages.units import final_stage
from synthgen.verify.check import VerifyTask, verify_shard
from synthgen.verify.wire import score


class Opaque:
    """A task parameter Prefect passes through as one value, without walking into it.

    Prefect walks every task parameter looking for futures and states: on the flow side
    (prefect-dask's submit, twice) and on the worker (the task run's inputs, then parameter
    resolution). A run config is a few hundred nested nodes and holds no futures; passing it
    as an `Opaque` skips those walks (measured with py-spy on
    benchmarks/bench_orchestration.py: the worker's walks of task inputs went from 246 to 32
    samples over 240 tasks). Tasks take `unwrap(param)`.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Opaque({type(self.value).__name__})"


def unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Opaque) else value


# What a task run on a TLS cluster sends back: plain data in this envelope, never a pickle.
ENVELOPE = "synthgen-result/1"


def _plain(value: Any) -> Any:
    """msgpack gives tuples for lists: back to lists (results are JSON-like)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _completed(value: Any) -> dict[str, Any]:
    """A task's return value in its envelope, or a failure when it is not plain data."""
    try:
        msgpack.dumps(value, use_bin_type=True)
    except Exception:
        return {
            "envelope": ENVELOPE,
            "state": "FAILED",
            "message": f"the task's result is not plain data ({type(value).__name__})",
        }
    return {"envelope": ENVELOPE, "state": "COMPLETED", "result": value}


@dataclass(frozen=True)
class Retries:
    """A unit's retries on its worker: `delays[i]` seconds (+- `jitter` of it) before retry
    i + 1 (the last delay repeats); `retries` re-runs after an exception, then it fails."""

    retries: int = 0
    delays: tuple[float, ...] = (0.0,)
    jitter: float = 0.0

    def delay(self, retry: int) -> float:
        base = self.delays[min(retry, len(self.delays) - 1)] if self.delays else 0.0
        return max(0.0, base * (1 + self.jitter * random.uniform(-1.0, 1.0)))


_unit_log = logging.getLogger("synthgen.units")


def run_unit(fn: Any, args: tuple[Any, ...], name: str, retries: Retries) -> Any:
    """What a Dask worker runs for a unit: `fn(*args)`, run again after an exception up to
    `retries.retries` times (each call is a new attempt: a new ledger row, a new attempt
    number); the last exception is raised to the flow."""
    for attempt in range(retries.retries + 1):
        try:
            return fn(*args)
        except Exception as exc:
            if attempt >= retries.retries:
                raise
            wait = retries.delay(attempt)
            _unit_log.warning(
                "%s failed (%s: %s); retry %d/%d in %.1f s",
                name,
                type(exc).__name__,
                exc,
                attempt + 1,
                retries.retries,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def run_unit_plain(fn: Any, args: tuple[Any, ...], name: str, retries: Retries) -> dict[str, Any]:
    """`run_unit`, returning plain data (`envelope`'s form): what a TLS cluster's worker
    sends back, which the flow reads without unpickling."""
    try:
        value = run_unit(fn, args, name, retries)
    except Exception as exc:
        return {"envelope": ENVELOPE, "state": "FAILED", "message": f"{type(exc).__name__}: {exc}"}
    return _completed(value)


def credentials_resolver(config: dict[str, Any]) -> None:
    """Install the Prefect-block credentials resolver in this process when the run's output
    names a block (`flows.credentials`, which imports Prefect: only for such runs)."""
    output = config.get("output") or {}
    if output.get("credentials_block"):
        importlib.import_module("flows.credentials")


def generate_unit(
    config: dict[str, Any] | Opaque, shard_id: str, speculative: bool = False
) -> dict[str, Any]:
    """One attempt of a unit on a trusted worker: a plain Dask task (`submit_unit`), not a
    Prefect task run; the loop's progress artifact and log lines show it in the UI.

    A unit of the final stage that this attempt committed also gets its publish-ready files
    written here (`ready`: `ready_shard`'s entry), after the commit: on a GPU worker the
    other overlapping unit's generation hides it, where the flow's process would spend its
    own time (and, with the storage server in it, the workers'). Not on a TLS cluster (the
    published folder is written by the trusted side there) and never failing the unit: the
    flow then writes them itself (`Prepublish`)."""
    config = unwrap(config)
    protect(config)  # mask credentials in this worker process's logs too
    credentials_resolver(config)
    res = run_shard(ShardTask(config, shard_id, speculative)).as_dict()
    if res["status"] == "done":
        ready = _ready_here(config, shard_id)
        if ready is not None:
            res["ready"] = ready
    return res


def verify_unit(config: dict[str, Any] | Opaque, shard_id: str, attempt: int) -> dict[str, Any]:
    """A verification check on a trusted worker (`verify_shard`: prepare, score, finish): a
    plain Dask task (`submit_unit`), as the generate units. As a Prefect task run it made a
    worker import Prefect at its first check (2.2 s of CPU; Dask then reckoned every check
    on that worker that long, and sent the next stage's units elsewhere) and made API calls
    per check; the flow's log lines and the run's verify records show each check."""
    config = unwrap(config)
    protect(config)
    credentials_resolver(config)
    return verify_shard(VerifyTask(config, shard_id, attempt)).as_dict()


def score_unit(payload: dict[str, Any] | Opaque) -> dict[str, Any]:
    """The verifier's part of a check on an untrusted worker (`cluster.untrusted_workers`):
    plain data in (the sample and its baseline, `synthgen.verify.wire`), plain data out (the
    scores); no storage, no credentials."""
    return score(unwrap(payload))


_PREPARED: set[str] = set()  # runs whose dedup index meta this worker process checked


def _ready_here(config: dict[str, Any], unit: str) -> dict[str, Any] | None:
    cfg = RunConfig.model_validate(config)
    stage, sid = split_key(unit)
    if cfg.cluster.tls is not None or stage != final_stage(cfg):
        return None
    try:
        if cfg.run_id not in _PREPARED:
            prepare_publish(config)
            _PREPARED.add(cfg.run_id or "")
        return ready_shard(config, sid)
    except Exception as exc:  # the flow writes them (or the publish does)
        logging.getLogger("synthgen.units").warning(
            "%s: publish-ready files not written here: %s: %s", unit, type(exc).__name__, exc
        )
        return None


def generate_granted(config: dict[str, Any] | Opaque, grant: dict[str, Any]) -> dict[str, Any]:
    """A shard attempt on an untrusted worker (`cluster.untrusted_workers`): `config` holds
    no credentials; the worker reads and writes only through `grant`'s presigned URLs and
    returns plain data the flow checks before it commits (`flows.grants`)."""
    return run_granted(unwrap(config), grant)


def publish_batch_task(
    config: dict[str, Any] | Opaque, items: list[tuple[int, str]], pid: str, count: int
) -> list[dict[str, Any]]:
    """Write the files of publish `pid` for a batch of committed shards (`items`: their
    (index, shard id) in the publish); one outcome per shard (`publish_batch`). A plain
    Dask task (`submit_task`), as the generate units."""
    config = unwrap(config)
    credentials_resolver(config)
    return publish_batch(config, items, pid, count)


def publish_batch(
    config: dict[str, Any], items: list[tuple[int, str]], pid: str, count: int
) -> list[dict[str, Any]]:
    """`publish_shard` for each of `items`, up to PUBLISH_IO_THREADS at once (the work is
    storage round trips), each retried twice 2 s apart (not a withdrawn shard, which is
    generated again): `{"shard": its files}` or `{"error": why, "type": the exception's
    class name}` per shard (plain data), so one shard's failure is not its batch's."""

    def failed(exc: Exception) -> dict[str, Any]:
        return {"error": str(exc), "type": type(exc).__name__}

    try:
        prepare_publish(config)  # once per batch, not per shard
    except Exception as exc:  # e.g. a dedup index built with other parameters
        return [failed(exc) for _ in items]

    def one(item: tuple[int, str]) -> dict[str, Any]:
        index, shard_id = item
        try:
            return {"shard": _publish_one(config, shard_id, pid, index, count)}
        except Exception as exc:  # ShardWithdrawn: the flow generates the shard again
            return failed(exc)

    if len(items) <= 1:
        return [one(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(min(PUBLISH_IO_THREADS, len(items))) as pool:
        return list(pool.map(one, items))


# Shards of one publish batch written at once: each is a few storage round trips (read the
# shard and its marker, write its files and index part), so a worker thread waiting on one
# at a time left the end-of-run phase bound by latency (benchmarks/RESULTS-speed.md)
PUBLISH_IO_THREADS = 8


def _publish_one(
    config: dict[str, Any], shard_id: str, pid: str, index: int, count: int
) -> dict[str, Any]:
    for attempt in range(PUBLISH_TRIES):
        try:
            return publish_shard(
                config, shard_id, publish_id=pid, index=index, count=count, index_meta_ready=True
            )
        except ShardWithdrawn:
            raise
        except Exception:
            if attempt == PUBLISH_TRIES - 1:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


PUBLISH_TRIES = 3


DEDUP_RETRIES = Retries(1, (2.0,), 0.2)


def dedup_task(
    config: dict[str, Any] | Opaque,
    shard_ids: list[str],
    markers: dict[str, dict[str, Any]] | None = None,
    keys: dict[str, ShardKeys] | Opaque | None = None,
) -> dict[str, Any]:
    """Run-wide dedup on the cluster this task runs in (its map/shuffle/verify tasks are
    submitted through the worker's client; this task's thread is seceded meanwhile). A
    plain Dask task (`submit_task`, retried once): a Prefect task run's start on a worker
    that has run none cost ~7 s at the end of a run (benchmarks/RESULTS-speed.md).
    `markers`: the shards' (sha256, rows) as the flow read them (None: read here); `keys`:
    the dedup keys of the shards indexed as they committed (`Prepublish`)."""
    config = unwrap(config)
    credentials_resolver(config)
    cfg = RunConfig.model_validate(config)
    with worker_client() as client:
        return dedup_on(client, cfg, shard_ids, markers, unwrap(keys))


def dedup_on(
    client: Any,
    cfg: RunConfig,
    shard_ids: list[str],
    markers: dict[str, dict[str, Any]] | None = None,
    keys: dict[str, ShardKeys] | None = None,
) -> dict[str, Any]:
    store = Store(cfg.output)
    layout = RunLayout(store, cfg.run_id or "")
    started = time.perf_counter()
    res = dedup_run(client, cfg, store, shard_ids, markers, keys)
    return {
        "rows_checked": res.rows,
        "shards_indexed": res.indexed,  # keys from their commit: not read again
        "candidate_pairs": res.candidate_pairs,
        "verified_pairs": res.verified_pairs,
        "drop_counts": res.counts,
        "seconds": round(time.perf_counter() - started, 3),
        "withdrawn": res.withdrawn,  # shards that failed their check: generated again
        # their publish-ready files do not apply (`ready_shard`: written without drops)
        "dropped_shards": sorted(set(res.drops.column("shard_id").to_pylist())),
        # each publish task reads its shard's part of the drops (the flow ships none)
        "drops_file": layout.url(layout.dedup_drops),
        "drops_sha256": res.digest,
    }
