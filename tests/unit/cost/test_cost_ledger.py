"""Ledger and worker rows on storage; worker-side usage snapshots."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from synthgen.config import CostConfig, OutputConfig
from synthgen.cost import usage
from synthgen.cost.ledger import Ledger, open_run_uri
from synthgen.cost.prices import Price, ShardAttempt, ledger_row
from synthgen.errors import StorageError
from synthgen.io import store as store_module
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def _row(shard: str, attempt: int, status: str, seconds: float) -> dict[str, object]:
    return ledger_row(
        ShardAttempt(
            run_id="r1",
            shard_id=shard,
            attempt=attempt,
            attempt_id=f"id{shard[-1]}{attempt}",
            worker="tcp://w",
            host="h",
            device="cpu: X (2 cores)",
            model="m",
            price=Price(0.04, "cpu-core", "table"),
            started_at=T0 + timedelta(seconds=10 * attempt),
            finished_at=T0 + timedelta(seconds=10 * attempt + seconds),
            engine_seconds=seconds,
            prompts=4,
            prompt_tokens=40,
            completion_tokens=0 if status == "failed" else 64,
            kept_records=None if status == "failed" else 4,
            kept_tokens=None if status == "failed" else 64,
            status=status,  # type: ignore[arg-type]
            error="RuntimeError: boom" if status == "failed" else None,
        )
    )


def test_failed_then_retried_shard_has_two_rows_both_counted(tmp_path: Path) -> None:
    led = open_run_uri(str(tmp_path / "runs" / "r1"))
    led.write(_row("shard-00001", 1, "failed", 90.0))
    led.write(_row("shard-00001", 2, "succeeded", 180.0))
    led.write(_row("shard-00010", 1, "succeeded", 45.0))
    rows = led.rows("shard-00001").to_pylist()
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "failed"), (2, "succeeded")]
    total = sum(r["cost_usd"] for r in rows)
    assert total == pytest.approx(0.04 * 270 / 3600, abs=1e-15)
    assert len(led.rows()) == 3
    # no temp objects left behind, one file per attempt
    names = sorted(p.name for p in (tmp_path / "runs" / "r1" / "ledger").iterdir())
    assert len(names) == 3 and all(n.endswith(".parquet") for n in names)


def test_empty_run_reads_as_empty_tables(tmp_path: Path) -> None:
    led = open_run_uri(str(tmp_path / "nothing"))
    assert led.rows().num_rows == 0
    assert led.workers().num_rows == 0


def test_usage_snapshot_held_busy_and_overwrite(tmp_path: Path) -> None:
    usage.reset()
    usage.record_attempt("rX", 2.0, ok=True, device="cpu: Test CPU (2 cores)")
    usage.record_attempt("rX", 1.0, ok=False, device="cpu: Test CPU (2 cores)")
    start = usage.joined_at() + 0.5  # the run started after this worker joined
    now = start + 10.0
    row = usage.snapshot("rX", CostConfig(), run_started_at=start, now=now)
    assert row["held_seconds"] == pytest.approx(10.0, abs=1e-5)  # run start after worker join
    assert row["busy_seconds"] == 3.0 and row["shards"] == 1 and row["failed_attempts"] == 1
    assert row["price_per_hour"] == pytest.approx(0.04) and row["device_type"] == "cpu-core"
    assert row["idle_seconds"] == pytest.approx(10.0 - 3.0 - row["load_seconds"], abs=1e-5)
    led = open_run_uri(str(tmp_path / "r"))
    led.write_worker(row)
    later = usage.snapshot("rX", CostConfig(), run_started_at=start, now=now + 5, final=True)
    led.write_worker(later)  # same worker id: overwritten, not doubled
    rows = led.workers().to_pylist()
    assert (
        len(rows) == 1
        and rows[0]["final"]
        and rows[0]["held_seconds"] == pytest.approx(15.0, abs=1e-5)
    )
    # held_from is the process start when the run started earlier than this worker
    early = usage.snapshot("rX", CostConfig(), run_started_at=0.0, now=time.time())
    assert early["held_from"].timestamp() == pytest.approx(usage.joined_at(), abs=1e-5)
    usage.reset()


def _fake_attempt(run_id: str) -> int:
    usage.record_attempt(run_id, 0.5, ok=True, device="cpu: Test CPU (3 cores)")
    import os

    return os.getpid()


@pytest.mark.slow
def test_usage_plugin_on_real_cluster_writes_final_rows(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from synthgen.config import OutputConfig

    output = OutputConfig(uri=str(tmp_path / "out"))
    started = time.time()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        plugin = usage.UsagePlugin("rP", output.model_dump(), CostConfig().model_dump(), started)
        usage.register(client, plugin)
        pid = client.submit(_fake_attempt, "rP", pure=False).result()
        live = usage.collect(client, "rP", CostConfig(), started)
        assert len(live) == 2 and not any(r["final"] for r in live)
        closing = time.time()
    led = open_run_uri(str(tmp_path / "out" / "runs" / "rP"))
    rows = {r["pid"]: r for r in led.workers().to_pylist()}
    assert len(rows) == 2 and all(r["final"] for r in rows.values())
    busy = rows[pid]
    assert busy["busy_seconds"] == 0.5 and busy["shards"] == 1
    assert busy["price_per_hour"] == pytest.approx(0.06)  # 3 cores x 0.02
    for r in rows.values():  # held from the worker's start until it closed
        assert r["held_from"].timestamp() >= started - 0.01
        assert r["held_until"].timestamp() >= closing


def test_resumed_session_on_same_worker_gets_its_own_row(tmp_path: Path) -> None:
    from synthgen.config import OutputConfig

    usage.reset()
    output = OutputConfig(uri=str(tmp_path)).model_dump()
    t1 = usage.joined_at() + 1.0
    first = usage.UsagePlugin("rR", output, CostConfig().model_dump(), t1)
    first.setup(None)
    usage.record_attempt("rR", 2.0, ok=True)
    row1 = usage.snapshot("rR", CostConfig(), now=t1 + 10)
    second = usage.UsagePlugin("rR", output, CostConfig().model_dump(), t1 + 100)
    second.setup(None)  # same process, a later session of the same run
    usage.record_attempt("rR", 3.0, ok=True)
    row2 = usage.snapshot("rR", CostConfig(), now=t1 + 120)
    assert row1["worker_id"] != row2["worker_id"]
    assert (row1["busy_seconds"], row1["held_seconds"]) == (2.0, pytest.approx(10.0))
    assert (row2["busy_seconds"], row2["held_seconds"]) == (3.0, pytest.approx(20.0))
    usage.reset()


def _price_here(cost: dict) -> tuple[float, str]:
    """A worker's price as a shard attempt on it meters it (in a task, as the pipeline)."""
    from synthgen.config import config_from_dict
    from synthgen.cost.meter import worker_price

    price = worker_price(config_from_dict({"cost": cost}), "NVIDIA GeForce RTX 4090")
    return price.per_hour, price.source


