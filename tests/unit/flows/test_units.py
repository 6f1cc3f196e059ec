"""Units as plain Dask tasks (flows/task_runner.py `submit_unit`): the worker's retries, the
plain-data form a TLS cluster's worker sends back, and the future the generate loop reads,
on a real LocalCluster."""

from __future__ import annotations

import threading

import pytest
from distributed import Client, LocalCluster
from distributed.protocol.serialize import serialize

from flows.task_runner import ForgedResult, TaskFailed, UnitFuture
from flows.units import ENVELOPE, Retries, run_unit, run_unit_plain
from synthgen.cluster.roles import _plain_header


class Flaky:
    """Fails its first `fails` calls, then returns its call count."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls = 0

    def __call__(self, x: int) -> dict[str, int]:
        self.calls += 1
        if self.calls <= self.fails:
            raise OSError(f"transient {self.calls}")
        return {"x": x, "calls": self.calls}


def test_a_unit_is_retried_on_its_worker_then_its_last_error_is_raised() -> None:
    ok = Flaky(2)
    assert run_unit(ok, (7,), "generate-s1", Retries(2, (0.0,))) == {"x": 7, "calls": 3}
    bad = Flaky(5)
    with pytest.raises(OSError, match="transient 3"):
        run_unit(bad, (7,), "generate-s1", Retries(2, (0.0,)))
    assert bad.calls == 3  # the first try and two retries, no more


def test_retry_delays_follow_the_backoff_within_the_jitter() -> None:
    r = Retries(3, (1.0, 2.0, 4.0), jitter=0.2)
    for i, base in enumerate((1.0, 2.0, 4.0, 4.0)):  # the last delay repeats
        d = r.delay(i)
        assert base * 0.8 <= d <= base * 1.2, (i, d)
    assert Retries(1, (5.0,)).delay(0) == 5.0


def test_the_plain_form_is_msgpack_and_says_why_a_unit_failed() -> None:
    env = run_unit_plain(Flaky(0), (1,), "generate-s1", Retries())
    assert env == {"envelope": ENVELOPE, "state": "COMPLETED", "result": {"x": 1, "calls": 1}}
    assert _plain_header(serialize(env, serializers=("msgpack", "dask", "pickle"))[0])
    failed = run_unit_plain(Flaky(9), (1,), "generate-s1", Retries(1, (0.0,)))
    assert failed["state"] == "FAILED" and failed["message"] == "OSError: transient 2"
    odd = run_unit_plain(lambda: {1, 2}, (), "generate-s1", Retries())
    assert odd["state"] == "FAILED" and "not plain data (set)" in odd["message"]


def _double(x: int) -> int:
    return 2 * x


def _boom(x: int) -> int:
    raise ValueError(f"bad shard {x}")


def _not_an_envelope(x: int) -> dict[str, int]:
    return {"shard": x}


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as c,
    ):
        yield c


def _submit(client: Client, fn, arg: int, plain: bool) -> UnitFuture:
    runner = run_unit_plain if plain else run_unit
    fut = client.submit(runner, fn, (arg,), f"generate-u{arg}", Retries(), pure=False)
    return UnitFuture(fut, f"generate-u{arg}", plain)


@pytest.mark.parametrize("plain", [False, True], ids=["trusted", "tls"])
def test_the_loop_hears_each_unit_once_through_its_future(client, plain) -> None:
    heard: list[UnitFuture] = []
    done = threading.Event()

    def note(f: UnitFuture) -> None:
        heard.append(f)
        if len(heard) == 2:
            done.set()

    ok, bad = _submit(client, _double, 21, plain), _submit(client, _boom, 3, plain)
    ok.add_done_callback(note)
    bad.add_done_callback(note)
    assert done.wait(60)
    assert sorted(id(f) for f in heard) == sorted((id(ok), id(bad)))  # the wrappers, once each
    assert ok.result() == 42
    with pytest.raises(TaskFailed if plain else ValueError, match="bad shard 3"):
        bad.result()


def test_on_a_tls_cluster_a_result_that_is_not_an_envelope_is_forged(client) -> None:
    fut = _submit(client, _not_an_envelope, 5, plain=False)  # what a tampered worker sends
    forged = UnitFuture(fut.future, "generate-u5", plain=True)
    with pytest.raises(ForgedResult) as info:
        forged.result()  # bounded by UnitFuture.FETCH_S
    assert info.value.retry_elsewhere and "generate-u5" in str(info.value)
    assert info.value.worker  # the worker that held it, named for the loop to avoid


def test_a_result_held_by_a_frozen_worker_is_unreachable_not_a_hang() -> None:
    """A unit finished, then its worker froze (SIGSTOP) before the flow fetched the result:
    the fetch gives up after FETCH_S with `ResultUnreachable` naming the worker, in the
    thread that fetches it, instead of blocking the generate loop until the scheduler drops
    the worker (its TTL: minutes)."""
    import os
    import signal

    from flows.task_runner import ResultUnreachable

    class Quick(UnitFuture):
        FETCH_S = 2.0

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as c,
    ):
        fut = c.submit(run_unit, _double, (4,), "generate-u4", Retries(), pure=False)
        fut.result(timeout=60)  # done; the result stays on the worker (the future holds it)
        (addr, pid), = c.run(os.getpid).items()  # fmt: skip
        heard = threading.Event()
        unit = Quick(fut, "generate-u4", plain=False)
        os.kill(pid, signal.SIGSTOP)
        try:
            unit.add_done_callback(lambda _u: heard.set())
            assert heard.wait(60), "the callback never ran"
            with pytest.raises(ResultUnreachable) as info:
                unit.result()
        finally:
            os.kill(pid, signal.SIGCONT)
    assert info.value.unreachable and info.value.worker == addr
    assert "generate-u4" in str(info.value) and "within 2 s" in str(info.value)


class _CancelledFuture:
    """A Dask future its client cancelled: asking the client's loop for its result is what
    must not happen (a closing client stops that loop; the ask would wait FETCH_S)."""

    key = "generate-u6-0123"

    def cancelled(self) -> bool:
        return True

    def add_done_callback(self, fn) -> None:
        fn(self)

    def result(self, timeout=None):
        raise AssertionError("fetched from the client's loop")


def test_a_cancelled_unit_is_heard_as_cancelled_without_a_fetch() -> None:
    """SIGTERM of `synthgen run` closes its client, which cancels every running unit: each
    unit's callback must hear the cancellation at once, not wait FETCH_S on a loop that is
    stopping (CI saw the exit held 30 s, then a 'Task exception was never retrieved'
    traceback in the log)."""
    from distributed.client import FutureCancelledError

    heard = threading.Event()
    unit = UnitFuture(_CancelledFuture(), "generate-u6", plain=False)  # type: ignore[arg-type]
    unit.add_done_callback(lambda _u: heard.set())
    assert heard.wait(60)
    with pytest.raises(FutureCancelledError, match="generate-u6-0123 cancelled"):
        unit.result()
