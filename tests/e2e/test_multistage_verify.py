"""Verification of a multi-stage run through the real flow (issue 14): Prefect + a real Dask
LocalCluster of three worker processes, fake engine. Each stage's units are checked on
another worker against that stage's model, prompt, sampling and guided constraint; a
worker that cheats in the second stage only is caught, excluded, and its units redone."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.progress import progress_key
from flows.run import synthgen_run
from synthgen.cluster.client import workers_info
from tests.helpers import fake_config, local_cluster, write_config
from tests.support.cheats import TEXT_POOL, install_cheat, install_slowdown

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
}
STAGES = [
    {"name": "instruction", "prompt": "Write one question about: {{ prompt }}"},
    {
        "name": "response",
        "model": {"engine": "fake", "path": "fake-response"},  # the cheat's target
        "system": "You are a teacher.",
        "prompt": "{{ instruction }}",
    },
    {
        "name": "judge",
        "prompt": "Q: {{ instruction }}\nA: {{ response }}\nRate it as JSON.",
        "guided": {"json_schema": JUDGE_SCHEMA},
        "parse": "json",
    },
]
NAMES = [s["name"] for s in STAGES]


@pytest.fixture()
def cluster3():
    with local_cluster(3) as cluster_and_client:
        yield cluster_and_client


def _config(out: Path, address: str) -> dict:
    return fake_config(
        str(out),
        prompts__limit=12,
        shards__size=2,  # 6 shards x 3 stages = 18 units
        cluster__address=address,
        model__fake__seconds_per_shard=0.2,
        verify__enabled=True,
        verify__min_tokens=4,  # the judge's JSON is short: its checks must be conclusive
        stages=STAGES,
    )


def _json(paths) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(paths)]


def _stage_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "stages" / name


def test_an_honest_multi_stage_run_passes_every_stage_with_no_flags(
    tmp_path, prefect_api, cluster3, caplog
):
    cluster, _ = cluster3
    out = tmp_path / "out"
    res = synthgen_run(
        config=write_config(tmp_path / "c.yaml", _config(out, cluster.scheduler_address))
    )
    # progress counts units of every stage: up to 18 of 18, the last unit's line always
    # printed (it once read "30/18": the count started from the later stages' units)
    counts = [int(n) for n in re.findall(r"done · (\d+)/18 shards", caplog.text)]
    assert counts and max(counts) == 18 and counts[-1] == 18, counts
    # the same count is the run's live progress artifact in the Prefect UI, at 100 % now
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[progress_key(res["run_id"])])
            )
        )
    assert [a.type for a in arts] == ["progress"], arts
    assert arts[0].data == 100.0 and "18/18 shards" in (arts[0].description or ""), arts[0]
    assert arts[0].flow_run_id is not None, arts[0]  # written beside the loop, for its run
    assert res["status"] == "complete" and res["rows_published"] == 12
    v = res["verification"]
    assert v["statuses"] == {"pass": 18}, v
    assert v["flagged_workers"] == [] and not v["quarantined"] and not v["retracted"]
    run_dir = out / "runs" / res["run_id"]
    for name in NAMES:
        checks = _json((_stage_dir(run_dir, name) / "verify").glob("shard-*.json"))
        assert len(checks) == 6, name
        assert all(c["verifier"] != c["generator"] for c in checks)
        assert all(c["stage"] == name and c["status"] == "pass" for c in checks)
        assert all(c["tokens"] >= 4 for c in checks)  # conclusive, the guided judge too
        assert not (_stage_dir(run_dir, name) / "quarantine").exists()
    judge = _json((_stage_dir(run_dir, "judge") / "verify").glob("shard-*.json"))
    assert all(c["baseline"]["guided"]["json_schema"] == JUDGE_SCHEMA for c in judge)
    # a stage's unit started only after the unit it reads passed its check
    for name, prev in (("response", "instruction"), ("judge", "response")):
        for started in _json((_stage_dir(run_dir, name) / "attempts").glob("*.json")):
            sid = started["shard_id"]
            check = json.loads(
                (_stage_dir(run_dir, prev) / "verify" / f"{sid}.a1.json").read_text()
            )
            assert datetime.fromisoformat(started["started_at"]) >= datetime.fromisoformat(
                check["at"]
            ), (name, sid)


def test_a_worker_cheating_in_the_second_stage_is_caught_excluded_and_redone(
    tmp_path, prefect_api, cluster3
):
    cluster, client = cluster3
    cheater = sorted(workers_info(client))[0]
    # honest in the other stages: it cheats only with the response stage's model
    got = client.run(install_cheat, "pool", 0, ["fake-response"], workers=[cheater])
    assert got == {cheater: "pool"}
    # the honest workers answer slowly: the cheater is free first and surely takes response
    # units (CI once saw it get none: 4 units of the other stages, nothing to catch)
    honest = [w for w in workers_info(client) if w != cheater]
    client.run(install_slowdown, 1.0, ["fake-response"], workers=honest)
    out = tmp_path / "out"
    res = synthgen_run(
        config=write_config(tmp_path / "c.yaml", _config(out, cluster.scheduler_address))
    )
    run_dir = out / "runs" / res["run_id"]
    assert res["status"] == "complete"
    v = res["verification"]
    assert v["flagged_workers"] == [cheater]
    failed = [q for q in v["quarantined"] if q["status"] == "fail"]
    assert failed and all(
        q["shard_id"].startswith("response:") and q["generator"] == cheater for q in failed
    )
    # every committed unit of every stage comes from an honest worker, and was checked
    for name in NAMES:
        commits = {
            p.stem: json.loads(p.read_text())["result"]
            for p in (_stage_dir(run_dir, name) / "_commits").glob("*.json")
        }
        assert len(commits) == 6, name
        for sid, c in commits.items():
            assert c["worker"] != cheater, (name, sid)
            check = json.loads(
                (_stage_dir(run_dir, name) / "verify" / f"{sid}.a{c['attempt']}.json").read_text()
            )
            assert check["status"] == "pass" and check["verifier"] != cheater, (name, sid)
    # the response stage's quarantine holds the cheater's canned text, with the verdict
    audits = _json((_stage_dir(run_dir, "response") / "quarantine").glob("*.json"))
    assert any(a["verdict"]["status"] == "fail" for a in audits)
    # the published rows: every prompt once; no canned text; each judge read its response
    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    assert table.num_rows == 12 and len(set(table["prompt_id"].to_pylist())) == 12
    for row in table.to_pylist():
        assert row["response"] not in TEXT_POOL
        assert row["response"] in json.loads(row["judge.messages"])[-1]["content"]


def test_a_resumed_run_checks_every_stage_an_earlier_session_committed(tmp_path, prefect_api):
    out = tmp_path / "out"
    cfg = fake_config(
        str(out), prompts__limit=6, shards__size=2, cluster__n_workers=2, stages=STAGES
    )
    cfg_path = write_config(tmp_path / "c.yaml", cfg)
    first = synthgen_run(config=cfg_path)
    assert first["status"] == "complete" and first["verification"] is None
    second = synthgen_run(config=cfg_path, overrides=["verify.enabled=true", "verify.min_tokens=4"])
    assert second["run_id"] == first["run_id"] and second["shards_generated"] == 0
    v = second["verification"]
    assert v["statuses"] == {"pass": 9} and v["flagged_workers"] == []
    run_dir = out / "runs" / first["run_id"]
    for name in NAMES:
        assert len(list((_stage_dir(run_dir, name) / "verify").glob("shard-*.json"))) == 3
