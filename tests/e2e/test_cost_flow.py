"""Cost through the real Prefect flow on Dask: ledger timing, retries, budget stop and resume,
the artifact and the manifest totals (fake engine). The held time of the embedded default's
worker (bundled model) against its OS-observed lifetime is checked on the embedded-default
run of tests/e2e/test_preserved.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthgen.cost.leases import IGNORED_PRICE_ENV as PRICE_ENV
from synthgen.cost.ledger import Ledger, open_run_uri
from synthgen.cost.report import load_summary
from tests.helpers import published_manifest

pytestmark = pytest.mark.timeout(600)


def _config(tmp_path: Path, name: str, **over: Any) -> str:
    data: dict[str, Any] = {
        "name": name,
        "prompts": {"type": "builtin"},
        "shards": {"size": 6},
        "model": {"engine": "fake", "fake": {"seconds_per_shard": 2.0}},
        "cluster": {"n_workers": 1, "threads_per_worker": 1, "retry_delay_s": 0},
        "output": {"uri": str(tmp_path / "out")},
    }
    for key, value in over.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(config: str, overrides: list[str] | None = None) -> dict[str, Any]:
    from flows.run import synthgen_run

    return synthgen_run(config=config, overrides=overrides or [])


def _run_ledger(tmp_path: Path, result: dict[str, Any]) -> Ledger:
    return open_run_uri(str(tmp_path / "out" / "runs" / result["run_id"]))


def test_fake_engine_known_time_wall_within_5pct_cost_exact(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PRICE_ENV, raising=False)
    result = _run(_config(tmp_path, "timing", **{"model.fake.seconds_per_shard": 6.0}))
    assert result["status"] == "complete"
    led = _run_ledger(tmp_path, result)
    rows = led.rows().to_pylist()
    assert len(rows) == 4  # 24 built-in prompts / 6 per shard
    for r in rows:
        detail = f"{r['shard_id']}: wall {r['wall_seconds']:.3f}s engine {r['engine_seconds']:.3f}s"
        assert abs(r["wall_seconds"] - 6.0) / 6.0 < 0.05, detail
        assert r["engine_seconds"] == pytest.approx(6.0, rel=0.05), detail
        assert r["cost_usd"] == r["price_per_hour"] * r["wall_seconds"] / 3600
        assert r["device_type"] == "cpu-core" and r["price_source"] == "table"
    # manifest totals = ledger totals

    manifest = published_manifest(tmp_path / "out")
    assert manifest["cost"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert manifest["cost"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    # the embedded cluster's worker wrote its final row when the cluster closed
    workers = led.workers().to_pylist()
    assert len(workers) == 1 and workers[0]["final"]
    assert workers[0]["busy_seconds"] == pytest.approx(sum(r["wall_seconds"] for r in rows))
    assert workers[0]["held_seconds"] > workers[0]["busy_seconds"]
    # the same summary is a Prefect artifact of the run
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.cost import artifact_key

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key(result["run_id"])])
            )
        )
    assert arts and "Per device type" in str(arts[0].data) and "cpu-core" in str(arts[0].data)


def test_failed_then_retried_shard_two_rows_through_flow(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process Dask workers (processes=False) so the test can make one attempt fail."""
    from distributed import LocalCluster

    from synthgen.engines.fake import FakeEngine

    monkeypatch.delenv(PRICE_ENV, raising=False)
    calls = {"n": 0}
    real = FakeEngine.generate

    def flaky(self: FakeEngine, requests: Any, sampling: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.5)  # the failed attempt ran (and billed) for a while
            raise RuntimeError("simulated CUDA error")
        return real(self, requests, sampling)

    monkeypatch.setattr(FakeEngine, "generate", flaky)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    ) as cluster:
        cfg = _config(
            tmp_path,
            "retry",
            **{"cluster.address": cluster.scheduler_address, "model.fake.seconds_per_shard": 0.2},
        )
        result = _run(cfg)
    assert result["status"] == "complete"
    led = _run_ledger(tmp_path, result)
    rows = led.rows().to_pylist()
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_shard.setdefault(r["shard_id"], []).append(r)
    retried = [s for s, rs in by_shard.items() if len(rs) == 2]
    assert len(retried) == 1 and len(rows) == 5
    pair = sorted(by_shard[retried[0]], key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in pair] == [(1, "failed"), (2, "succeeded")]
    assert "simulated CUDA error" in pair[0]["error"] and pair[0]["wall_seconds"] >= 0.5
    summary = load_summary(str(tmp_path / "out" / "runs" / result["run_id"]))
    total = sum(r["cost_usd"] for r in rows)
    assert summary.totals["cost_usd"] == pytest.approx(total)  # both attempts counted
    assert summary.totals["failed_cost_usd"] == pytest.approx(pair[0]["cost_usd"])
    assert summary.totals["failed_attempts"] == 1 and summary.totals["shards"] == 4
    # external cluster: the run released the worker, which wrote its final row
    workers = led.workers().to_pylist()
    assert len(workers) == 1 and workers[0]["final"] and workers[0]["failed_attempts"] == 1


