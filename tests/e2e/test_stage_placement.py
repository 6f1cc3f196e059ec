"""Placement by resources (issue 14): a stage's units run only on the workers that advertise
the resources the stage asks for (`stages[i].resources`). Real Prefect flow, a real Dask
cluster of two worker processes (Nannies) with different resources, fake engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from distributed import Client, Nanny, Scheduler, SpecCluster

from flows.run import synthgen_run
from synthgen.cluster.client import workers_info
from synthgen.errors import RunIncomplete
from tests.helpers import fake_config, write_config


@pytest.fixture()
def two_kinds():
    """Worker `small` advertises SMALL=1, worker `big` BIG=1."""
    workers = {
        name: {
            "cls": Nanny,
            "options": {"nthreads": 1, "host": "127.0.0.1", "resources": {res: 1}},
        }
        for name, res in (("small", "SMALL"), ("big", "BIG"))
    }
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    with (
        SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        info = workers_info(client)
        by_res = {next(iter(w["resources"])): addr for addr, w in info.items()}
        yield cluster, by_res


def _stages(second: dict[str, float]) -> list[dict]:
    return [
        {"name": "draft", "prompt": "Draft: {{ prompt }}", "resources": {"SMALL": 1}},
        {
            "name": "polish",
            "model": {"engine": "fake", "path": "fake-big"},
            "prompt": "Polish: {{ draft }}",
            "resources": second,
        },
    ]


def _workers(run_dir: Path, stage: str, sub: str) -> set[str]:
    paths = (run_dir / "stages" / stage / sub).glob("*.json")
    return {
        (d.get("worker") or d["result"]["worker"])
        for d in (json.loads(p.read_text()) for p in paths)
    }


def test_each_stage_runs_only_on_the_workers_with_its_resources(tmp_path, prefect_api, two_kinds):
    cluster, by_res = two_kinds
    out = tmp_path / "out"
    cfg = fake_config(
        str(out),
        prompts__limit=12,
        shards__size=2,
        cluster__address=cluster.scheduler_address,
        model__fake__seconds_per_shard=0.2,
        stages=_stages({"BIG": 1}),
    )
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", cfg))
    assert res["status"] == "complete" and res["rows_published"] == 12
    run_dir = out / "runs" / res["run_id"]
    # every attempt and every commit of a stage: on its worker only
    assert _workers(run_dir, "draft", "attempts") == {by_res["SMALL"]}
    assert _workers(run_dir, "polish", "attempts") == {by_res["BIG"]}
    assert _workers(run_dir, "draft", "_commits") == {by_res["SMALL"]}
    assert _workers(run_dir, "polish", "_commits") == {by_res["BIG"]}
    # the ledger says the same
    from synthgen.config import config_from_dict
    from synthgen.cost.ledger import run_ledger

    c = config_from_dict(cfg)
    rows = run_ledger(c.output, c.run_id).rows().to_pylist()
    placed = {(r["shard_id"].split(":")[0], r["worker"]) for r in rows}
    assert placed == {("draft", by_res["SMALL"]), ("polish", by_res["BIG"])}


def test_a_stage_whose_resources_no_worker_has_fails_naming_the_stage(
    tmp_path, prefect_api, two_kinds
):
    cluster, _ = two_kinds
    out = tmp_path / "out"
    cfg = fake_config(
        str(out),
        prompts__limit=4,
        shards__size=2,
        cluster__address=cluster.scheduler_address,
        stages=_stages({"HUGE": 1}),
    )
    with pytest.raises(RunIncomplete) as exc:
        synthgen_run(config=write_config(tmp_path / "c.yaml", cfg))
    msg = str(exc.value)
    assert "stages[1] (polish) needs worker resources {'HUGE': 1.0}" in msg
    assert "no worker of the cluster advertises them" in msg
    # the first stage ran (on its worker); nothing was published
    assert len(list((out / "runs").glob("*/stages/draft/_commits/*.json"))) == 2
    assert not (out / "dataset" / "README.md").exists()
