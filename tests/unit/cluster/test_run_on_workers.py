"""`run_on_workers` (synthgen/cluster/client.py): `client.run` on every worker, given up after a
time limit, on a real in-process LocalCluster. The warm-up wait and the preflight's Prefect
API reach check both ask the workers through it."""

from __future__ import annotations

import asyncio

import pytest
from distributed import Client, LocalCluster

from synthgen.cluster.client import run_on_workers, workers_info


def _seven() -> int:
    return 7


def _boom() -> int:
    raise ValueError("worker-side failure")


async def _never(seconds: float) -> None:  # a worker that does not answer (frozen)
    await asyncio.sleep(seconds)


def test_answers_per_worker_errors_returned_and_a_silent_worker_given_up() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        as cluster,
        Client(cluster, set_as_default=False) as client,
    ):  # fmt: skip
        workers = sorted(workers_info(client))
        assert len(workers) == 2
        assert run_on_workers(client, _seven, timeout_s=60) == {w: 7 for w in workers}
        errors = run_on_workers(client, _boom, timeout_s=60)
        assert sorted(errors) == workers
        assert all(isinstance(e, ValueError) for e in errors.values())  # returned, not raised
        with pytest.raises(TimeoutError):
            run_on_workers(client, _never, 60.0, timeout_s=0.5)