def test_budget_stops_then_resume_with_higher_budget(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the embedded cluster's worker (named 0) leased by the operator at 3600 $/h: each 1 s
    # shard costs about $1; the worker's own SYNTHGEN_PRICE_PER_HOUR changes nothing
    monkeypatch.setenv(PRICE_ENV, "0.01")
    cfg = _config(
        tmp_path,
        "budget",
        **{
            "model.fake.seconds_per_shard": 1.0,
            "shards.size": 4,
            "cost.worker_prices": {"0": 3600.0},
        },
    )
    first = _run(cfg, ["budget.max_cost_usd=2.5"])
    assert first["status"] == "partial"
    led = _run_ledger(tmp_path, first)
    rows1 = sorted(led.rows().to_pylist(), key=lambda r: r["started_at"])
    assert all((r["price_per_hour"], r["price_source"]) == (3600.0, "lease") for r in rows1)
    # one worker, shards one after another: shard j+1 started only because
    # spent_j + spent_j / j <= 2.5, and the run stopped because the next check failed.
    # Each shard costs about $1 (1 s at 3600 $/h), so normally 2 shards run; under heavy
    # load a slower first shard can leave room for only 1, so check the rule itself.
    costs = [r["cost_usd"] for r in rows1]
    k = len(costs)
    assert 1 <= k < 6
    for j in range(1, k):
        spent = sum(costs[:j])
        assert spent + spent / j <= 2.5
    assert sum(costs) + sum(costs) / k > 2.5
    assert not (tmp_path / "out" / "dataset" / "README.md").exists()
    shard_files = {p.name: p.stat().st_mtime_ns for p in (Path(led.run.root) / "shards").iterdir()}
    assert len(shard_files) == k
    run_uri = str(tmp_path / "out" / "runs" / first["run_id"])
    budget = load_summary(run_uri).budget
    assert budget is not None and budget["partial"] and budget["max_cost_usd"] == 2.5
    msg = budget["message"]
    assert f"{k}/6 shards done" in msg and f"{6 - k} not started" in msg
    assert f"--set run_id={first['run_id']}" in msg and "budget.max_cost_usd=" in msg

    second = _run(cfg, ["budget.max_cost_usd=100"])
    assert second["status"] == "complete" and second["run_id"] == first["run_id"]
    rows2 = led.rows().to_pylist()
    assert len(rows2) == 6 and len({r["shard_id"] for r in rows2}) == 6  # none regenerated
    for name, mtime in shard_files.items():  # committed shards untouched by the resume
        assert (Path(led.run.root) / "shards" / name).stat().st_mtime_ns == mtime
    assert second["shards_generated"] == 6 - k and second["shards_skipped"] == k
    after = load_summary(run_uri)
    assert after.budget is not None and not after.budget["partial"]
    assert after.totals["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows2))
