"""A worker that hangs (never returns) is timed out by `cluster.shard_timeout_s` and its shard
re-run; the abandoned attempt, if it ever returns, writes nothing.

The hang is test-only engine behaviour (`tests/support/hang.py`), injected into the worker
processes through a Dask preload; nothing in the run config asks for it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dask
import pyarrow.dataset as ds
import pytest

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.cost.ledger import Ledger, record_lost_attempts
from synthgen.engines import abort
from synthgen.io.attempts import AttemptWatch, attempt_history
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests.helpers import fake_config, write_config
from tests.support import hang

pytestmark = pytest.mark.slow


def test_hung_shard_is_timed_out_and_rerun_on_a_dask_cluster(tmp_path, prefect_api):
    out = tmp_path / "out"
    data = fake_config(
        str(out),
        cluster__n_workers=2,
        cluster__shard_timeout_s=3,
        cluster__task_retries=1,
        model__fake__seconds_per_shard=0.3,
    )
    cfg = config_from_dict(data)
    prompt = hang.first_prompt_id(cfg, "shard-00001")
    state = tmp_path / "hang"
    # a blocking call Prefect's timeout cannot interrupt; it ends only when released (never,
    # while the flow runs) or after 600 s: a flow that waited for it would see it return
    with dask.config.set(hang.preload_config(prompt, state, seconds=600)):
        res = synthgen_run(config=write_config(tmp_path / "c.yaml", data))
    stuck = hang.Hang(state, prompt)
    assert res["status"] == "complete", res
    started = stuck.started()
    assert started is not None and prompt in started["prompt_ids"], "the hang never started"
    assert not stuck.returned(), "the flow waited for the hung call to return"
    # once the re-run committed, the flow told the workers to stop the abandoned call: its
    # worker is free again instead of blocking for 600 s (synthgen.engines.abort)
    assert stuck.stopped(), "the abandoned attempt's engine call was not stopped"

    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    ids = table["prompt_id"].to_pylist()
    assert len(ids) == 24 and len(set(ids)) == 24

    store = Store(cfg.output)
    history = [a for a in attempt_history(store, res["run_id"]) if a["shard_id"] == "shard-00001"]
    assert [(a["attempt"], a["outcome"]) for a in history] == [(1, "lost"), (2, "committed")]
    assert history[0]["worker"] == started["worker"]  # the lost attempt is the hung call
    # the published copy of the shard is the re-run's
    marker = store.read_json(RunLayout(store, res["run_id"]).stage().commit("shard-00001"))
    assert marker["result"]["attempt"] == 2


@contextmanager
def _first_attempt_hanging(tmp_path: Path) -> Iterator[tuple]:
    """The fake default planned; attempt 1 of shard-00000 hangs in a thread (the hang helper,
    600 s). Yields (cfg, store, stuck, late: the attempt's result once it returns, the
    thread); the hang is always released and uninstalled."""
    cfg = config_from_dict(fake_config(str(tmp_path / "out")))
    store = Store(cfg.output)
    write_plan(cfg, store)
    config = cfg.model_dump(mode="json")
    stuck = hang.install(hang.first_prompt_id(cfg, "shard-00000"), tmp_path / "hang")
    late: dict = {}
    zombie = threading.Thread(
        target=lambda: late.update(run_shard(ShardTask(config, "shard-00000")).as_dict())
    )
    try:
        zombie.start()
        stuck.wait_started()
        yield cfg, store, stuck, late, zombie
    finally:
        stuck.release()  # never leave the thread blocked if an assertion failed
        hang.uninstall()


def test_abandoned_attempt_that_returns_late_writes_nothing(tmp_path):
    with _first_attempt_hanging(tmp_path) as (cfg, store, stuck, late, zombie):
        # attempt 1 is hanging; the flow re-runs the shard: attempt 2
        config = cfg.model_dump(mode="json")
        rerun = run_shard(ShardTask(config, "shard-00000"))
        assert rerun.status == "done" and rerun.attempt == 2
        marker = store.read_json(RunLayout(store, cfg.run_id).stage().commit("shard-00000"))
        file_bytes = store.read_bytes(marker["file"])
        assert not stuck.returned()  # attempt 1 is still blocked while attempt 2 commits
        stuck.release()
        zombie.join()
    assert stuck.returned()
    assert late["status"] == "superseded" and late["attempt"] == 1
    # neither the committed file nor its marker was touched by the late attempt
    assert store.read_json(RunLayout(store, cfg.run_id).stage().commit("shard-00000")) == marker
    assert store.read_bytes(marker["file"]) == file_bytes
    outcomes = [(a["attempt"], a["outcome"]) for a in attempt_history(store, cfg.run_id)]
    assert outcomes == [(1, "lost"), (2, "committed")]


def test_an_abandoned_attempt_told_to_stop_ends_at_once_and_prices_itself(tmp_path):
    # what the flow does when a re-run (or a speculative copy) commits while the first
    # attempt still runs: it tells the workers (abort.supersede, via Client.run); the
    # attempt's engine call stops, nothing is written, the attempt's own ledger row says so
    with _first_attempt_hanging(tmp_path) as (cfg, store, stuck, late, zombie):
        assert run_shard(ShardTask(cfg.model_dump(mode="json"), "shard-00000")).status == "done"
        marker = store.read_json(RunLayout(store, cfg.run_id).stage().commit("shard-00000"))
        abort.supersede(abort.unit_token(cfg.run_id, "shard-00000"))
        zombie.join(timeout=60)  # a guard, not a speed check: the hang lasts 600 s
        assert not zombie.is_alive(), "the superseded attempt did not stop"
    assert stuck.stopped() and not stuck.returned()
    assert late["status"] == "superseded" and late["attempt"] == 1
    assert store.read_json(RunLayout(store, cfg.run_id).stage().commit("shard-00000")) == marker
    rows = sorted(
        Ledger(RunLayout(store, cfg.run_id)).rows().to_pylist(), key=lambda r: r["attempt"]
    )
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "succeeded")]
    assert "stopped mid-generation" in rows[0]["error"]


def test_a_late_attempt_after_the_run_priced_it_as_lost_adds_no_ledger_row(tmp_path):
    # a frozen host that thaws after the run ended: the flow already wrote attempt 1's lost
    # row; the thawed attempt finds the shard committed and leaves the ledger as it is
    with _first_attempt_hanging(tmp_path) as (cfg, store, stuck, late, zombie):
        assert run_shard(ShardTask(cfg.model_dump(mode="json"), "shard-00000")).status == "done"
        assert record_lost_attempts(store, cfg.run_id) == 1  # the flow, at the run's end
        before = Ledger(RunLayout(store, cfg.run_id)).rows().to_pylist()
        stuck.release()
        zombie.join()
    assert late["status"] == "superseded" and late["attempt"] == 1
    after = Ledger(RunLayout(store, cfg.run_id)).rows().to_pylist()
    assert after == before
    assert [(r["attempt"], r["status"]) for r in after] == [(1, "lost"), (2, "succeeded")]


def test_attempt_watch_times_from_first_sight_on_its_own_clock(tmp_path):
    store = Store(config_from_dict(fake_config(str(tmp_path / "o"))).output)
    now = [100.0]
    watch = AttemptWatch(store, "r", timeout_s=5, clock=lambda: now[0])
    watch.poll()
    assert watch.overdue("shard-00000") is None  # not started yet: never overdue
    store.write_json(store.run_path("r", "attempts", "shard-00000.1.abcd.json"), {})
    watch.poll()
    now[0] = 104.0
    assert watch.overdue("shard-00000") is None
    now[0] = 105.5
    assert watch.overdue("shard-00000") == 1
    assert watch.overdue("shard-00000") is None  # reported once per attempt
    store.write_json(store.run_path("r", "attempts", "shard-00000.2.ef01.json"), {})
    watch.poll()  # the re-run started: its own clock
    now[0] = 109.0
    assert watch.overdue("shard-00000") is None
    now[0] = 111.0
    assert watch.overdue("shard-00000") == 2
