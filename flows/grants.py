"""The trusted side of untrusted workers (`cluster.untrusted_workers`, issue 17 item 3).

For each shard attempt the flow decides its attempt number, writes its start marker, and
makes its `Grant` (presigned GET URLs for what it reads, one PUT URL for its staging key),
so the worker needs neither to list nor to read markers. The attempt's future commits its
staged output on the flow's side when its result is taken (`CommittedFuture`,
`synthgen.stages.commit.commit_staged`).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from synthgen.cluster.client import workers_info
from synthgen.config import RunConfig
from synthgen.cost.leases import WorkerIdentity
from synthgen.io.attempts import next_attempt
from synthgen.io.checked import ShardWithdrawn, read_marker
from synthgen.io.grant import Grant, Presigner
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.commit import FlowView, commit_staged
from synthgen.stages.decontam import index_paths
from synthgen.stages.generate import stale_upstream
from synthgen.stages.units import split_key, stage_config, upstream


class Granter:
    """Makes the grants of one run's shard attempts (the flow's process only)."""

    def __init__(self, cfg: RunConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.presigner = Presigner(store)
        self.run_id = cfg.run_id or ""
        self.layout = RunLayout(store, self.run_id)
        self._index: dict[str, str] | None = None

    def _decontam(self) -> dict[str, str]:
        """The decontamination index's files -> their version (read once per run)."""
        if self._index is None:
            self._index = {}
            if self.cfg.clean.enabled and self.cfg.clean.decontaminate.enabled:
                for path in index_paths(self.store, self.run_id):
                    self._index[path] = str(self.store.retry(
                        lambda p=path: self.store.fs.ukey(p), f"checking {path}"
                    ))  # fmt: skip
        return self._index

    def grant(self, unit: str, speculative: bool = False) -> Grant:
        stage, shard_id = split_key(unit)
        layout = self.layout.stage(stage)
        try:
            done = read_marker(self.store, self.run_id, shard_id, stage)
        except ShardWithdrawn:
            done = None
        if done is not None and stale_upstream(
            self.store, self.run_id, self.cfg, stage, shard_id, done
        ):
            self.store.rm(layout.commit(shard_id))  # as run_shard: generated again
        attempt = next_attempt(self.store, layout, shard_id)
        uid = uuid.uuid4().hex[:8]
        self.store.write_json(
            layout.attempt(shard_id, attempt, uid),
            {
                "shard_id": shard_id,
                "attempt": attempt,
                "worker": "",  # not known yet: the scheduler places the task
                "host": "",
                "started_at": datetime.now(UTC).isoformat(),
                "granted": True,
                **({"speculative": True} if speculative else {}),
            },
        )
        staged = layout.staged(shard_id, attempt, uid)
        reads: list[str] = []
        expect: dict[str, dict[str, Any]] = {}
        up = upstream(self.cfg, stage) if stage_config(self.cfg, stage) is not None else None
        if up is None:
            reads.append(self.layout.plan_prompts(shard_id))
        else:
            marker = read_marker(self.store, self.run_id, shard_id, up)
            if marker is None:
                raise FileNotFoundError(
                    f"unit {unit}: its upstream {up}:{shard_id} is not committed"
                )
            path = self.layout.stage(up).shard(shard_id)
            reads.append(path)
            expect[path] = {
                "stage": up,
                "attempt": marker.get("result", {}).get("attempt"),
                "sha256": marker["sha256"],
                "rows": marker["rows"],
            }
        versions = self._decontam()
        reads += list(versions)
        url = self.presigner.url
        return Grant(
            unit=unit,
            attempt=attempt,
            root=self.store.root,
            staged=staged,
            get={p: url("GET", p) for p in reads},
            put={staged: url("PUT", staged)},
            expect=expect,
            versions=versions,
            speculative=speculative,
        )

    def clear_staging(self, stages: list[str]) -> int:
        """Remove what is left under the run's staging keys (attempts that failed, were
        abandoned or forged): the bucket keeps only the run's own files. Returns the count."""
        n = 0
        for stage in stages:
            directory = self.layout.stage(stage).staging_dir
            for name in self.store.ls(directory):
                self.store.rm(f"{directory}/{name}")
                n += 1
        return n


class CommittedFuture:
    """A generate task's future that is done once its staged output is committed on the
    flow's side (`commit_staged`, run in `pool` as soon as the task returns, so that
    commits of many workers' shards overlap and the generate loop never waits on one);
    `result()` is the unit's result, or raises the task's error or `ForgedOutput` (naming
    the worker that held the task's result)."""

    def __init__(
        self,
        inner: Any,
        commit: Callable[[Any, str | None, float], dict[str, Any]],
        pool: concurrent.futures.Executor,
    ) -> None:
        self._submitted = time.monotonic()  # the task's submission: bounds its duration
        self._inner = inner
        self._commit = commit
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable[[Any], None]] = []
        self._value: Any = None
        self._error: BaseException | None = None
        inner.add_done_callback(lambda _: self._submit(pool))

    def _submit(self, pool: concurrent.futures.Executor) -> None:
        try:
            pool.submit(self._finish)
        except RuntimeError:  # the flow is over (an abandoned attempt returning late)
            self._error = RuntimeError("returned after the run's generate loop ended")
            self._done.set()

    def _finish(self) -> None:
        try:
            res = self._inner.result()
            held_s = time.monotonic() - self._submitted
            holder = getattr(self._inner, "_holder", None)
            self._value = self._commit(res, holder() if holder else None, held_s)
        except BaseException as exc:  # the task's error, a forged result, a storage error
            self._error = exc
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"unit not committed within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


COMMIT_THREADS = 8  # trusted commits in flight in the flow's process


def committing(
    cfg: RunConfig, store: Store, grant: Grant, holders: Holders | None = None
) -> Callable[[Any, str | None, float], dict[str, Any]]:
    """The commit of `grant`'s attempt: its ledger row priced by the flow (the lease of
    the certificate the holder presented, else the table) over at most the time the flow
    saw the task out (`synthgen.stages.commit.FlowView`)."""

    def commit(res: Any, worker: str | None, held_s: float) -> dict[str, Any]:
        who = holders.identity(worker) if holders is not None and worker else None
        return commit_staged(cfg, store, grant, res, worker, FlowView(held_s, who))

    return commit


class Holders:
    """Who the workers are as the scheduler knows them (not as they say): the CN of the
    certificate each presented in its TLS handshake (`synthgen.cluster.roles`, on a
    scheduler that enforces roles) and its Dask name; looked up again for an address not
    seen yet."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._known: dict[str, WorkerIdentity] = {}
        self._lock = threading.Lock()

    def identity(self, address: str) -> WorkerIdentity:
        with self._lock:
            if address not in self._known:
                self._refresh()
            return self._known.get(address, WorkerIdentity())

    def _refresh(self) -> None:
        try:
            cns = dict(self._client.sync(self._client.scheduler.synthgen_worker_certificates))
        except Exception:  # a scheduler without roles: no certificate names (leases by name)
            cns = {}
        try:
            info = workers_info(self._client)
        except Exception:
            info = {}
        for address in set(cns) | set(info):
            name = info.get(address, {}).get("name")
            self._known[address] = WorkerIdentity(
                cert_cn=cns.get(address), name=str(name) if name is not None else None
            )


__all__ = ["CommittedFuture", "Granter", "Holders", "committing"]
