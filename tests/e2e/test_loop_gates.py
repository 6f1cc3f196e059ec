"""Budget, shard timeout and verification together in one real run (issue 13, point 2):
Prefect flow, a LocalCluster of 2 workers, fake engine. The budget stops submission (partial,
resumable with a higher budget), a hung shard is timed out and re-run, and every committed
shard is verified on the other worker; all three are on record in the result and ledger."""

from __future__ import annotations

import os
import threading

import dask
import pytest

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.cost.ledger import open_run_uri
from synthgen.cost.report import load_summary
from synthgen.io.attempts import attempt_history
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from tests.helpers import fake_config, write_config
from tests.support import hang

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_verify_budget_and_timeout_in_one_run(tmp_path, prefect_api, monkeypatch) -> None:
    # the embedded cluster's workers (named 0 and 1) leased by the operator at 3600 $/h: a
    # 1 s shard costs about $1
    out = tmp_path / "out"
    data = fake_config(
        str(out),
        shards__size=4,  # 6 shards
        cost__worker_prices={"0": 3600.0, "1": 3600.0},
        cluster__n_workers=2,
        cluster__threads_per_worker=1,
        cluster__retry_delay_s=0,
        # a re-run may wait for the engine turn behind the other re-run on its worker (1 s)
        # before its own 1 s: 5 s leaves room on a loaded machine (at 3 s a CI run once lost
        # shard-00000 from the loop while its re-run went on to commit)
        cluster__shard_timeout_s=5,
        cluster__task_retries=1,
        model__fake__seconds_per_shard=1.0,
        verify__enabled=True,
    )
    cfg_path = write_config(tmp_path / "c.yaml", data)
    # shard-00000's first attempt blocks (a stuck engine call, injected by the test's Dask
    # preload): timed out at 5 s and re-run; the abandoned attempt returns late
    # The hung call is released once the re-run has committed (so the abandoned attempt
    # returns late whatever the machine's load; 120 s is only a backstop)
    cfg0 = config_from_dict(data)
    prompt = hang.first_prompt_id(cfg0, "shard-00000")
    marker = RunLayout(Store(cfg0.output), cfg0.run_id or "").stage().commit("shard-00000")
    stop = threading.Event()

    def release_after_the_rerun_commits() -> None:
        while not stop.wait(0.1):
            if os.path.exists(marker):
                hang.Hang(tmp_path / "hang", prompt).release()
                return

    watcher = threading.Thread(target=release_after_the_rerun_commits, daemon=True)
    watcher.start()
    try:
        with dask.config.set(hang.preload_config(prompt, tmp_path / "hang", seconds=120)):
            first = synthgen_run(config=cfg_path, overrides=["budget.max_cost_usd=3"])
    finally:
        stop.set()
    run_id = first["run_id"]
    run_dir = out / "runs" / run_id

    # budget: submission stopped, the run is partial and says how to resume
    assert first["status"] == "partial", first
    budget = load_summary(str(run_dir)).budget
    assert budget is not None and budget["partial"] and budget["max_cost_usd"] == 3
    assert "budget.max_cost_usd=" in budget["message"]
    rows = open_run_uri(str(run_dir)).rows().to_pylist()
    shard_rows = [r for r in rows if r["status"] != "verification"]
    assert 1 <= len({r["shard_id"] for r in shard_rows}) < 6

    # timeout: the hung first attempt of shard-00000 was abandoned, its re-run committed
    store = Store(config_from_dict(data).output)
    history = [(a["attempt"], a["outcome"]) for a in attempt_history(store, run_id)]
    hung = [
        (a["attempt"], a["outcome"])
        for a in attempt_history(store, run_id)
        if a["shard_id"] == "shard-00000"
    ]
    assert hung == [(1, "lost"), (2, "committed")], history

    # verification: every committed shard checked on the other worker, checks on the ledger
    v = first["verification"]
    assert v is not None and v["checks"] >= 1
    # a check may find another attempt committed than the one it was asked about ("stale":
    # with two shards per worker, the shard waiting for the hung call's engine turn is timed
    # out too, and its late first attempt can win the commit race): the committed attempt is
    # then checked. Nothing else than a pass or such a hand-over, and a pass per commit.
    assert set(v["statuses"]) <= {"pass", "stale"}, v["statuses"]
    vrows = [r for r in rows if r["status"] == "verification"]
    assert len(vrows) == v["statuses"]["pass"]  # a stale check scores nothing, costs no row
    committed = {r["shard_id"] for r in shard_rows if r["status"] == "succeeded"}
    assert {r["shard_id"] for r in vrows} == committed
    # the budget counted the checks' cost: ledger total (shards + checks) near the cap
    assert sum(r["cost_usd"] for r in rows) > 0

    # resume with a higher budget: only the rest is generated, and verified
    second = synthgen_run(config=cfg_path, overrides=["budget.max_cost_usd=100"])
    assert second["status"] == "complete" and second["run_id"] == run_id
    assert second["rows_published"] == 24
    rows2 = open_run_uri(str(run_dir)).rows().to_pylist()
    gen2 = [r for r in rows2 if r["status"] == "succeeded"]
    assert len(gen2) == 6 and len({r["shard_id"] for r in gen2}) == 6  # none regenerated
    assert {r["shard_id"] for r in rows2 if r["status"] == "verification"} == {
        r["shard_id"] for r in gen2
    }
