"""Prices, device matching, the operator's per-worker leases and ledger arithmetic (issue 4)."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from synthgen.config import CostConfig, config_from_dict
from synthgen.cost.prices import (
    LEDGER_SCHEMA,
    Price,
    ShardAttempt,
    WorkerUsage,
    kept_counts,
    ledger_row,
    ledger_table,
    match_device_type,
    parse_device_label,
    price_for_device,
    worker_row,
)
from synthgen.engines.devices import DeviceInfo
from synthgen.errors import ConfigError

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def attempt(**kw: object) -> ShardAttempt:
    base: dict[str, object] = dict(
        run_id="r1",
        shard_id="shard-00000",
        attempt=1,
        attempt_id="a1",
        worker="tcp://10.0.0.2:4000",
        host="box",
        device="NVIDIA GeForce RTX 4090",
        model="m",
        price=Price(0.36, "RTX 4090", "table"),
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1500),
        engine_seconds=1400.0,
        prompts=100,
        prompt_tokens=5000,
        completion_tokens=30_000,
        kept_records=90,
        kept_tokens=25_000,
        status="succeeded",
    )
    base.update(kw)
    return ShardAttempt(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ device matching
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX 3090"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", None),  # "L4" must not match a different card by prefix
        ("NVIDIA GeForce RTX 3060", None),
        ("nvidia geforce rtx4090", None),  # glued words are a different name
    ],
)
def test_device_name_matching_default_table(name: str, expected: str | None) -> None:
    assert match_device_type(name, CostConfig().prices) == expected


def test_longest_key_wins_and_user_keys_override() -> None:
    prices = {"A100": 1.2, "A100 80GB": 1.6, "RTX 4090": 0.35}
    assert match_device_type("NVIDIA A100 80GB PCIe", prices) == "A100 80GB"
    assert match_device_type("NVIDIA A100-SXM4-40GB", prices) == "A100"


def test_gpu_price_from_table_scales_with_gpus() -> None:
    cfg = CostConfig()
    dev = DeviceInfo(kind="cuda", name="NVIDIA GeForce RTX 4090")
    assert price_for_device(dev, cfg) == Price(0.35, "RTX 4090", "table")
    assert price_for_device(dev, cfg, gpus=2).per_hour == pytest.approx(0.70)


def test_cpu_price_is_core_hour_times_cores() -> None:
    cfg = CostConfig()
    dev = parse_device_label("cpu: AMD EPYC 7B13 (2 cores)")
    assert dev == DeviceInfo(kind="cpu", name="AMD EPYC 7B13", count=2)
    price = price_for_device(dev, cfg)
    assert price == Price(0.04, "cpu-core", "table")
    # a table key naming the CPU model prices the machine as a whole
    cfg2 = CostConfig(prices={**cfg.prices, "EPYC 7B13": 0.5})
    assert price_for_device(dev, cfg2) == Price(0.5, "EPYC 7B13", "table")


def test_unknown_device_zero_or_error() -> None:
    dev = DeviceInfo(kind="cuda", name="NVIDIA GeForce RTX 3060")
    p = price_for_device(dev, CostConfig())
    assert (p.per_hour, p.source) == (0.0, "unknown")
    with pytest.raises(ConfigError, match="RTX 3060.*cost.worker_prices"):
        price_for_device(dev, CostConfig(unknown_device="error"))


def test_lease_wins_over_table_as_it_stands() -> None:
    dev = DeviceInfo(kind="cuda", name="NVIDIA GeForce RTX 4090")
    price = price_for_device(dev, CostConfig(), lease=0.29, gpus=2)
    assert price == Price(0.29, "RTX 4090", "lease")  # per worker process: not x gpus
    assert price_for_device(dev, CostConfig(), gpus=2) == Price(0.70, "RTX 4090", "table")


def test_removed_preload_module_refuses_to_load() -> None:
    # `dask worker --preload synthgen.cost.worker_price` imports it: the worker does not start
    # (tests/unit/cost/test_cost_ledger.py runs that command)
    with pytest.raises(ImportError, match="no longer states its own price.*cost.worker_prices"):
        importlib.import_module("synthgen.cost.worker_price")


def test_config_rejects_negative_price() -> None:
    with pytest.raises(ConfigError, match="RTX 4090"):
        config_from_dict({"cost": {"prices": {"RTX 4090": -1}}})
    cfg = config_from_dict({}, ["cost.prices.RTX 5090=0.6", "budget.max_cost_usd=200"])
    assert cfg.cost.prices["RTX 5090"] == 0.6
    assert cfg.cost.prices["RTX 4090"] == 0.35  # defaults kept beside the new key
    assert cfg.budget.max_cost_usd == 200


# ------------------------------------------------------------------ ledger arithmetic
def test_ledger_hand_computed_to_the_cent() -> None:
    # 0.36 $/h x 1500 s = 0.15 $ ; 30,000 completion tokens -> 5.00 $/1M ; 25,000 kept -> 6.00 $/1M
    ok = ledger_row(attempt())
    assert ok["wall_seconds"] == 1500.0
    assert round(ok["cost_usd"], 2) == 0.15
    assert ok["cost_usd"] == pytest.approx(0.15, abs=1e-12)
    assert ok["usd_per_1m_completion_tokens"] == pytest.approx(5.00, abs=1e-9)
    assert ok["usd_per_1m_kept_tokens"] == pytest.approx(6.00, abs=1e-9)
    # a failed attempt on a 2-core CPU worker: 0.04 $/h x 300 s = 0.00333... $
    failed = ledger_row(
        attempt(
            attempt=1,
            attempt_id="a0",
            price=Price(0.04, "cpu-core", "table"),
            finished_at=T0 + timedelta(seconds=300),
            completion_tokens=0,
            kept_records=None,
            kept_tokens=None,
            status="failed",
            error="EngineError: boom",
        )
    )
    assert failed["cost_usd"] == pytest.approx(0.04 * 300 / 3600, abs=1e-15)
    assert failed["usd_per_1m_completion_tokens"] is None
    total = ok["cost_usd"] + failed["cost_usd"]
    assert round(total, 2) == 0.15 and round(total, 4) == 0.1533
    table = ledger_table([ok, failed])
    assert table.schema == LEDGER_SCHEMA
    assert pc.sum(table["cost_usd"]).as_py() == pytest.approx(0.1533333333, abs=1e-9)


def test_cost_is_exactly_price_times_seconds() -> None:
    row = ledger_row(attempt(finished_at=T0 + timedelta(seconds=7.123456)))
    assert row["cost_usd"] == 0.36 * row["wall_seconds"] / 3600


def test_ledger_row_validation_names_the_shard() -> None:
    with pytest.raises(ValueError, match="shard-00000.*before"):
        ledger_row(attempt(finished_at=T0 - timedelta(seconds=1)))
    with pytest.raises(ValueError, match="timezone"):
        ledger_row(attempt(started_at=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="attempt numbers"):
        ledger_row(attempt(attempt=0))


def test_kept_counts_excludes_rejected_and_dropped() -> None:
    table = pa.table(
        {
            "finish_reason": ["stop", "length", "rejected", "stop"],
            "completion_tokens": pa.array([10, 20, 0, 30], pa.int32()),
            "drop_reason": [None, None, None, "too_short"],
        }
    )
    assert kept_counts(table) == (2, 30)


def test_worker_row_held_busy_idle_load() -> None:
    row = worker_row(
        WorkerUsage(
            run_id="r1",
            worker_id="box-1-2",
            worker="tcp://x",
            host="box",
            pid=1,
            device="NVIDIA H100 80GB HBM3",
            price=Price(2.2, "H100", "table"),
            joined_at=T0,
            held_from=T0,
            held_until=T0 + timedelta(seconds=3600),
            load_seconds=600.0,
            busy_seconds=2400.0,
            shards=12,
            failed_attempts=1,
        )
    )
    assert row["held_seconds"] == 3600.0
    assert row["idle_seconds"] == 600.0
    assert row["cost_usd"] == pytest.approx(2.2)
    assert row["load_cost_usd"] == pytest.approx(2.2 / 6)
    assert row["idle_cost_usd"] == pytest.approx(2.2 / 6)


def test_config_prices_merge_over_defaults_and_null_removes() -> None:
    cfg = config_from_dict({"cost": {"prices": {"RTX 4090": 0.4, "L4": None}}})
    assert cfg.cost.prices["RTX 4090"] == 0.4
    assert "L4" not in cfg.cost.prices
    assert cfg.cost.prices["H100"] == 2.2


def test_extend_worker_row_recomputes_idle_and_cost() -> None:
    from synthgen.cost.prices import extend_worker_row

    base = worker_row(
        WorkerUsage(
            run_id="r1", worker_id="w", worker="tcp://x", host="h", pid=7, device="d",
            price=Price(3.6, "H100", "table"), joined_at=T0, held_from=T0,
            held_until=T0 + timedelta(seconds=100), load_seconds=10.0, busy_seconds=50.0,
            shards=2, failed_attempts=0, final=True,
        )
    )  # fmt: skip
    longer = extend_worker_row(base, T0 + timedelta(seconds=104))
    assert (longer["held_seconds"], longer["idle_seconds"]) == (104.0, 44.0)
    assert longer["cost_usd"] == pytest.approx(0.104) and longer["final"]
