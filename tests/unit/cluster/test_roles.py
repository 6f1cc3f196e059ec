"""Certificate roles (synthgen.cluster.roles): the parts that decide, without a cluster.

The end-to-end test with a tampered worker is tests/e2e/test_hostile_worker.py.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest
from distributed.protocol.serialize import Serialized, deserialize, serialize

from synthgen.cluster import roles
from synthgen.cost.summary import RunSummary


def _cert(*rdns: tuple[str, str]) -> dict:
    return {"subject": tuple(((k, v),) for k, v in rdns)}


@pytest.mark.parametrize(
    ("cert", "expected"),
    [
        (
            _cert(("organizationalUnitName", "synthgen-worker"), ("commonName", "synthgen-h7")),
            ("worker", "synthgen-h7"),
        ),
        (
            _cert(("organizationalUnitName", "synthgen-client"), ("commonName", "synthgen-client")),
            ("client", "synthgen-client"),
        ),
        # certificates from before roles (CN only) or with an unknown role: no role, untrusted
        (_cert(("commonName", "synthgen-client")), (None, "synthgen-client")),
        (_cert(("organizationalUnitName", "synthgen-admin"), ("commonName", "x")), (None, "x")),
        # two roles claimed: none
        (
            _cert(
                ("organizationalUnitName", "synthgen-worker"),
                ("organizationalUnitName", "synthgen-client"),
                ("commonName", "x"),
            ),
            (None, "x"),
        ),
        (None, (None, "?")),
    ],
)
def test_role_of_reads_the_role_from_the_certificate_ou(cert: dict | None, expected: tuple) -> None:
    assert roles.role_of(cert) == expected
    assert roles.Peer(expected[0], expected[1], "tls://h:1").trusted == (
        expected[0] in ("client", "scheduler")
    )


def test_a_worker_certificate_may_send_what_workers_send_and_nothing_else() -> None:
    # what distributed's workers and nannies send the scheduler
    for op in ("register-worker", "register_nanny", "heartbeat_worker", "close"):
        assert roles._check_ops("Scheduler", {"op": op}) is None
    assert roles._check_ops("Scheduler", [{"op": "task-finished"}, {"op": "keep-alive"}]) is None
    assert roles._check_ops("Scheduler", [{"op": "steal-response"}]) is None
    # the client API, on a request or on the worker's own stream
    for op in ("register-client", "identity", "run_function", "broadcast", "scatter"):
        assert "worker certificate" in roles._check_ops("Scheduler", {"op": op})
    assert "update-graph" in roles._check_ops(
        "Scheduler", [{"op": "task-finished"}, {"op": "update-graph"}]
    )
    # a worker serves its peers' data fetches only; a nanny nothing
    assert roles._check_ops("Worker", {"op": "get_data"}) is None
    assert "'run'" in roles._check_ops("Worker", {"op": "run"})
    assert "'kill'" in roles._check_ops("Nanny", {"op": "kill"})
    assert roles._check_ops("Nanny", {"op": "close_gracefully"}) is None
    assert roles._check_ops("Scheduler", {"status": "OK"}) is None  # a reply, not a request


def test_the_scheduler_forwards_no_pickle_an_untrusted_worker_made() -> None:
    peer = roles.Peer("worker", "synthgen-h7", "tls://10.0.0.7:4000")
    pickled = Serialized(*serialize(ValueError("from the worker")))
    plain = Serialized(*serialize({"n": 1}, serializers=("msgpack",)))
    msg = [{"op": "task-erred", "key": "k", "exception": pickled, "traceback": pickled, "n": plain}]
    out = roles._scrub(msg, peer)
    exc = deserialize(out[0]["exception"].header, out[0]["exception"].frames)
    assert isinstance(exc, RuntimeError) and "synthgen-h7" in str(exc)
    assert out[0]["traceback"] is not pickled
    assert out[0]["n"] is plain and out[0]["key"] == "k"


def test_pickle_loads_refuses_while_reading_from_an_untrusted_peer() -> None:
    roles.install()
    roles.install()  # idempotent: wrapped once
    from distributed.protocol import pickle as dask_pickle

    data = pickle.dumps({"a": 1})
    assert dask_pickle.loads(data) == {"a": 1}
    token = roles._reading_untrusted.set("tls://10.0.0.7:4000")
    try:
        with pytest.raises(roles.UntrustedPickle):
            dask_pickle.loads(data)
    finally:
        roles._reading_untrusted.reset(token)
    assert dask_pickle.loads(data) == {"a": 1}
    assert not hasattr(getattr(dask_pickle.loads, "__wrapped__", None), "_synthgen_guard")


def test_refusals_grouped_by_certificate_name_the_host_in_the_summary() -> None:
    records = [
        {
            "certificate": "synthgen-h7",
            "role": "worker",
            "peer": "tls://10.0.0.7:5001",
            "what": "operation 'register-client'",
            "worker": None,
        },
        {
            "certificate": "synthgen-h7",
            "role": "worker",
            "peer": "tls://10.0.0.7:5002",
            "what": "a pickled payload",
            "worker": "h7-gpu0",
        },
        {
            "certificate": "synthgen-h9",
            "role": "worker",
            "peer": "tls://10.0.0.9:5001",
            "what": "operation 'run'",
            "worker": None,
        },
    ]
    groups = roles.by_certificate(records)
    assert [g["certificate"] for g in groups] == ["synthgen-h7", "synthgen-h9"]
    assert groups[0]["count"] == 2 and groups[0]["peers"] == ["tls://10.0.0.7"]
    assert groups[0]["workers"] == ["h7-gpu0"]
    summary = RunSummary(
        run_id="r",
        name="n",
        status="complete",
        shards_total=1,
        shards_generated=1,
        shards_skipped=0,
        shards_missing=[],
        prompts=1,
        rows_published=1,
        completion_tokens=1,
        generate_seconds=1.0,
        tokens_per_s=1.0,
        cost_usd=0.0,
        cost_this_invocation_usd=0.0,
        wall_seconds=1.0,
        output="o",
        manifest=None,
        rejects=0,
        refused=groups,
    )
    rows = dict(summary.rows())
    assert "REFUSED certificate synthgen-h7" in rows
    assert "2 request(s) from tls://10.0.0.7" in rows["REFUSED certificate synthgen-h7"]
    assert "h7-gpu0" in rows["REFUSED certificate synthgen-h7"]


def test_the_scheduler_names_each_worker_by_the_certificate_it_presented() -> None:
    """`synthgen_worker_certificates`: worker address -> the CN from its TLS handshake (the
    flow prices untrusted workers' attempts by it); a connection without TLS is left out."""
    tls_comm = SimpleNamespace(
        _synthgen_peer=roles.Peer("worker", "gpu-host-7", "tls://10.0.0.7:1")
    )
    scheduler = SimpleNamespace(
        stream_comms={
            "tls://10.0.0.7:40000": SimpleNamespace(comm=tls_comm),
            "tcp://10.0.0.8:40000": SimpleNamespace(comm=object()),
        }
    )
    assert roles.worker_certificates(scheduler) == {"tls://10.0.0.7:40000": "gpu-host-7"}
