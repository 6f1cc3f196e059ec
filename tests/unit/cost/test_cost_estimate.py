"""`synthgen estimate`: projection arithmetic from calibration, ledgers and hints."""

from __future__ import annotations

import pytest

from synthgen.config import config_from_dict
from synthgen.cost.estimate import Throughput, format_estimate, ledger_throughputs, project


def _ledger_row(
    dt: str,
    prompts: int,
    wall: float,
    tokens: int,
    model: str = "m",
    status: str = "succeeded",
    price: float = 0.36,
    source: str = "table",
) -> dict:
    return {
        "device_type": dt, "prompts": prompts, "wall_seconds": wall, "completion_tokens": tokens,
        "model": model, "status": status, "price_per_hour": price, "price_source": source,
    }  # fmt: skip


def test_ledger_throughput_per_device_and_model() -> None:
    rows = [
        _ledger_row("RTX 4090", 10, 20.0, 1000),
        _ledger_row("RTX 4090", 30, 60.0, 3000),
        _ledger_row("RTX 4090", 10, 99.0, 0, status="failed"),  # failures are not throughput
        _ledger_row("H100", 10, 5.0, 1000, model="other"),
    ]
    tps = ledger_throughputs(rows, model="m")
    assert [t.device_type for t in tps] == ["RTX 4090"]
    t = tps[0]
    assert t.seconds_per_prompt == pytest.approx(2.0)
    assert t.tokens_per_prompt == pytest.approx(100.0)
    assert t.tokens_per_s == pytest.approx(50.0)
    assert t.price_per_hour == pytest.approx(0.36) and t.samples == 40


def test_ledger_prices_only_the_operators() -> None:
    """An older ledger's rows a worker priced itself (source "worker") give their speed but
    not their price: the operator's (lease, table) rows do, else the table."""
    rows = [
        _ledger_row("RTX 4090", 10, 20.0, 1000, price=0.30, source="lease"),
        _ledger_row("RTX 4090", 10, 60.0, 1000, price=0.01, source="worker"),
        _ledger_row("H100", 10, 5.0, 1000, price=0.01, source="worker"),
    ]
    tps = {t.device_type: t for t in ledger_throughputs(rows)}
    assert tps["RTX 4090"].price_per_hour == pytest.approx(0.30)  # the lease row only
    assert tps["RTX 4090"].seconds_per_prompt == pytest.approx(4.0)  # speed from both
    assert tps["H100"].price_per_hour is None
    cfg = config_from_dict({})
    projected = {r["device_type"]: r for r in project(cfg, 100, list(tps.values()))}
    assert projected["H100"]["price_per_hour"] == cfg.cost.prices["H100"]  # the table's
    assert projected["RTX 4090"]["price_per_hour"] == pytest.approx(0.30)


def test_projection_hand_computed() -> None:
    cfg = config_from_dict({"cost": {"throughput_hints": {"H100": 400.0}}})
    measured = [Throughput("RTX 4090", "ledger", 2.0, 100.0, 50.0, 0.36, 40)]
    rows = {r["device_type"]: r for r in project(cfg, 18_000, measured, workers=4)}
    r = rows["RTX 4090"]
    # 18,000 prompts x 2 s = 36,000 worker-seconds = 10 h; x 0.36 $/h = 3.60 $
    assert r["worker_hours"] == pytest.approx(10.0) and r["wall_hours"] == pytest.approx(2.5)
    assert r["cost_usd"] == pytest.approx(3.60) and r["completion_tokens"] == 1_800_000
    assert r["usd_per_1m_completion_tokens"] == pytest.approx(2.0)
    h = rows["H100"]  # hint: 1.8M tokens / 400 tok/s = 4,500 s = 1.25 h x 2.20 $/h
    assert (h["source"], h["worker_hours"]) == ("hint", pytest.approx(1.25))
    assert h["cost_usd"] == pytest.approx(2.75)
    assert rows["A100"]["cost_usd"] is None and rows["A100"]["source"] == "no measurement"
    text = format_estimate(cfg, 18_000, list(rows.values()), 4)
    assert "RTX 4090" in text and "$3.6000" in text and "no measurement" in text


def test_calibration_beats_ledger_for_same_device() -> None:
    cfg = config_from_dict({})
    measured = [
        Throughput("RTX 4090", "ledger", 2.0, 100.0, 50.0, 0.36, 40),
        Throughput("RTX 4090", "calibration", 1.0, 100.0, 100.0, 0.35, 8),
    ]
    row = next(r for r in project(cfg, 3600, measured) if r["device_type"] == "RTX 4090")
    assert row["source"] == "calibration" and row["cost_usd"] == pytest.approx(0.35)


def test_estimate_cli_calibrates_and_reads_earlier_ledgers(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from synthgen.cli import main
    from synthgen.cost.ledger import open_run_uri
    from synthgen.cost.prices import Price, ShardAttempt, ledger_row
    from tests.helpers import fake_config, write_config

    out = str(tmp_path / "out")
    cfg = write_config(
        tmp_path / "c.yaml",
        fake_config(
            out, model__fake__seconds_per_token=0.002, model__fake__tokens_per_completion=16
        ),
    )
    # an earlier run of the same model on an RTX 4090: 10 prompts in 5 s
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    open_run_uri(f"{out}/runs/old").write(
        ledger_row(
            ShardAttempt(
                "old", "shard-00000", 1, "x", "w", "h", "NVIDIA GeForce RTX 4090", "fake",
                Price(0.36, "RTX 4090", "table"), t0, t0 + timedelta(seconds=5), 5.0, 10, 100,
                160, 10, 160, "succeeded",
            )
        ),
    )  # fmt: skip
    assert main(["estimate", cfg, "--sample", "4"]) == 0
    text = capsys.readouterr().out
    cpu = next(line for line in text.splitlines() if line.startswith("cpu-core"))
    rtx = next(line for line in text.splitlines() if line.startswith("RTX 4090"))
    assert "calibration" in cpu and " 384 " in cpu  # 24 prompts x 16 tokens
    # 24 prompts x 0.5 s per prompt = 12 s = 0.00333 h; x 0.36 $/h = $0.0012
    assert "ledger" in rtx and "0.00333" in rtx and "$0.0012 " in rtx


def test_a_multi_stage_estimate_runs_the_chain_and_projects_every_stage(tmp_path) -> None:
    from synthgen.config import config_from_dict
    from synthgen.cost.estimate import estimate
    from tests.helpers import fake_config

    stages = [
        {"name": "question", "prompt": "Ask about {{ prompt }}"},
        {"name": "answer", "prompt": "{{ question }}", "sampling": {"n": 3}},
    ]
    cfg = config_from_dict(
        fake_config(str(tmp_path / "out"), stages=stages, model__fake__tokens_per_completion=10)
    )
    text, rows = estimate(cfg, sample=4)
    cpu = next(r for r in rows if r["source"] == "calibration")
    # 24 prompts x (10 question tokens + 3 answers x 10 tokens)
    assert cpu["completion_tokens"] == 24 * (10 + 3 * 10)
    assert "per stage (calibrated on 4 prompts, projected to 24)" in text
    answer = next(line for line in text.splitlines() if line.startswith("answer"))
    assert answer.split()[1:3] == ["4", "12"]  # rows in, rows out (n=3)
