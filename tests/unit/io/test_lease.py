"""The run lease: one live holder per output prefix + run id, on local disk and over S3."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from synthgen.errors import RunLockedError
from synthgen.io.lease import LeaseLostError, RunLease, read_lease


def test_second_holder_is_refused_with_holder_host_and_expiry(any_store):
    first = RunLease(any_store, "r1", ttl_s=30).acquire()
    info = read_lease(any_store, "r1")
    assert info is not None and info.holder == first.holder and info.pid > 0
    with pytest.raises(RunLockedError) as err:
        RunLease(any_store, "r1", ttl_s=30).acquire()
    msg = str(err.value)
    assert first.holder in msg and info.host in msg and info.expires_at in msg
    assert "r1" in msg and "_lease.json" in msg
    with pytest.raises(RunLockedError, match=first.holder):
        RunLease(any_store, "r1").ensure_free()
    # another run id on the same output is independent
    RunLease(any_store, "r2", ttl_s=30).acquire().release()
    first.release()
    assert read_lease(any_store, "r1") is None
    RunLease(any_store, "r1").ensure_free()
    RunLease(any_store, "r1", ttl_s=30).acquire().release()


def test_expired_lease_is_taken_over(any_store):
    old = RunLease(any_store, "r", ttl_s=1).acquire()
    time.sleep(1.2)
    new = RunLease(any_store, "r", ttl_s=30).acquire()
    assert new.took_over is not None and new.took_over.holder == old.holder
    assert read_lease(any_store, "r").holder == new.holder
    # the old holder notices on its next renewal and never deletes the new holder's lease
    with pytest.raises(LeaseLostError, match=new.holder):
        old.renew()
    assert old.lost.is_set()
    old.release()
    assert read_lease(any_store, "r").holder == new.holder


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(any_store):
    lease = RunLease(any_store, "r", ttl_s=300)
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    lease.pid = int(proc.stdout)  # as if a flow process that has since died had written it
    lease.acquire()
    successor = RunLease(any_store, "r", ttl_s=300).acquire()
    assert successor.took_over is not None and successor.took_over.pid == lease.pid


def test_heartbeat_pushes_the_expiry_forward(any_store):
    with RunLease(any_store, "r", ttl_s=1.5, heartbeat_s=0.3) as lease:
        first = read_lease(any_store, "r").expires_epoch
        time.sleep(2.0)  # past the first expiry: only the heartbeat keeps it live
        later = read_lease(any_store, "r")
        assert later.holder == lease.holder and later.expires_epoch > first + 1.0
        with pytest.raises(RunLockedError):
            RunLease(any_store, "r", ttl_s=1.5).acquire()
        lease.check()
    assert read_lease(any_store, "r") is None


def test_concurrent_acquirers_exactly_one_wins(any_store):
    winners: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(6)

    def contend() -> None:
        lease = RunLease(any_store, "race", ttl_s=30)
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease.holder)
        except RunLockedError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=contend) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1, winners
    assert len(refused) == 5 and all(winners[0] in m for m in refused)
    assert read_lease(any_store, "race").holder == winners[0]


def test_unreadable_lease_counts_as_stale(any_store):
    any_store.write_bytes(any_store.run_path("r", "_lease.json"), b"{not json")
    lease = RunLease(any_store, "r", ttl_s=30).acquire()
    assert (
        json.loads(any_store.read_bytes(any_store.run_path("r", "_lease.json")))["holder"]
        == lease.holder
    )
