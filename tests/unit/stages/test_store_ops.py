"""O(1) storage operations per shard attempt (issue 16): what one attempt asks of the store
does not grow with the number of shards in the run (no listing of the run's directories)."""

from __future__ import annotations

import collections
import functools
import threading
from pathlib import Path
from typing import Any

import pytest

from synthgen.config import RunConfig
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests.helpers import fake_config

OPS = (
    "write_bytes",
    "create_bytes",
    "read_bytes",
    "read_optional",
    "exists",
    "ls",
    "rm",
    "write_json",
    "read_json",
    "write_table",
    "read_table",
    "retry",  # what Store does for other code (the attempt numbering's prefix listing)
)


class _Counter:
    """Counts the outermost Store calls (a write_json that calls write_bytes is one call)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.on = False
        self._depth = threading.local()

    def wrap(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def counted(store: Store, *args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            if self.on and depth == 0:
                self.calls[name] += 1
            self._depth.n = depth + 1
            try:
                return fn(store, *args, **kwargs)
            finally:
                self._depth.n = depth

        return counted


def _attempt_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shards: int) -> dict[str, int]:
    """The store calls of one attempt of the last shard of a run whose other shards have
    already been generated and committed."""
    cfg = RunConfig.model_validate(
        fake_config(
            str(tmp_path / f"out{shards}"),
            shards__size=1,
            prompts={
                "type": "template",
                "templates": ["x {topic}"],
                "topics": [f"t{i}" for i in range(shards)],
            },
        )
    )
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    assert len(plan.shards) == shards
    config = cfg.model_dump(mode="json")
    for shard in plan.shards[:-1]:
        assert run_shard(ShardTask(config, shard.shard_id)).status == "done"
    counter = _Counter()
    for name in OPS:
        monkeypatch.setattr(Store, name, counter.wrap(name, getattr(Store, name)))
    counter.on = True
    res = run_shard(ShardTask(config, plan.shards[-1].shard_id))
    counter.on = False
    assert res.status == "done" and res.attempt == 1
    return dict(counter.calls)


def test_store_operations_per_attempt_do_not_grow_with_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _attempt_ops(tmp_path, monkeypatch, 10)
    monkeypatch.undo()
    large = _attempt_ops(tmp_path, monkeypatch, 100)
    assert small == large, (small, large)
    print(f"store calls per attempt: {large}")
    assert "ls" not in large  # no listing of a run directory (they grow with the run)
    # the whole attempt: its commit check, numbering, start marker, prompts, shard file,
    # ledger and worker rows, commit marker
    assert sum(large.values()) <= 10, large
