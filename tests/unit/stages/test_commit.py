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
from synthgen.cost.ledger import Ledger
from synthgen.cost.prices import Price, ShardAttempt, ledger_row
from synthgen.io.checked import read_checked
from synthgen.io.grant import Grant
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.commit import ForgedOutput, commit_staged
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
