"""Shard attempts: which ran, which committed, which were lost; and the shard timeout.

Every attempt of a shard writes `runs/RUN_ID/attempts/SHARD.N.UID.json` when it starts (see
`stages.generate.run_shard`; the names are `io.layout.StageLayout.attempt`). An attempt is *committed* when the shard's commit marker names its
number, *lost* otherwise (its worker died, it was timed out, or it raised).

`AttemptWatch` is the shard timeout. A Python thread cannot be interrupted inside a blocking
call (Prefect's `timeout_seconds` only fires after the call returns when a task runs in a Dask
worker thread), so the flow watches attempts instead: an attempt is timed from the moment the
flow first sees its marker, on the flow's own clock (no cross-host clock skew), and the flow
re-submits the shard once it is overdue. The abandoned attempt, should it ever return, finds
the commit marker and writes nothing (`status="superseded"`).
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from synthgen.io.checked import ShardWithdrawn, read_marker
from synthgen.io.layout import DEFAULT_STAGE, RunLayout, StageLayout
from synthgen.io.store import Store, read_many


@dataclass(frozen=True)
class AttemptName:
    shard_id: str
    attempt: int
    name: str

    @classmethod
    def parse(cls, name: str) -> AttemptName | None:
        parts = name.removesuffix(".json").rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), name)


def attempt_dir(store: Store, run_id: str, stage: str = DEFAULT_STAGE) -> str:
    return RunLayout(store, run_id).stage(stage).attempts_dir


def shard_attempt_names(store: Store, layout: StageLayout, shard_id: str) -> list[str]:
    """Names of the entries of `layout`'s attempts directory that start with `shard_id.`:
    the shard's attempt start markers (and any write of one still in progress), the same
    names a listing of the whole directory filtered by that prefix gives.

    Only the shard's own entries are listed: a prefix listing on S3 (one ListObjectsV2 with
    a Prefix, whatever the size of the run), one directory scan in C on a local disk. Listing
    the whole directory per attempt (`Store.ls`) grew with the run: on S3 one request per
    1,000 attempts of every shard, for every attempt."""
    directory, prefix = layout.attempts_dir, f"{shard_id}."

    def _names() -> list[str]:
        if store.local:
            try:
                with os.scandir(directory) as entries:
                    return sorted(e.name for e in entries if e.name.startswith(prefix))
            except (FileNotFoundError, NotADirectoryError):
                return []
        if store.output.uri.startswith("s3://"):
            try:
                found = store.fs.find(directory, maxdepth=1, withdirs=True, prefix=prefix)
            except FileNotFoundError:
                return []
            names = (posixpath.basename(p.rstrip("/")) for p in found)
            return sorted(n for n in names if n.startswith(prefix))
        return [n for n in store.ls(directory) if n.startswith(prefix)]

    return store.retry(_names, f"listing {store.location(directory)}/{prefix}*")


def next_attempt(store: Store, layout: StageLayout, shard_id: str) -> int:
    """The number of a new attempt of `shard_id`: 1 + its attempts so far."""
    return 1 + len(shard_attempt_names(store, layout, shard_id))


def commit_markers(
    store: Store, run_id: str, stage: str = DEFAULT_STAGE
) -> dict[str, dict[str, Any]]:
    """shard_id -> commit marker, for every committed shard of the run's `stage`. A marker
    that is not a usable commit marker (garbage, no sha256 or row count) is withdrawn."""
    return read_commits(store, run_id, stage)[0]


def withdraw_unreadable(store: Store, run_id: str, stage: str = DEFAULT_STAGE) -> list[str]:
    """Withdraw every commit marker of `stage` that is not a usable one (logged, as by
    `commit_markers`); returns their shard ids (sorted), the shards to generate again."""
    return sorted(read_commits(store, run_id, stage)[1])


def read_commits(
    store: Store, run_id: str, stage: str = DEFAULT_STAGE
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """One listing and read of `stage`'s commit markers: (shard_id -> usable marker, the
    shard ids whose marker was not usable, withdrawn here and logged). The markers are read
    READ_THREADS at a time: one request each, 10,000 of them at the end of a run (one after
    another on S3: a round trip each)."""
    layout = RunLayout(store, run_id).stage(stage)
    ids = [n.removesuffix(".json") for n in store.ls(layout.commits_dir) if n.endswith(".json")]

    def one(shard_id: str) -> dict[str, Any] | None | ShardWithdrawn:
        try:
            return read_marker(store, run_id, shard_id, stage)
        except ShardWithdrawn as exc:  # a garbage marker: withdrawn (logged), not committed
            return exc

    markers = read_many(one, ids, READ_THREADS, store.local)
    out, withdrawn = {}, []
    for shard_id, marker in zip(ids, markers, strict=True):
        if isinstance(marker, ShardWithdrawn):
            withdrawn.append(shard_id)
        elif marker is not None:
            out[shard_id] = marker
    return out, withdrawn


READ_THREADS = 16


def attempt_history(store: Store, run_id: str, stage: str = DEFAULT_STAGE) -> list[dict[str, Any]]:
    """Every attempt of the run, oldest first per shard, with `outcome` committed | lost |
    running (no commit yet for its shard); a committed one with its `finished_at`."""
    commits = commit_markers(store, run_id, stage)
    directory = attempt_dir(store, run_id, stage)
    out = []
    for name in store.ls(directory):
        parsed = AttemptName.parse(name)
        if parsed is None:
            continue
        marker = store.read_json(posixpath.join(directory, name))
        commit = commits.get(parsed.shard_id)
        if commit is None:
            outcome = "running"
        elif int(commit["result"].get("attempt", 0)) == parsed.attempt:
            outcome = "committed"
            marker = {**marker, "finished_at": commit["result"].get("finished_at")}
        else:
            outcome = "lost"
        out.append({**marker, "attempt": parsed.attempt, "outcome": outcome})
    out.sort(key=lambda a: (a["shard_id"], a["attempt"]))
    return out


class AttemptWatch:
    """Times shard attempts from when their start markers appear; says which are overdue.

    `timeout_s`: one timeout for every attempt, or `(shard_id, worker) -> seconds`, asked
    for each attempt with the worker its start marker names (read once per attempt)."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        timeout_s: float | Callable[[str, str], float],
        clock: Callable[[], float] = time.monotonic,
        stage: str = DEFAULT_STAGE,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.stage = stage
        self.timeout_s = timeout_s
        self.clock = clock
        # shard -> (latest attempt, first seen, its worker)
        self._seen: dict[str, tuple[int, float, str]] = {}
        self._flagged: set[tuple[str, int]] = set()
        self._listed = 0  # markers in the directory, as last counted
        self.full_polls = 0  # listings of the whole directory
        self.prefix_polls = 0  # polls that listed running shards' markers by prefix

    PAGE = 1000  # keys per S3 listing request

    def _worker_of(self, name: str) -> str:
        try:
            marker = self.store.read_json(posixpath.join(self._dir, name))
        except Exception:  # unreadable (still being written): the worker is unknown
            return ""
        return str(marker.get("worker", "")) if isinstance(marker, dict) else ""

    @property
    def _dir(self) -> str:
        return attempt_dir(self.store, self.run_id, self.stage)

    def poll(self, shards: Collection[str] | None = None) -> None:
        """Look for new attempt start markers: of `shards` (the ones running) or of all.

        On S3 one listing of the whole directory is one request per 1,000 markers of the run,
        so once that is more requests than there are running shards, each running shard's
        markers are listed by prefix instead (one request each, `shard_attempt_names`):
        a poll costs at most min(the run's markers / 1,000, running shards) requests, flat
        however large the run grows. A local directory is scanned whole (one scan in C is
        cheaper than one per shard)."""
        now = self.clock()
        if shards is not None and not self.store.local and len(shards) < self._pages():
            layout = RunLayout(self.store, self.run_id).stage(self.stage)
            names = [n for sid in shards for n in shard_attempt_names(self.store, layout, sid)]
            self.prefix_polls += 1
        else:
            names = self.store.ls(self._dir)
            self._listed = len(names)
            self.full_polls += 1
        for name in names:
            parsed = AttemptName.parse(name)
            if parsed is None:
                continue
            latest = self._seen.get(parsed.shard_id)
            if latest is None or parsed.attempt > latest[0]:
                if latest is None and shards is not None:
                    self._listed += 1  # a marker the last whole listing did not count
                worker = self._worker_of(name) if callable(self.timeout_s) else ""
                self._seen[parsed.shard_id] = (parsed.attempt, now, worker)

    def _pages(self) -> int:
        """Requests one listing of the whole directory takes on S3 (1,000 keys a page)."""
        return 1 + self._listed // self.PAGE

    def worker(self, shard_id: str) -> str:
        """The worker of `shard_id`'s latest attempt seen ("" when unknown)."""
        latest = self._seen.get(shard_id)
        return latest[2] if latest is not None else ""

    def elapsed(self, shard_id: str) -> float | None:
        """Seconds since `shard_id`'s latest attempt was first seen (None: not seen)."""
        latest = self._seen.get(shard_id)
        return None if latest is None else self.clock() - latest[1]

    def timeout(self, shard_id: str) -> float | None:
        """The deadline (seconds from first sight) of `shard_id`'s latest attempt seen."""
        latest = self._seen.get(shard_id)
        if latest is None:
            return None
        if callable(self.timeout_s):
            return self.timeout_s(shard_id, latest[2])
        return self.timeout_s

    def overdue(self, shard_id: str) -> int | None:
        """The attempt number of `shard_id` that has run past its timeout (once per attempt)."""
        latest = self._seen.get(shard_id)
        timeout = self.timeout(shard_id)
        if latest is None or timeout is None:
            return None
        attempt, since, _ = latest
        if self.clock() - since < timeout or (shard_id, attempt) in self._flagged:
            return None
        self._flagged.add((shard_id, attempt))
        return attempt
