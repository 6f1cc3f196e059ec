"""A frozen host with default settings: a `dask worker` process stopped with SIGSTOP mid-shard
(its connections stay open, nothing answers: what a hung or partitioned host looks like to
the scheduler). No `cluster.shard_timeout_s`: the shard's derived deadline moves it to the
other worker and the run completes long before Dask's worker TTL; the frozen attempt is on
the ledger as lost; thawing the worker afterwards changes nothing."""

from __future__ import annotations

import hashlib
import time

import pyarrow.dataset as ds
import pytest

from synthgen.config import config_from_dict
from synthgen.io.store import Store
from tests.crash_helpers import check_routed_around, fresh_attempt, start_cli, start_dask, wait_for
from tests.helpers import fake_config, write_config

pytestmark = pytest.mark.slow


def _tree(root):
    """path -> sha256 of every file under `root` (what a thaw must not change)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_frozen_worker_is_routed_around_by_default(tmp_path, prefect_api):
    procs = start_dask(tmp_path)
    try:
        _frozen_run(tmp_path, procs)
    finally:
        procs.stop()


def _frozen_run(tmp_path, procs):
    out = tmp_path / "out"
    data = fake_config(
        str(out),
        shards__size=3,  # 8 shards of about 1 s
        cluster__address=procs.address,
        model__fake__seconds_per_shard=1.0,
        # the default floor (60 s) is for real runs; 6 s is far above a 1 s shard even on a
        # loaded CI machine (a shard past it is only re-run, but the test names the victim)
        cluster__deadline_floor_s=6,
    )
    cfg = config_from_dict(data)
    assert cfg.cluster.shard_timeout_s is None and cfg.cluster.deadlines
    store = Store(cfg.output)
    summary_path = tmp_path / "s.json"
    cli = start_cli(write_config(tmp_path / "c.yaml", data), summary_path, tmp_path / "log")

    victim: dict = {}
    wait_for(
        lambda: bool(
            victim.update(fresh_attempt(store, cfg.run_id, procs.workers) or {}) or victim
        ),
        120,
        "a shard mid-run",
    )
    procs.freeze_worker(victim["worker"])
    try:
        code = cli.wait(timeout=240)  # Dask alone would wait for its 5-minute worker TTL
    except BaseException:
        cli.kill()
        raise
    log = (tmp_path / "log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert f"attempt {victim['attempt']} on {victim['worker']} ran past its" in log, log[-3000:]

    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    ids = table["prompt_id"].to_pylist()
    assert len(ids) == 24 and len(set(ids)) == 24, "a prompt was lost or doubled"

    victim_rows = check_routed_around(store, cfg.run_id, victim, summary_path)

    # the thaw: the frozen attempt wakes up mid-shard, finds the shard committed by the
    # re-run and writes nothing (or its worker, removed from the cluster, just exits)
    before = _tree(out)
    procs.thaw_worker(victim["worker"])
    last = {"tree": before, "since": time.monotonic()}

    def settled() -> bool:
        tree = _tree(out)
        if tree != last["tree"]:
            last.update(tree=tree, since=time.monotonic())
        return time.monotonic() - last["since"] >= 3.0  # a shard is 1 s: long done

    wait_for(settled, 60, "the thawed worker to settle", every=0.5)
    assert _tree(out) == before, "the thawed attempt changed the run's files"
    assert [r["status"] for r in victim_rows()] == ["lost"]
