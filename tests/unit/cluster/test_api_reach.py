"""Workers must reach the Prefect API the flow ships with each task (a remote worker given
the control host's 127.0.0.1 fails every task): the check runs on real Dask worker
processes and names the workers that cannot connect."""

from __future__ import annotations

import socket

import pytest

from synthgen.cluster.client import workers_info
from synthgen.cluster.preflight import check_workers_reach, reaches
from synthgen.errors import PreflightError
from tests.conftest import free_port
from tests.helpers import local_cluster


def test_reaches_a_listening_port_and_says_why_not_for_a_closed_one() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        assert reaches(f"http://127.0.0.1:{srv.getsockname()[1]}/api", 2.0) is None
    why = reaches(f"http://127.0.0.1:{free_port()}/api", 2.0)
    assert why is not None and "refused" in why.lower()


def test_the_check_names_each_worker_that_cannot_reach_the_api() -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    with local_cluster(2) as (_, client):
        workers = sorted(workers_info(client))
        answers = client.run(reaches, closed, 2.0)
        with pytest.raises(PreflightError) as err:
            check_workers_reach(answers, closed)
        with socket.socket() as srv:  # and once something listens, both pass
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            url = f"http://127.0.0.1:{srv.getsockname()[1]}/api"
            line = check_workers_reach(client.run(reaches, url, 2.0), url)
    msg = str(err.value)
    assert f"2 of 2 Dask worker(s) cannot reach the Prefect API at {closed}" in msg
    assert all(w in msg for w in workers) and "PREFECT_API_URL" in msg
    assert line == f"prefect API {url} reachable from 2 worker(s)"


def test_a_worker_that_answered_nothing_useful_is_not_counted_against_the_run() -> None:
    assert check_workers_reach({}, "http://h:4200/api").endswith("from 0 worker(s)")
    with pytest.raises(PreflightError, match=r"1 of 2 .*tcp://b:1: timed out"):
        check_workers_reach({"tcp://a:1": None, "tcp://b:1": "timed out"}, "http://h:4200/api")
