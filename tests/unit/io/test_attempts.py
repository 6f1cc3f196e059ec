"""Attempt numbers from the shard's own start markers (a prefix listing, not the whole
attempts directory of the run)."""

from __future__ import annotations

import uuid

import pytest

from synthgen.config import OutputConfig
from synthgen.io.attempts import AttemptWatch, next_attempt, shard_attempt_names
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store


def _mark(store: Store, layout, shard_id: str, n: int) -> str:
    path = layout.attempt(shard_id, n, uuid.uuid4().hex[:8])
    store.write_json(path, {"shard_id": shard_id, "attempt": n})
    return path


def _check(store: Store) -> None:
    layout = RunLayout(store, "run-1").stage()
    assert next_attempt(store, layout, "shard-1") == 1  # no attempts directory yet
    for n in (1, 2):
        _mark(store, layout, "shard-1", n)
    # other shards' markers, one whose id starts with "shard-1": none of them count
    for sid in ("shard-10", "shard-11", "shard-2", "shard-100"):
        _mark(store, layout, sid, 1)
    assert next_attempt(store, layout, "shard-1") == 3
    assert next_attempt(store, layout, "shard-10") == 2
    assert next_attempt(store, layout, "shard-3") == 1
    names = shard_attempt_names(store, layout, "shard-1")
    # the same names as the whole directory's listing filtered by the shard's prefix
    assert names == [n for n in store.ls(layout.attempts_dir) if n.startswith("shard-1.")]
    assert len(names) == 2
    # another stage's attempts are its own
    assert next_attempt(store, RunLayout(store, "run-1").stage("judge"), "shard-1") == 1


def test_next_attempt_counts_only_the_shards_own_markers(any_store: Store) -> None:
    _check(any_store)


def test_next_attempt_on_another_filesystem() -> None:
    _check(Store(OutputConfig(uri=f"memory://attempts-{uuid.uuid4().hex[:8]}")))


@pytest.mark.parametrize("shard_id", ["s.0", "s"])
def test_shard_ids_with_dots_count_as_the_whole_directory_listing_did(
    tmp_path, shard_id: str
) -> None:
    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    layout = RunLayout(store, "r").stage()
    _mark(store, layout, "s.0", 1)
    _mark(store, layout, "s", 1)
    before = 1 + sum(1 for n in store.ls(layout.attempts_dir) if n.startswith(shard_id + "."))
    assert next_attempt(store, layout, shard_id) == before


def test_a_poll_on_s3_lists_only_the_running_shards_once_the_run_outgrows_that(
    any_store: Store,
) -> None:
    """AttemptWatch.poll: one listing of the whole attempts directory while that is no
    more requests than there are running shards; past that (on S3) a prefix listing per
    running shard, so a poll never grows with the run."""
    store = any_store
    layout = RunLayout(store, "run-1").stage()
    for i in range(12):
        _mark(store, layout, f"shard-{i:02d}", 1)
    now = [0.0]
    watch = AttemptWatch(store, "run-1", timeout_s=10, clock=lambda: now[0])
    watch.PAGE = 5  # 12 markers: a whole listing is 3 requests
    running = ["shard-03", "shard-07"]
    watch.poll(running)  # nothing counted yet: the whole directory, every marker seen
    assert (watch.full_polls, watch.prefix_polls) == (1, 0)
    assert all(watch.elapsed(f"shard-{i:02d}") == 0.0 for i in range(12))

    _mark(store, layout, "shard-03", 2)  # a running shard's new attempt
    _mark(store, layout, "shard-12", 1)  # a shard not running (yet)
    now[0] = 4.0
    watch.poll(running)
    # the new attempt of the running shard is timed from this poll either way
    assert watch.elapsed("shard-03") == 0.0 and watch.overdue("shard-03") is None
    now[0] = 14.0
    assert watch.overdue("shard-03") == 2 and watch.overdue("shard-07") == 1
    if store.local:  # one scan of a local directory beats one per shard
        assert (watch.full_polls, watch.prefix_polls) == (2, 0)
        assert watch.elapsed("shard-12") == 10.0
    else:  # 2 running shards < 3 pages: their own markers only
        assert (watch.full_polls, watch.prefix_polls) == (1, 1)
        assert watch.elapsed("shard-12") is None
        watch.poll(None)  # no running set given: the whole directory
        assert watch.elapsed("shard-12") == 0.0 and watch.full_polls == 2
