"""What a task on a TLS cluster sends back (flows/task_runner.py): its final state as plain
data, which the flow opens without unpickling anything a worker made."""

from __future__ import annotations

import pytest
from distributed.protocol.serialize import Serialized, serialize
from prefect.states import Completed, Failed

from flows.task_runner import ForgedResult, TaskFailed, envelope, open_envelope
from flows.units import ENVELOPE
from synthgen.cluster.roles import _plain_header


def test_a_completed_task_travels_as_msgpack_and_opens_to_its_result() -> None:
    env = envelope(Completed(data={"shard_id": "s1", "rows": 3, "files": ["a", "b"]}))
    assert env == {
        "envelope": ENVELOPE,
        "state": "COMPLETED",
        "result": {"shard_id": "s1", "rows": 3, "files": ["a", "b"]},
    }
    # what an honest worker sends (msgpack first) is plain for the scheduler's check
    header, _ = serialize(env, serializers=("msgpack", "dask", "pickle"))
    assert _plain_header(header)
    # msgpack gives tuples for lists: the flow gets lists back
    sent = {**env, "result": {**env["result"], "files": ("a", "b")}}
    assert open_envelope(sent, "t") == {"shard_id": "s1", "rows": 3, "files": ["a", "b"]}


def test_a_failed_task_opens_to_its_error_and_a_result_that_is_not_data_fails() -> None:
    env = envelope(Failed(data=ValueError("disk full"), message="boom"))
    assert env["state"] == "FAILED" and env["message"] == "ValueError: disk full"
    with pytest.raises(TaskFailed, match="disk full"):
        open_envelope(env, "task run 1")
    odd = envelope(Completed(data={1, 2}))  # a set: not msgpack
    assert odd["state"] == "FAILED" and "not plain data (set)" in odd["message"]


@pytest.mark.parametrize(
    "value",
    [
        RuntimeError("payload from untrusted worker w (certificate 'x') not forwarded"),
        {"shard_id": "s1"},  # a bare result: not what honest workers send
        {"envelope": "something-else", "state": "COMPLETED"},
        None,
    ],
)
def test_anything_but_an_envelope_is_a_forged_result(value: object) -> None:
    with pytest.raises(ForgedResult) as info:
        open_envelope(value, "task run 7", worker="tls://10.0.0.7:4000")
    assert info.value.worker == "tls://10.0.0.7:4000" and info.value.retry_elsewhere
    assert "tls://10.0.0.7:4000" in str(info.value)


def test_only_msgpack_and_builtin_collections_of_it_are_plain() -> None:
    assert _plain_header(serialize({"a": [1, 2]}, serializers=("msgpack",))[0])
    assert not _plain_header(serialize({"a": {1, 2}})[0])  # pickle
    collection = {
        "is-collection": True,
        "type-serialized": "dict",
        "sub-headers": [{"serializer": "msgpack"}, {"serializer": "pickle"}],
    }
    assert not _plain_header(collection)
    assert not _plain_header({**collection, "type-serialized": b"\x80pickled-type"})
    assert not _plain_header(Serialized({}, []).header)
