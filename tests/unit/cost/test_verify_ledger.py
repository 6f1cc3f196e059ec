"""Verification cost in the ledger (issue 8): rows apart from shard attempts, exact totals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from synthgen.cost.budget import BudgetGate
from synthgen.cost.ledger import open_run_uri
from synthgen.cost.prices import Price, verification_row
from synthgen.cost.report import load_summary, manifest_totals, summarize, to_markdown
from tests.unit.cost.test_report import P4090, PH100, T0, _rows

PCPU = Price(0.08, "cpu-core", "table")


def _check(shard: str, attempt: int, price: Price, start: float, secs: float, worker: str) -> dict:
    return verification_row(
        run_id="r1", shard_id=shard, attempt=attempt, check_id=f"v-{shard}-{attempt}",
        worker=worker, host="h", device=price.device_type, model="m", price=price,
        started_at=T0 + timedelta(seconds=start), seconds=secs,
    )  # fmt: skip


def _checks() -> list[dict]:
    return [
        # shard 0 (generated on the 4090) checked on the H100 for 10 s: 2.16 * 10 / 3600 = 0.006 $
        _check("shard-00000", 2, PH100, 300, 10, "wh100"),
        # shard 1 (generated on the H100) checked on the 4090 for 50 s: 0.36 * 50 / 3600 = 0.005 $
        _check("shard-00001", 1, P4090, 60, 50, "w4090"),
    ]


def test_verification_row_is_priced_on_its_seconds() -> None:
    row = _check("shard-00003", 1, PCPU, 0, 45, "w")
    assert row["status"] == "verification"
    assert row["cost_usd"] == pytest.approx(0.08 * 45 / 3600, abs=1e-15)
    assert row["wall_seconds"] == row["engine_seconds"] == 45
    assert (row["prompts"], row["prompt_tokens"], row["completion_tokens"]) == (0, 0, 0)
    assert row["finished_at"] - row["started_at"] == timedelta(seconds=45)
    with pytest.raises(ValueError, match="shard-00003"):
        _check("shard-00003", 1, PCPU, 0, -1, "w")


def test_report_keeps_verification_apart_from_shard_attempts() -> None:
    ledger, workers = _rows()
    s = summarize([*ledger, *_checks()], workers)
    t = s.totals
    # generation figures exactly as without verification (tests/unit/cost/test_report.py)
    assert t["cost_usd"] == pytest.approx(0.06, abs=1e-12)
    assert (t["shards"], t["shards_failed"], t["attempts"], t["failed_attempts"]) == (2, 0, 3, 1)
    assert t["failed_share"] == pytest.approx(1 / 6)
    assert t["usd_per_1m_completion_tokens"] == pytest.approx(0.60)
    assert t["prompt_tokens"] == 200
    assert [(p["shard_id"], p["attempts"]) for p in s.per_shard] == [
        ("shard-00000", 2),
        ("shard-00001", 1),
    ]
    assert s.per_shard[1]["cost_usd"] == pytest.approx(0.03)
    assert all(r["status"] != "verification" for r in s.attempts)
    # verification on its own line
    assert t["verification_checks"] == 2 and t["verification_seconds"] == 60
    assert t["verification_cost_usd"] == pytest.approx(0.011, abs=1e-12)
    assert t["verification_share"] == pytest.approx(0.011 / 0.06)
    assert t["spent_usd"] == pytest.approx(0.071, abs=1e-12)
    assert t["billed_usd"] == pytest.approx(0.10)  # both workers have rows: held time only
    dev = {d["device_type"]: d for d in s.per_device}
    assert dev["H100"]["verification_cost_usd"] == pytest.approx(0.006)
    assert dev["RTX 4090"]["verification_cost_usd"] == pytest.approx(0.005)
    assert dev["RTX 4090"]["attempts"] == 2 and dev["RTX 4090"]["cost_usd"] == pytest.approx(0.03)
    assert dev["H100"]["usd_per_1m_kept_tokens"] == pytest.approx(1.0)
    md = to_markdown(s)
    assert "- **verification**: $0.0110 (2 checks, 60.0 s) = 18.3% of the generation cost" in md
    assert "verify $" in md
    m = manifest_totals(s)
    assert m["verification_cost_usd"] == pytest.approx(0.011) and m["cost_usd"] == pytest.approx(
        0.06
    )


def test_verification_of_a_dead_worker_is_still_billed() -> None:
    ledger, workers = _rows()
    s = summarize([*ledger, *_checks()], workers[:1])  # the H100 worker left no row
    assert s.totals["billed_usd"] == pytest.approx(0.04 + 0.03 + 0.006)


def test_budget_spend_counts_verification_but_not_as_an_attempt() -> None:
    ledger, _ = _rows()
    gate = BudgetGate.from_ledger(1.0, [*ledger, *_checks()])
    assert gate.spent_usd == pytest.approx(0.071)
    assert (gate.attempts, gate.shards_done) == (3, 2)


def test_ledger_files_read_ledger_globs(tmp_path: Path) -> None:
    run = tmp_path / "out" / "runs" / "r1"
    led = open_run_uri(str(run))
    ledger, workers = _rows()
    for row in ledger:
        led.write(row)
    for row in workers:
        led.write_worker(row)
    paths = [led.write(row) for row in _checks()]
    assert paths[0] == led.stage.ledger_verification("shard-00000", 2, "v-shard-00000-2")
    assert Path(paths[0]).name.startswith("shard-00000-verify-a2-")
    assert len({Path(p).name for p in paths}) == 2 and all(Path(p).is_file() for p in paths)
    every = led.rows().to_pylist()
    assert sorted(r["status"] for r in every) == [
        "failed",
        "succeeded",
        "succeeded",
        "verification",
        "verification",
    ]
    # the per-shard glob (what the flow's budget bookkeeping reads) sees attempts only
    shard0 = led.rows("shard-00000").to_pylist()
    assert [r["status"] for r in shard0] == ["failed", "succeeded"]
    t = load_summary(str(run)).totals
    assert t["attempts"] == 3 and t["verification_cost_usd"] == pytest.approx(0.011)