@pytest.mark.slow
def test_worker_prices_on_real_dask_workers_ignore_the_hosts_word(tmp_path: Path) -> None:
    """Real `dask worker` processes started from the command line, each with the host's
    SYNTHGEN_PRICE_PER_HOUR set: the operator's lease (by worker name) or the table
    decides, never the variable; the removed preload refuses to start a worker."""
    import os
    import subprocess
    import sys

    from distributed import Client

    from synthgen.config import CostConfig
    from synthgen.cost import usage
    from tests.conftest import REPO, free_port

    bindir = Path(sys.executable).parent
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SYNTHGEN_PRICE_PER_HOUR": "0.27"}
    common = ["--nthreads", "1", "--dashboard-address", "127.0.0.1:0", "--no-nanny"]
    cost = {"worker_prices": {"host7": 0.31}}
    procs = [
        subprocess.Popen(
            [bindir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", "127.0.0.1:0"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    try:
        time.sleep(3)
        address = f"tcp://127.0.0.1:{port}"
        removed = subprocess.run(
            [bindir / "dask", "worker", address, *common, "--name", "opt",
             "--preload", "synthgen.cost.worker_price", "--price-per-hour=0.31"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        for name in ("host7-gpu0", "other"):
            procs.append(
                subprocess.Popen(
                    [bindir / "dask", "worker", address, *common, "--name", name],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            addr_of = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
            prices = {
                name: client.submit(_price_here, cost, workers=[a], pure=False).result(30)
                for name, a in addr_of.items()
            }
            rows = usage.collect(client, "rP", CostConfig.model_validate(cost), time.time())
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:  # a worker still saying goodbye: not under test
                p.kill()
                p.wait(timeout=15)
    assert removed.returncode != 0
    assert "no longer states its own price" in removed.stderr
    assert "cost.worker_prices" in removed.stderr
    assert set(addr_of) == {"host7-gpu0", "other"}  # the refused one never joined
    assert prices == {"host7-gpu0": (0.31, "lease"), "other": (0.35, "table")}
    # the worker rows (usage, priced where the Worker is at hand) follow the same rules
    # (a CPU machine here: the unleased worker pays the table's cpu-core x its cores)
    by_worker = {r["worker"]: (r["price_per_hour"], r["price_source"]) for r in rows}
    assert by_worker[addr_of["host7-gpu0"]] == (0.31, "lease")
    assert by_worker[addr_of["other"]][1] == "table"
    assert by_worker[addr_of["other"]][0] != 0.27 and len(by_worker) == 2


def _store(tmp_path: Path, attempts: int = 8) -> Store:
    return Store(
        OutputConfig(uri=str(tmp_path / "out"), retry_attempts=attempts, retry_base_delay_s=0.001)
    )


def test_ledger_writes_through_the_store_fsynced_and_under_its_retry_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    ledger = Ledger(RunLayout(_store(tmp_path, attempts=2), "r1"))
    path = ledger.write(_row("shard-00001", 1, "succeeded", 30.0))
    assert path == ledger.run.stage().ledger_attempt("shard-00001", 1, "id11")
    assert fsynced, "the ledger row was not fsynced before it was renamed into place"
    assert [r["attempt_id"] for r in ledger.rows().to_pylist()] == ["id11"]

    real_temp = store_module._synced_temp
    failures: list[str] = []

    def flaky_temp(path: str, data: bytes) -> str:
        if len(failures) < 1:
            failures.append(path)
            raise ConnectionResetError("connection reset")
        return real_temp(path, data)

    monkeypatch.setattr(store_module, "_synced_temp", flaky_temp)
    ledger.write(_row("shard-00002", 1, "succeeded", 30.0))  # one transient error: retried
    assert len(failures) == 1 and len(ledger.rows()) == 2

    def down(path: str, data: bytes) -> str:
        raise ConnectionResetError("connection reset")

    monkeypatch.setattr(store_module, "_synced_temp", down)
    with pytest.raises(StorageError, match="still failing after 2 attempts"):  # the store's 2
        ledger.write(_row("shard-00003", 1, "succeeded", 30.0))


def test_verification_rows_go_to_their_own_files(tmp_path: Path) -> None:
    from synthgen.cost.prices import verification_row

    ledger = Ledger(RunLayout(_store(tmp_path), "r1"))
    check = verification_row(
        run_id="r1", shard_id="shard-00001", attempt=1, check_id="c1", worker="w", host="h",
        device="d", model="m", price=Price(0.04, "cpu-core", "table"), started_at=T0, seconds=9.0,
    )  # fmt: skip
    path = ledger.write(check)
    assert path == ledger.run.stage().ledger_verification("shard-00001", 1, "c1")
    ledger.write(_row("shard-00001", 1, "succeeded", 30.0))
    assert len(ledger.rows()) == 2 and len(ledger.rows("shard-00001")) == 1  # attempts only
    # the same run opened by its URI reads the same files
    assert open_run_uri(ledger.run.root).rows().equals(ledger.rows())


def _attempt_marker(store, layout, shard, attempt, worker, **extra):
    """An attempt's start marker, as `stages.generate.run_shard` writes it."""
    store.write_json(
        layout.attempt(shard, attempt, f"u{attempt}"),
        {
            "shard_id": shard,
            "attempt": attempt,
            "worker": worker,
            "host": "h",
            "started_at": (T0 + timedelta(seconds=10 * attempt)).isoformat(),
            **extra,
        },
    )


def test_an_attempt_that_finished_but_was_not_kept_becomes_a_lost_row(tmp_path):
    """A worker that wrote its "succeeded" row and died before its commit marker (or lost the
    commit race): its row turns "lost", keeps what it measured, and is not doubled."""
    import json

    from synthgen.cost.ledger import record_lost_attempts

    store = Store(OutputConfig(uri=str(tmp_path)))
    layout = RunLayout(store, "r1").stage()
    ledger = Ledger(RunLayout(store, "r1"))
    for attempt, worker in ((1, "tcp://dead"), (2, "tcp://w")):
        _attempt_marker(store, layout, "shard-00001", attempt, worker)
    ledger.write(_row("shard-00001", 1, "succeeded", 5.0))  # died before its commit
    ledger.write(_row("shard-00001", 2, "succeeded", 5.0))
    commit = {"sha256": "0" * 64, "rows": 4, "result": {"attempt": 2}}
    store.write_bytes(layout.commit("shard-00001"), json.dumps(commit).encode())

    assert record_lost_attempts(store, "r1") == 1
    rows = ledger.rows().to_pylist()
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "lost"), (2, "succeeded")]
    assert rows[0]["wall_seconds"] == 5.0 and rows[0]["cost_usd"] > 0
    assert rows[0]["kept_records"] is None and "not kept" in rows[0]["error"]
    assert record_lost_attempts(store, "r1") == 0  # idempotent: nothing more to record


def test_the_losing_copy_of_a_speculated_shard_is_priced_as_speculation(tmp_path):
    """Attempt 1 straggles on a slow worker (still running when the run ends: no row of its
    own); its speculative copy, attempt 2, commits. The flow prices attempt 1 until the copy
    committed, as speculation; the report shows that cost apart; a late superseded row of
    the loser is not added beside it."""
    import json

    from synthgen.cost.ledger import record_lost_attempts
    from synthgen.cost.report import summarize, to_markdown

    store = Store(OutputConfig(uri=str(tmp_path)))
    layout = RunLayout(store, "r1").stage()
    ledger = Ledger(RunLayout(store, "r1"))
    for attempt, worker, spec in ((1, "tcp://w", False), (2, "tcp://fast", True)):
        _attempt_marker(
            store, layout, "shard-00001", attempt, worker, **({"speculative": True} if spec else {})
        )
    ledger.write(_row("shard-00001", 2, "succeeded", 5.0))
    ledger.write(_row("shard-00002", 1, "succeeded", 5.0))  # w's price comes from its row
    done = (T0 + timedelta(seconds=25)).isoformat()
    commit = {"sha256": "0" * 64, "rows": 4, "result": {"attempt": 2, "finished_at": done}}
    store.write_bytes(layout.commit("shard-00001"), json.dumps(commit).encode())

    assert record_lost_attempts(store, "r1") == 1
    lost = [r for r in ledger.rows().to_pylist() if r["status"] == "lost"]
    assert [(r["attempt"], r["worker"]) for r in lost] == [(1, "tcp://w")]
    assert lost[0]["error"].startswith("speculation: ")
    assert lost[0]["wall_seconds"] == 15.0  # from its start until the copy committed
    s = summarize(ledger.rows().to_pylist(), [])
    assert s.totals["speculation_attempts"] == 1
    assert s.totals["speculation_cost_usd"] == pytest.approx(lost[0]["cost_usd"])
    assert "losing copies of speculated shards" in to_markdown(s)


def test_lost_attempts_with_and_without_a_row_in_one_run_are_all_recorded(tmp_path):
    """A worker that died mid-shard (no row) and one that died after its row, on two shards
    of one run: both end as lost rows (the first one's pricing must not break the second)."""
    import json

    from synthgen.cost.ledger import record_lost_attempts

    store = Store(OutputConfig(uri=str(tmp_path)))
    layout = RunLayout(store, "r1").stage()
    ledger = Ledger(RunLayout(store, "r1"))
    commit = {"sha256": "0" * 64, "rows": 4, "result": {"attempt": 2}}
    for shard in ("shard-00001", "shard-00002"):
        for attempt, worker in ((1, "tcp://dead"), (2, "tcp://w")):
            _attempt_marker(store, layout, shard, attempt, worker)
        ledger.write(_row(shard, 2, "succeeded", 5.0))
        store.write_bytes(layout.commit(shard), json.dumps(commit).encode())
    ledger.write(_row("shard-00002", 1, "succeeded", 5.0))  # died after its row

    assert record_lost_attempts(store, "r1") == 2
    lost = {r["shard_id"]: r for r in ledger.rows().to_pylist() if r["status"] == "lost"}
    assert sorted(lost) == ["shard-00001", "shard-00002"]
    assert "mid-shard" in lost["shard-00001"]["error"]
    assert "not kept" in lost["shard-00002"]["error"]
    assert lost["shard-00002"]["wall_seconds"] == 5.0


def test_the_whole_ledger_is_read_once_then_only_new_files(tmp_path: Path, monkeypatch) -> None:
    """A second whole-run read parses only the files written since (ledger files are written
    once); a file gone since makes it read them all again. Same rows as a fresh read."""
    led = open_run_uri(str(tmp_path / "runs" / "r1"))
    for i in range(10):  # more than the threshold for the parallel read
        led.write(_row(f"shard-0000{i}", 1, "succeeded", 10.0 + i))
    loaded: list[int] = []
    real = Ledger._load

    def counted(self, paths, schema):  # type: ignore[no-untyped-def]
        loaded.append(len(paths))
        return real(self, paths, schema)

    monkeypatch.setattr(Ledger, "_load", counted)
    first = led.rows()
    assert len(first) == 10 and loaded == [10]
    gone = led.write(_row("shard-00001", 2, "failed", 5.0))
    again = led.rows()
    assert loaded == [10, 1] and len(again) == 11
    fresh = Ledger(led.run)
    assert fresh.rows().equals(again)  # a new Ledger of the same run: the same read
    assert loaded == [10, 1, 0]
    os.remove(gone)
    assert len(led.rows()) == 10 and loaded[-1] == 10  # a file gone: all read again
    assert led.rows("shard-00003")["shard_id"].to_pylist() == ["shard-00003"]
