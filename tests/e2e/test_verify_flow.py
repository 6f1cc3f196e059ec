"""Verification in the real flow (issue 8): Prefect + a real Dask LocalCluster, fake engine.

A cheating worker is planted with `client.run(install_cheat, ..., workers=[address])` on
a cluster the test starts itself and hands to the flow through `cluster.address`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from flows.run import synthgen_run
from synthgen.cluster.client import workers_info
from synthgen.cost.ledger import open_run_uri
from synthgen.cost.report import load_summary, to_markdown
from tests.helpers import fake_config, local_cluster, write_config
from tests.support.cheats import install_cheat


@pytest.fixture()
def cluster3():
    with local_cluster(3) as cluster_and_client:
        yield cluster_and_client


def _records(run_dir: Path, sub: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / sub).glob("*.json"))]


def _config(out: Path, address: str, **kw) -> dict:
    return fake_config(
        str(out),
        shards__size=2,  # 12 shards over 3 workers
        cluster__address=address,
        model__fake__seconds_per_shard=0.3,
        verify__enabled=True,
        **kw,
    )


def test_honest_workers_pass_and_every_check_runs_on_another_worker(
    tmp_path, prefect_api, cluster3
):
    cluster, _ = cluster3
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", _config(out, cluster.scheduler_address))
    res = synthgen_run(config=cfg_path)
    assert res["status"] == "complete" and res["rows_published"] == 24
    v = res["verification"]
    assert v["statuses"] == {"pass": 12} and v["flagged_workers"] == []
    checks = [c for c in _records(out / "runs" / res["run_id"], "verify") if "verdict" in c]
    assert len(checks) == 12
    assert all(c["verifier"] != c["generator"] for c in checks)
    assert all(c["verify_seconds"] >= 0 and c["device"] and c["price_per_hour"] > 0 for c in checks)
    assert len({c["generator"] for c in checks}) >= 2  # work was spread, checks crossed over
    assert not (out / "runs" / res["run_id"] / "quarantine").exists()
    # what trust costs: one ledger row per check, priced on its verify seconds
    run_dir = out / "runs" / res["run_id"]
    rows = open_run_uri(str(run_dir)).rows().to_pylist()
    vrows = [r for r in rows if r["status"] == "verification"]
    assert len(vrows) == 12 and len(list((run_dir / "ledger").glob("*-verify-a*.parquet"))) == 12
    by_shard = {c["shard_id"]: c for c in checks}
    for r in vrows:
        c = by_shard[r["shard_id"]]
        assert (r["worker"], r["attempt"], r["device"]) == (
            c["verifier"],
            c["attempt"],
            c["device"],
        )
        assert r["wall_seconds"] == pytest.approx(c["verify_seconds"])
        assert r["price_per_hour"] > 0 and r["completion_tokens"] == 0
        assert r["cost_usd"] == pytest.approx(r["price_per_hour"] * r["wall_seconds"] / 3600)
    summary = load_summary(str(run_dir))
    t = summary.totals
    assert t["attempts"] == 12 and t["shards"] == 12  # checks are not shard attempts
    assert t["verification_checks"] == 12 and t["verification_cost_usd"] > 0
    assert t["verification_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in vrows))
    assert "**verification**: $" in to_markdown(summary)


def test_cheating_worker_is_caught_quarantined_regenerated_and_named(
    tmp_path, prefect_api, cluster3
):
    # the fake engine's "model" ignores the prompt, so only foreign text is detectable with
    # it; every strategy against the real model: tests/unit/verify/test_verify_model.py
    strategy = "pool"
    cluster, client = cluster3
    cheater = sorted(workers_info(client))[0]
    assert client.run(install_cheat, strategy, workers=[cheater]) == {cheater: strategy}
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", _config(out, cluster.scheduler_address))
    res = synthgen_run(config=cfg_path)
    run_dir = out / "runs" / res["run_id"]

    assert res["status"] == "complete"
    v = res["verification"]
    assert v["flagged_workers"] == [cheater]
    assert v["quarantined"] and all(q["generator"] == cheater for q in v["quarantined"])
    # the published dataset: every prompt once, none from the cheater
    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    assert table.num_rows == 24 and len(set(table["prompt_id"].to_pylist())) == 24
    assert cheater not in set(table["worker"].to_pylist())
    # quarantined shards are kept for audit, with the verdict
    quarantined = sorted((run_dir / "quarantine").glob("*.json"))
    assert quarantined
    for q in quarantined:
        audit = json.loads(q.read_text())
        assert audit["marker"]["result"]["worker"] == cheater
        assert audit["verdict"]["status"] in {"fail", "distrusted"}
        assert q.with_suffix(".parquet").is_file()
    # each quarantined shard was regenerated elsewhere and then passed
    commits = {
        p.stem: json.loads(p.read_text())["result"] for p in (run_dir / "_commits").glob("*")
    }
    for q in v["quarantined"]:
        assert commits[q["shard_id"]]["worker"] != cheater
        assert commits[q["shard_id"]]["attempt"] > q["attempt"]
    # the verification record names the flagged worker; so does the summary text
    flagged = json.loads((run_dir / "verify" / "flagged.json").read_text())
    assert list(flagged["flagged_workers"]) == [cheater]
    from synthgen.cost.summary import RunSummary

    assert f"FLAGGED worker {cheater}" in RunSummary(**res).render_text()
    # excluded for the rest of the run: no accepted shard from it
    assert all(c["worker"] != cheater for c in commits.values())
    # and no accepted shard rests on a check the flagged worker ran
    for sid, c in commits.items():
        check = json.loads((run_dir / "verify" / f"{sid}.a{c['attempt']}.json").read_text())
        assert check["status"] == "pass" and check["verifier"] != cheater, (sid, check)


def test_single_worker_skips_verification_with_a_warning(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg = fake_config(str(out), verify__enabled=True)
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", cfg))
    assert res["status"] == "complete"
    v = res["verification"]
    assert v["checks"] == 0 and len(v["unverified"]) == 5
    assert any("not verified: no other worker" in w for w in v["warnings"])


def test_single_worker_verifies_on_itself_when_allowed(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg = fake_config(str(out), verify__enabled=True, verify__allow_same_worker=True)
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", cfg))
    v = res["verification"]
    assert v["statuses"] == {"pass": 5} and not v["unverified"]
    assert any("verified on the worker that generated it" in w for w in v["warnings"])


def test_resumed_run_verifies_shards_committed_without_a_check(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg_path = write_config(tmp_path / "c.yaml", fake_config(str(out), cluster__n_workers=2))
    first = synthgen_run(config=cfg_path)
    assert first["verification"] is None  # verification off: no checks, no records
    assert not (out / "runs" / first["run_id"] / "verify").exists()
    second = synthgen_run(config=cfg_path, overrides=["verify.enabled=true"])
    assert second["run_id"] == first["run_id"] and second["shards_generated"] == 0
    v = second["verification"]
    assert v["statuses"] == {"pass": 5}
    assert len(list((out / "runs" / first["run_id"] / "verify").glob("shard-*.json"))) == 5


def test_verify_restrictions_only_name_workers_with_the_gpu_resource():
    from flows.verify import cluster_workers

    class FakeScheduler:  # the scheduler RPC that workers_info asks, answered in-process
        async def identity(self, n_workers: int = 5) -> dict:
            assert n_workers == -1, "asked for fewer than all workers"
            return {
                "workers": {
                    "tls://gpu-a:1": {"resources": {"GPU": 1}},
                    "tls://cpu-b:1": {"resources": {}},
                    "tls://gpu-c:1": {"resources": {"GPU": 2}},
                }
            }

    class FakeClient:
        scheduler = FakeScheduler()

        def sync(self, fn, *args, **kwargs):
            return asyncio.run(fn(*args, **kwargs))

    client = FakeClient()
    assert cluster_workers(client) == ["tls://cpu-b:1", "tls://gpu-a:1", "tls://gpu-c:1"]
    assert cluster_workers(client, {"GPU": 1.0}) == ["tls://gpu-a:1", "tls://gpu-c:1"]
