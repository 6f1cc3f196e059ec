"""Crashes with real processes: SIGKILL a `dask worker` mid-generation, SIGKILL the process
running the flow mid-run. Nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime

import pyarrow.dataset as ds
import pytest

from synthgen.config import config_from_dict
from synthgen.cost.ledger import Ledger
from synthgen.io.attempts import attempt_history, commit_markers
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from tests.crash_helpers import run_cli, start_cli, start_dask, wait_for
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow

SHARDS = 8  # 24 built-in prompts, 3 per shard


@pytest.fixture()
def dask_procs(tmp_path):
    procs = start_dask(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def _config(out, address, **more):
    return fake_config(
        str(out),
        shards__size=3,
        cluster__address=address,
        cluster__task_retries=0,  # only Dask's own re-scheduling may save a killed shard
        model__fake__seconds_per_shard=1.2,
        **more,
    )


def _rows(path):
    table = ds.dataset(path / "dataset" / "data", format="parquet").to_table()
    return table.select(["prompt_id", "completion"]).to_pylist()


def test_sigkill_of_a_dask_worker_mid_shard_loses_and_doubles_nothing(
    tmp_path, prefect_api, dask_procs
):
    out = tmp_path / "out"
    data = _config(out, dask_procs.address)
    cfg = config_from_dict(data)
    store = Store(cfg.output)
    cli = start_cli(write_config(tmp_path / "c.yaml", data), tmp_path / "s.json", tmp_path / "log")

    def running_attempt():
        commits = commit_markers(store, cfg.run_id)
        if not commits:
            return None  # wait until the run is under way (first shard committed)
        now = datetime.now(UTC)
        for a in attempt_history(store, cfg.run_id):
            age = (now - datetime.fromisoformat(a["started_at"])).total_seconds()
            # a shard takes 1.2 s: one started under 0.5 s ago is still generating when the
            # kill lands (an older one might commit first, and then nothing is lost)
            if a["outcome"] == "running" and a["worker"] in dask_procs.workers and age < 0.5:
                return a
        return None

    victim: dict = {}
    wait_for(lambda: bool(victim.update(running_attempt() or {}) or victim), 120, "a shard mid-run")
    dask_procs.kill_worker(victim["worker"])
    assert cli.wait(timeout=180) == 0, (tmp_path / "log").read_text()[-3000:]

    rows = _rows(out)
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == 24 and len(set(ids)) == 24, "a prompt was lost or doubled"

    history = attempt_history(store, cfg.run_id)
    lost = [a for a in history if a["outcome"] == "lost"]
    assert any(
        a["shard_id"] == victim["shard_id"] and a["worker"] == victim["worker"] for a in lost
    ), history
    # the ledger shows the lost attempt too (status "lost", priced from that worker's rows)
    ledger = Ledger(RunLayout(store, cfg.run_id)).rows().to_pylist()
    lost_rows = [r for r in ledger if r["status"] == "lost" and r["shard_id"] == victim["shard_id"]]
    assert [r["worker"] for r in lost_rows] == [victim["worker"]], ledger
    assert lost_rows[0]["wall_seconds"] >= 0 and lost_rows[0]["cost_usd"] >= 0
    redo = [a for a in history if a["shard_id"] == victim["shard_id"]]
    assert redo[-1]["outcome"] == "committed" and redo[-1]["worker"] != victim["worker"]
    assert len(commit_markers(store, cfg.run_id)) == SHARDS


def test_sigkill_of_the_flow_process_then_rerun_generates_only_missing_shards(
    tmp_path, prefect_api, dask_procs
):
    # the reference: the same run, uninterrupted
    ref = tmp_path / "ref"
    code, ref_summary, text = run_cli(
        write_config(tmp_path / "ref.yaml", _config(ref, dask_procs.address)), tmp_path, "ref"
    )
    assert code == 0, text[-3000:]
    assert ref_summary["shards_generated"] == SHARDS

    out = tmp_path / "out"
    data = _config(out, dask_procs.address)
    cfg_path = write_config(tmp_path / "c.yaml", data)
    cfg = config_from_dict(data)
    store = Store(cfg.output)
    assert cfg.run_id == ref_summary["run_id"]  # the output location is not part of the id

    cli = start_cli(cfg_path, tmp_path / "killed.json", tmp_path / "killed.log")
    wait_for(lambda: len(commit_markers(store, cfg.run_id)) >= 2, 120, "two committed shards")
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait(timeout=10)
    assert not (out / "dataset" / "README.md").exists()
    # shards already handed to the workers may still start and commit; let them land first:
    # no attempt running, and nothing new for 4 s (longer than a shard plus task start-up)
    last: dict = {"state": None, "since": time.monotonic()}

    def settled() -> bool:
        history = attempt_history(store, cfg.run_id)
        state = (len(history), sum(a["outcome"] == "committed" for a in history))
        if state != last["state"] or any(a["outcome"] == "running" for a in history):
            last.update(state=state, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= 4.0

    wait_for(settled, 60, "in-flight attempts to finish", every=0.25)
    before = len(commit_markers(store, cfg.run_id))
    assert 2 <= before < SHARDS

    # a fresh process, same run id: takes over the dead process's lease at once
    code, summary, text = run_cli(cfg_path, tmp_path, "rerun")
    assert code == 0, text[-3000:]
    assert summary["run_id"] == cfg.run_id
    assert summary["shards_generated"] == SHARDS - before
    assert summary["shards_skipped"] == before
    assert "took over the stale lease" in text

    got = sorted((r["prompt_id"], r["completion"]) for r in _rows(out))
    want = sorted((r["prompt_id"], r["completion"]) for r in _rows(ref))
    assert len(got) == 24 and got == want
