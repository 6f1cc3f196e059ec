"""The trusted commit of an untrusted worker's staged output (synthgen.stages.commit)."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.config import config_from_dict
from synthgen.cost.leases import WorkerIdentity
from synthgen.cost.ledger import Ledger
from synthgen.cost.prices import Price, ShardAttempt, ledger_row
from synthgen.io.checked import read_checked
from synthgen.io.grant import Grant
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.commit import FlowView, ForgedOutput, commit_staged
from synthgen.stages.generate import _plain_row
from synthgen.stages.plan import read_shard_rows, write_plan
from tests.helpers import fake_config


@pytest.fixture()
def run(tmp_path: Any) -> tuple[Any, Store, str, list[str]]:
    cfg = config_from_dict(fake_config(str(tmp_path / "out"), shards__size=4))
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    shard = plan.shards[0].shard_id
    ids = read_shard_rows(store, cfg.run_id, shard).column("prompt_id").to_pylist()
    return cfg, store, shard, ids


def _table(cfg: Any, shard: str, ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "run_id": [cfg.run_id] * n,
            "shard_id": [shard] * n,
            "prompt_id": ids,
            "completion": [f"text {i}" for i in ids],
            "completion_tokens": pa.array([2] * n, pa.int32()),
        }
    )


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _staged(
    cfg: Any, store: Store, shard: str, table: pa.Table, attempt: int = 1, **lie: Any
) -> tuple[Grant, dict[str, Any]]:
    """Stage `table` as a worker would; its result, with `lie` replacing what it says."""
    staged = RunLayout(store, cfg.run_id).stage().staged(shard, attempt, f"u{attempt}")
    data = _parquet(table)
    store.write_bytes(staged, data)
    start = datetime.now(UTC)
    row = ledger_row(
        ShardAttempt(
            cfg.run_id,
            shard,
            attempt,
            "a1",
            "w",
            "h",
            "cpu",
            "fake",
            Price(0.1, "cpu", "table"),
            start,
            start + timedelta(seconds=1),
            0.5,
            table.num_rows,
            10,
            20,
            table.num_rows,
            20,
            "succeeded",
        )  # fmt: skip
    )
    res = {
        "unit": shard,
        "attempt": attempt,
        "status": "staged",
        "staged": staged,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": table.num_rows,
        "ledger_row": _plain_row(row),
        **lie,
    }
    return Grant(shard, attempt, store.root, staged), res


def test_a_good_staged_output_is_committed_once_and_the_staged_object_removed(run):
    cfg, store, shard, ids = run
    grant, res = _staged(cfg, store, shard, _table(cfg, shard, ids))
    out = commit_staged(cfg, store, grant, res, worker="tls://w:1")
    assert out["status"] == "done" and out["rows"] == len(ids) and out["worker"] == "tls://w:1"
    checked = read_checked(store, cfg.run_id, shard)  # file and marker agree
    assert checked.table.column("prompt_id").to_pylist() == ids
    assert not store.exists(grant.staged)
    rows = Ledger(RunLayout(store, cfg.run_id)).rows(shard).to_pylist()
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "succeeded")]
    # a second attempt that returns later: superseded, the committed file untouched
    grant2, res2 = _staged(cfg, store, shard, _table(cfg, shard, ids), attempt=2)
    again = commit_staged(cfg, store, grant2, res2)
    assert again["status"] == "superseded" and again["attempt"] == 2
    assert read_checked(store, cfg.run_id, shard).data == checked.data
    assert not store.exists(grant2.staged)


@pytest.mark.parametrize(
    "forge, reason",
    [
        (lambda t, r: (t, {**r, "bytes": r["bytes"] + 1}), "bytes staged"),
        (lambda t, r: (t, {**r, "sha256": "0" * 64}), "sha256"),
        (lambda t, r: (t, {**r, "rows": r["rows"] - 1}), "rows staged"),
        (
            lambda t, r: (t.set_column(4, "completion_tokens", pa.array(["x"] * t.num_rows)), None),
            "column completion_tokens",
        ),  # fmt: skip
        (lambda t, r: (t.slice(1), None), "missing"),
        (
            lambda t, r: (t.set_column(2, "prompt_id", pa.array(["evil"] * t.num_rows)), None),
            "not in this shard",
        ),  # fmt: skip
        (
            lambda t, r: (t.set_column(0, "run_id", pa.array(["other"] * t.num_rows)), None),
            "another run_id",
        ),  # fmt: skip
        (lambda t, r: (t, {**r, "attempt": 7}), "not this attempt"),
    ],
)
def test_a_forged_staged_output_is_refused_and_nothing_committed(run, forge, reason):
    cfg, store, shard, ids = run
    good = _table(cfg, shard, ids)
    _, honest = _staged(cfg, store, shard, good)
    table, said = forge(good, honest)
    grant, res = _staged(cfg, store, shard, table)
    if said is not None:
        res = {
            **res,
            **{k: v for k, v in said.items() if k in ("bytes", "sha256", "rows", "attempt")},
        }
    with pytest.raises(ForgedOutput, match=reason) as err:
        commit_staged(cfg, store, grant, res, worker="tls://bad:1")
    assert err.value.worker == "tls://bad:1" and err.value.retry_elsewhere
    layout = RunLayout(store, cfg.run_id).stage()
    assert not store.exists(layout.commit(shard)) and not store.exists(layout.shard(shard))
    assert not store.exists(grant.staged)


def test_the_flow_prices_the_attempt_not_the_worker(run):
    """A worker that says it cost $1000/h for an hour is priced by the flow: the operator's
    lease for the certificate the scheduler saw, over at most the time the flow saw the task
    out (FlowView); without a lease, the price table for its device."""
    cfg, store, shard, ids = run
    cfg = cfg.model_copy(
        update={
            "cost": cfg.cost.model_copy(
                update={"worker_prices": {"gpu-host-7": 2.0}, "prices": {"cpu-core": 0.01}}
            )
        }
    )
    grant, res = _staged(cfg, store, shard, _table(cfg, shard, ids))
    row = dict(res["ledger_row"])
    start = datetime.fromisoformat(row["started_at"])
    row.update(
        price_per_hour=1000.0,
        price_source="lease",
        finished_at=(start + timedelta(hours=1)).isoformat(),
        wall_seconds=3600.0,
        engine_seconds=3600.0,
        cost_usd=1000.0,
    )
    res["ledger_row"] = row
    who = WorkerIdentity(cert_cn="gpu-host-7", name="whatever-it-says")
    out = commit_staged(cfg, store, grant, res, "tls://w:1", FlowView(held_s=30.0, holder=who))
    assert out["status"] == "done"
    assert out["price_per_hour"] == 2.0 and out["wall_seconds"] == 30.0
    assert out["cost_usd"] == pytest.approx(2.0 * 30 / 3600)
    (ledger,) = Ledger(RunLayout(store, cfg.run_id)).rows(shard).to_pylist()
    assert ledger["price_source"] == "lease" and ledger["engine_seconds"] == 30.0
    assert ledger["cost_usd"] == pytest.approx(2.0 * 30 / 3600)

    # a later attempt, a holder without a lease: the table's price for the device it says
    grant2, res2 = _staged(cfg, store, shard, _table(cfg, shard, ids), attempt=2)
    res2["ledger_row"] = {**res2["ledger_row"], "price_per_hour": 1000.0, "device": "cpu"}
    stranger = WorkerIdentity(cert_cn="someone-else", name=None)
    again = commit_staged(cfg, store, grant2, res2, "tls://w:2", FlowView(60.0, stranger))
    assert again["status"] == "superseded"  # shard committed above; still priced by the flow
    rows = Ledger(RunLayout(store, cfg.run_id)).rows(shard).to_pylist()
    second = [r for r in rows if r["attempt"] == 2][0]
    assert second["price_per_hour"] != 1000.0 and second["price_source"] in ("table", "unknown")
