"""`cluster.shard_timeout_s`, enforced by the flow.

Prefect's task `timeout_seconds` cannot interrupt a blocking call (a stuck engine, a hung
socket) in a Dask worker thread: measured, it fires only after the call returns. So the flow
watches the attempts instead (`synthgen.io.attempts.AttemptWatch`): once a shard's current
attempt has run past the timeout, the shard is submitted again (at most
`cluster.task_retries` times) and the abandoned attempt's result, should it ever come, is
ignored (and it commits nothing: `run_shard` reports it `superseded`).

This is a gate of the generate loop (flows/loop.py): `on_tick` polls the attempt markers and
asks the loop to `resubmit` an overdue shard (or to `fail` it once no re-run is left); the
loop ignores the abandoned future's result.
"""

from __future__ import annotations

from flows.loop import Gate
from synthgen.config import RunConfig
from synthgen.io.attempts import AttemptWatch
from synthgen.io.layout import split_key
from synthgen.io.store import Store
from synthgen.stages.units import stage_names


class ShardTimeouts(Gate):
    def __init__(
        self,
        cfg: RunConfig,
        store: Store,
        poll_s: float = 1.0,
        watch: AttemptWatch | None = None,
    ) -> None:
        if cfg.cluster.shard_timeout_s is None:
            raise ValueError("ShardTimeouts needs cluster.shard_timeout_s")
        self.timeout = cfg.cluster.shard_timeout_s
        self.max_reruns = cfg.cluster.task_retries
        # one watch per generation stage (a unit is one stage's shard)
        self.watches = {
            name: AttemptWatch(store, cfg.run_id or "", self.timeout, stage=name)
            for name in stage_names(cfg)
        }
        if watch is not None:
            self.watches = {watch.stage: watch}
        self.tick_s = poll_s
        self.reruns: dict[str, int] = {}

    def on_tick(self) -> None:
        """Re-submit the running shards whose current attempt is overdue."""
        for watch in self.watches.values():
            watch.poll()
        for shard_id in list(self.loop.current):
            stage, shard = split_key(shard_id)
            watch = self.watches.get(stage)
            attempt = watch.overdue(shard) if watch is not None else None
            if attempt is None:
                continue
            n = self.reruns.get(shard_id, 0)
            if n >= self.max_reruns:
                self.loop.fail(
                    shard_id,
                    f"shard {shard_id}: attempt {attempt} ran past "
                    f"cluster.shard_timeout_s={self.timeout:g}s and no re-runs are left "
                    f"(cluster.task_retries={self.max_reruns})",
                )
                continue
            self.reruns[shard_id] = n + 1
            print(
                f"shard {shard_id}: attempt {attempt} ran past cluster.shard_timeout_s="
                f"{self.timeout:g}s; abandoning it and re-running the shard (re-run {n + 1})"
            )
            self.loop.resubmit(shard_id)
