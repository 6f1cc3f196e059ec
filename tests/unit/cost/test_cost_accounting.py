"""AttemptMeter: the pipeline's ledger writes for succeeded and failed attempts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from synthgen.config import config_from_dict
from synthgen.cost import usage
from synthgen.cost.leases import IGNORED_PRICE_ENV
from synthgen.cost.ledger import open_run_uri
from synthgen.cost.meter import AttemptMeter, Counts
from synthgen.errors import ConfigError


def test_meter_failed_then_succeeded_rows_and_wall_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(IGNORED_PRICE_ENV, raising=False)
    usage.reset()
    cfg = config_from_dict({"run_id": "acct", "output": {"uri": str(tmp_path)}})
    led = open_run_uri(str(tmp_path / "runs" / "acct"))
    dev = "NVIDIA GeForce RTX 4090"
    m1 = AttemptMeter.start(cfg, "shard-00003", 1, dev, "m")
    time.sleep(0.2)
    failed = m1.finish_in(led, Counts(prompts=8), "failed", error="RuntimeError: CUDA OOM")
    m2 = AttemptMeter.start(cfg, "shard-00003", 2, dev, "m")
    time.sleep(0.3)
    ok = m2.finish_in(led, Counts(8, 80, 800, 8, 700, 0.25), "succeeded")
    rows = led.rows().to_pylist()
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "succeeded")]
    assert rows[0]["error"] == "RuntimeError: CUDA OOM"
    assert 0.2 <= failed["wall_seconds"] < 0.3 and 0.3 <= ok["wall_seconds"] < 0.4
    for r in rows:
        assert r["cost_usd"] == 0.35 * r["wall_seconds"] / 3600
        assert r["price_source"] == "table" and r["device_type"] == "RTX 4090"
    workers = led.workers().to_pylist()
    assert len(workers) == 1
    assert workers[0]["shards"] == 1 and workers[0]["failed_attempts"] == 1
    assert workers[0]["busy_seconds"] == pytest.approx(failed["wall_seconds"] + ok["wall_seconds"])
    usage.reset()


def test_meter_ignores_host_price_env_and_refuses_unpriced_under_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the host's own word changes nothing: an unknown device stays unpriced, a known one
    # pays the table (outside a Dask worker no lease names this process)
    monkeypatch.setenv(IGNORED_PRICE_ENV, "0.5")
    cfg = config_from_dict(
        {"run_id": "acct", "output": {"uri": str(tmp_path)}, "cost": {"worker_prices": {"h": 9}}}
    )
    unknown = AttemptMeter.start(cfg, "s", 1, "NVIDIA GeForce RTX 3060", "m").price
    assert (unknown.per_hour, unknown.source) == (0.0, "unknown")
    known = AttemptMeter.start(cfg, "s", 1, "NVIDIA GeForce RTX 4090", "m").price
    assert (known.per_hour, known.source) == (0.35, "table")
    capped = config_from_dict({"budget": {"max_cost_usd": 5}})
    with pytest.raises(ConfigError, match="RTX 3060.*budget"):
        AttemptMeter.start(capped, "s", 1, "NVIDIA GeForce RTX 3060", "m")
    assert AttemptMeter.start(cfg, "s", 1, "NVIDIA GeForce RTX 3060", "m").price.source == "unknown"


def test_process_start_time_is_exact_to_a_tick() -> None:
    """A worker is held from its process's start: read from /proc to a clock tick, not
    psutil's create_time(), which counts from a whole-second boot time."""
    import subprocess
    import sys
    import time

    from synthgen.cost.usage import _process_start

    before = time.time()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    after = time.time()
    try:
        started = _process_start(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert before - 0.02 <= started <= after + 0.02, (before, started, after)
