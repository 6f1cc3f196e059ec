"""The checked reader: a committed shard is used only when it matches its commit marker;
anything else withdraws the commit (named with its path in the log)."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pytest

from synthgen.io.attempts import commit_markers, withdraw_unreadable
from synthgen.io.checked import (
    ShardWithdrawn,
    check_committed,
    read_checked,
)
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store

RUN = "r1"


def _commit(store: Store, sid: str, n: int = 4) -> tuple[str, str]:
    layout = RunLayout(store, RUN).stage()
    table = pa.table({"prompt_id": [f"{sid}-{i}" for i in range(n)], "x": list(range(n))})
    path = layout.shard(sid)
    size, sha = store.write_table(path, table)
    marker = {"shard_id": sid, "file": path, "bytes": size, "sha256": sha, "rows": n,
              "result": {"shard_id": sid, "attempt": 1}}  # fmt: skip
    store.write_json(layout.commit(sid), marker)
    return path, layout.commit(sid)


def _valid_other_parquet(store: Store) -> bytes:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt_id": ["z"] * 4, "x": [9, 9, 9, 9]}), buf)
    return buf.getvalue()


CASES = {
    "substituted": lambda store, data: _valid_other_parquet(store),
    "truncated": lambda store, data: data[: len(data) // 2],
    "garbage": lambda store, data: b"\x00garbage" * 50,
}


def test_a_matching_shard_is_read(any_store: Store) -> None:
    _commit(any_store, "s0")
    shard = read_checked(any_store, RUN, "s0")
    assert shard.table.column("prompt_id").to_pylist() == [f"s0-{i}" for i in range(4)]
    assert check_committed(any_store, RUN, "s0") is None
    assert list(commit_markers(any_store, RUN)) == ["s0"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_shard_is_withdrawn_and_named(any_store: Store, case: str, caplog) -> None:
    path, marker = _commit(any_store, "s1")
    any_store.write_bytes(path, CASES[case](any_store, any_store.read_bytes(path)))
    with caplog.at_level(logging.WARNING, logger="synthgen.io.checked"):
        with pytest.raises(ShardWithdrawn) as err:
            read_checked(any_store, RUN, "s1")
    assert not any_store.exists(marker), "the commit marker must be withdrawn"
    assert any_store.location(path) in str(err.value)
    assert any_store.location(path) in caplog.text
    assert commit_markers(any_store, RUN) == {}


def test_a_row_count_that_differs_from_the_marker_withdraws(any_store: Store) -> None:
    path, marker = _commit(any_store, "s2")
    doc = any_store.read_json(marker)
    any_store.write_json(marker, {**doc, "rows": 5})
    with pytest.raises(ShardWithdrawn, match="4 rows, its commit marker says 5"):
        read_checked(any_store, RUN, "s2")
    assert not any_store.exists(marker)


@pytest.mark.parametrize("garbage", [b"{not json", b"[]", json.dumps({"sha256": "x"}).encode()])
def test_a_garbage_marker_is_withdrawn_not_a_crash(any_store: Store, garbage: bytes) -> None:
    _commit(any_store, "ok")
    _, marker = _commit(any_store, "bad")
    any_store.write_bytes(marker, garbage)
    assert list(commit_markers(any_store, RUN)) == ["ok"]  # listing withdraws it
    assert not any_store.exists(marker)
    with pytest.raises(FileNotFoundError):
        read_checked(any_store, RUN, "bad")


def test_withdraw_unreadable_names_the_garbage_markers_it_removed(any_store: Store) -> None:
    _commit(any_store, "ok")
    for sid in ("b2", "b1"):
        any_store.write_bytes(_commit(any_store, sid)[1], b"{not json")
    assert withdraw_unreadable(any_store, RUN) == ["b1", "b2"]
    assert withdraw_unreadable(any_store, RUN) == []  # gone: nothing left to withdraw
    assert list(commit_markers(any_store, RUN)) == ["ok"]


def test_a_missing_file_withdraws(any_store: Store) -> None:
    path, marker = _commit(any_store, "s3")
    any_store.rm(path)
    assert "missing" in (check_committed(any_store, RUN, "s3") or "")
    assert not any_store.exists(marker)


def test_many_markers_are_read_together_in_order_with_the_garbage_withdrawn(
    any_store: Store,
) -> None:
    """More markers than one thread reads (read_commits' pool): the same markers, in
    listing order, the garbage ones withdrawn."""
    from synthgen.io.attempts import read_commits

    ids = [f"s{i:02d}" for i in range(20)]
    for sid in ids:
        _commit(any_store, sid, n=2)
    bad = {"s03", "s17"}
    for sid in bad:
        any_store.write_bytes(RunLayout(any_store, RUN).stage().commit(sid), b"{not json")
    markers, withdrawn = read_commits(any_store, RUN)
    assert list(markers) == [s for s in ids if s not in bad]
    assert all(markers[s]["shard_id"] == s for s in markers)
    assert sorted(withdrawn) == sorted(bad)
    assert not any(any_store.exists(RunLayout(any_store, RUN).stage().commit(s)) for s in bad)
