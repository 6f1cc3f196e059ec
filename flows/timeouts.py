"""`cluster.shard_timeout_s`, enforced by the flow.

Prefect's task `timeout_seconds` cannot interrupt a blocking call (a stuck engine, a hung
socket) in a Dask worker thread: measured, it fires only after the call returns. So the flow
watches the attempts instead (`synthgen.io.attempts.AttemptWatch`): once a shard's current
attempt has run past the timeout, the shard is submitted again (at most
`cluster.task_retries` times) and the abandoned attempt's result, should it ever come, is
ignored (and it commits nothing: `run_shard` reports it `superseded`).

The scheduler (`synthgen.cost.budget.schedule`, through `flows.cost.run_budgeted`) sees one
`ShardRun` per shard; its `result()` is that of the shard's latest attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.futures import wait

from synthgen.config import RunConfig
from synthgen.io.attempts import AttemptWatch
from synthgen.io.store import Store


class ShardRun:
    """The shard's current attempt future (replaced on re-submission)."""

    def __init__(self, shard_id: str, future: Any) -> None:
        self.shard_id = shard_id
        self.future = future
        self.error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.future.result()


class ShardTimeouts:
    def __init__(
        self,
        cfg: RunConfig,
        store: Store,
        resubmit: Callable[[str], Any],
        poll_s: float = 1.0,
    ) -> None:
        if cfg.cluster.shard_timeout_s is None:
            raise ValueError("ShardTimeouts needs cluster.shard_timeout_s")
        self.timeout = cfg.cluster.shard_timeout_s
        self.max_reruns = cfg.cluster.task_retries
        self.watch = AttemptWatch(store, cfg.run_id or "", self.timeout)
        self.resubmit = resubmit
        self.poll_s = poll_s
        self.reruns: dict[str, int] = {}

    def wrap(self, shard_id: str, future: Any) -> ShardRun:
        return ShardRun(shard_id, future)

    def wait_any(self, pending: set[ShardRun]) -> set[ShardRun]:
        """Block until a shard finishes (or runs out of re-runs); re-submit overdue ones."""
        while True:
            by_future = {run.future: run for run in pending}
            done = wait(list(by_future), timeout=self.poll_s).done
            if done:
                return {by_future[f] for f in done}
            self.watch.poll()
            given_up: set[ShardRun] = set()
            for run in pending:
                attempt = self.watch.overdue(run.shard_id)
                if attempt is None:
                    continue
                n = self.reruns.get(run.shard_id, 0)
                if n >= self.max_reruns:
                    run.error = TimeoutError(
                        f"shard {run.shard_id}: attempt {attempt} ran past "
                        f"cluster.shard_timeout_s={self.timeout:g}s and no re-runs are left "
                        f"(cluster.task_retries={self.max_reruns})"
                    )
                    given_up.add(run)
                    continue
                self.reruns[run.shard_id] = n + 1
                print(
                    f"shard {run.shard_id}: attempt {attempt} ran past cluster.shard_timeout_s="
                    f"{self.timeout:g}s; abandoning it and re-running the shard (re-run {n + 1})"
                )
                run.future = self.resubmit(run.shard_id)
            if given_up:
                return given_up
