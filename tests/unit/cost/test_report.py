"""`synthgen report`: totals, per-device and per-shard tables, PNG, markdown, over local and S3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from synthgen.cost.ledger import open_run_uri
from synthgen.cost.prices import Price, ShardAttempt, WorkerUsage, ledger_row, worker_row
from synthgen.cost.report import (
    format_text,
    load_summary,
    manifest_totals,
    summarize,
    to_markdown,
    write_report,
)

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
P4090 = Price(0.36, "RTX 4090", "table")
PH100 = Price(2.16, "H100", "table")


def _attempt(
    shard: str, n: int, price: Price, start: float, secs: float, ok: bool, tokens: int, worker: str
) -> dict:
    return ledger_row(
        ShardAttempt(
            run_id="r1", shard_id=shard, attempt=n, attempt_id=f"{shard}-{n}", worker=worker,
            host="h", device=price.device_type, model="m", price=price,
            started_at=T0 + timedelta(seconds=start), finished_at=T0 + timedelta(seconds=start + secs),
            engine_seconds=secs, prompts=10, prompt_tokens=100,
            completion_tokens=tokens if ok else 0,
            kept_records=8 if ok else None, kept_tokens=tokens // 2 if ok else None,
            status="succeeded" if ok else "failed",
        )
    )  # fmt: skip


def _worker(wid: str, price: Price, held: float, load: float, busy: float) -> dict:
    return worker_row(
        WorkerUsage(
            run_id="r1", worker_id=wid, worker=wid, host="h", pid=1, device=price.device_type,
            price=price, joined_at=T0, held_from=T0, held_until=T0 + timedelta(seconds=held),
            load_seconds=load, busy_seconds=busy, shards=1, failed_attempts=0,
        )
    )  # fmt: skip


def _rows() -> tuple[list[dict], list[dict]]:
    ledger = [
        # shard 0 on the 4090: failed after 100 s (0.01 $), retried 200 s (0.02 $), 40,000 tokens
        _attempt("shard-00000", 1, P4090, 0, 100, False, 0, "w4090"),
        _attempt("shard-00000", 2, P4090, 100, 200, True, 40_000, "w4090"),
        # shard 1 on the H100: 50 s (0.03 $), 60,000 tokens
        _attempt("shard-00001", 1, PH100, 0, 50, True, 60_000, "wh100"),
    ]
    workers = [
        _worker("w4090", P4090, held=400, load=50, busy=300),  # 0.04 $ held
        _worker("wh100", PH100, held=100, load=20, busy=50),  # 0.06 $ held
    ]
    return ledger, workers


def test_summary_hand_computed() -> None:
    s = summarize(*_rows())
    t = s.totals
    assert t["cost_usd"] == pytest.approx(0.06, abs=1e-12)
    assert round(t["cost_usd"], 2) == 0.06
    assert t["failed_cost_usd"] == pytest.approx(0.01) and t["failed_share"] == pytest.approx(1 / 6)
    assert (t["shards"], t["attempts"], t["failed_attempts"]) == (2, 3, 1)
    assert t["completion_tokens"] == 100_000 and t["kept_tokens"] == 50_000
    assert t["usd_per_1m_completion_tokens"] == pytest.approx(0.60)
    assert t["usd_per_1m_kept_tokens"] == pytest.approx(1.20)
    assert t["held_seconds"] == 500 and t["held_cost_usd"] == pytest.approx(0.10)
    assert t["utilisation"] == pytest.approx(350 / 500)
    assert t["load_cost_usd"] == pytest.approx(0.36 * 50 / 3600 + 2.16 * 20 / 3600)
    assert t["idle_cost_usd"] == pytest.approx(0.36 * 50 / 3600 + 2.16 * 30 / 3600)
    assert t["billed_usd"] == pytest.approx(0.10)
    dev = {d["device_type"]: d for d in s.per_device}
    assert dev["RTX 4090"]["cost_usd"] == pytest.approx(0.03)
    assert dev["RTX 4090"]["failed_share"] == pytest.approx(1 / 3)
    assert dev["RTX 4090"]["tokens_per_s"] == pytest.approx(200.0)  # 40,000 / 200 s
    assert dev["RTX 4090"]["usd_per_1m_completion_tokens"] == pytest.approx(0.75)
    assert dev["H100"]["tokens_per_s"] == pytest.approx(1200.0)
    assert dev["H100"]["usd_per_1m_kept_tokens"] == pytest.approx(1.0)
    assert dev["H100"]["utilisation"] == pytest.approx(0.5)
    shard0 = s.per_shard[0]
    assert (shard0["attempts"], shard0["status"]) == (2, "succeeded")
    assert shard0["cost_usd"] == pytest.approx(0.03)  # both attempts counted
    m = manifest_totals(s)
    assert m["cost_usd"] == pytest.approx(0.06) and m["billed_usd"] == pytest.approx(0.10)


def test_report_names_leased_and_self_priced_workers() -> None:
    lease = Price(0.42, "RTX 4090", "lease")
    self_stated = Price(0.01, "H100", "worker")  # a ledger from before prices left the host
    ledger = [
        _attempt("shard-00000", 1, lease, 0, 100, True, 1000, "wlease"),
        _attempt("shard-00001", 1, self_stated, 0, 100, True, 1000, "wself"),
        _attempt("shard-00002", 1, P4090, 0, 100, True, 1000, "wtable"),
    ]
    workers = [_worker("wlease", lease, 200, 0, 100), _worker("wtable", P4090, 200, 0, 100)]
    s = summarize(ledger, workers)
    assert s.totals["lease_priced"] == ["wlease"]
    assert s.totals["self_priced"] == ["wself"]
    text = format_text(s)
    assert "1 worker(s) priced by the operator's lease (cost.worker_prices): wlease" in text
    assert "SELF-PRICED" in text and "wself" in text
    plain = format_text(summarize(*_rows()))
    assert "operator's lease" not in plain and "SELF-PRICED" not in plain


def test_worker_without_row_still_billed_its_shards() -> None:
    ledger, workers = _rows()
    s = summarize(ledger, workers[:1])  # the H100 worker died and left no row
    assert s.totals["billed_usd"] == pytest.approx(0.04 + 0.03)


def test_write_report_local_png_and_markdown(tmp_path: Path) -> None:
    run = tmp_path / "out" / "runs" / "r1"
    led = open_run_uri(str(run))
    ledger, workers = _rows()
    for row in ledger:
        led.write(row)
    for row in workers:
        led.write_worker(row)
    files = write_report(str(run))
    png = (run / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "RTX 4090" in files.text and "$0.0600" in files.text and "16.7%" in files.text
    assert "| device |" in files.markdown and (run / "report.md").read_text() == files.markdown
    other = tmp_path / "elsewhere" / "r.png"
    files2 = write_report(str(run), out=str(other))
    assert other.read_bytes().startswith(b"\x89PNG") and files2.png_path == str(other)
    assert to_markdown(load_summary(str(run))).startswith("# synthgen run `r1`")


def test_report_missing_run_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_summary(str(tmp_path / "nope"))


def test_report_over_s3(s3_server: str, s3_bucket: str) -> None:
    s3_opts = {"endpoint_url": s3_server}
    uri = f"s3://{s3_bucket}/out/runs/r1"
    led = open_run_uri(uri, s3_opts)
    ledger, workers = _rows()
    for row in ledger:
        led.write(row)
    for row in workers:
        led.write_worker(row)
    files = write_report(uri, storage_options=s3_opts)
    assert files.png_path == f"{uri}/report.png"
    led.store.fs.invalidate_cache()
    assert led.store.fs.cat(f"{led.run.root}/report.png").startswith(b"\x89PNG")
    assert load_summary(uri, s3_opts).totals["attempts"] == 3


def test_report_cli_prints_and_writes_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from synthgen.cli import main

    run = tmp_path / "out" / "runs" / "r1"
    led = open_run_uri(str(run))
    ledger, workers = _rows()
    for row in ledger:
        led.write(row)
    for row in workers:
        led.write_worker(row)
    png = tmp_path / "chart.png"
    assert main(["report", str(run), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "per device type" in out and "H100" in out and str(png) in out
    assert png.read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(tmp_path / "missing")]) == 2  # a clear error, not a traceback
