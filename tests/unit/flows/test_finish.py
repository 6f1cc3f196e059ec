"""The run's finish (run-wide dedup, publish) after a host froze mid-run: the loop can end
before the frozen worker has been silent long enough to be removed, and Dask would hand it
end-of-run tasks that then wait for its worker TTL (minutes). The finish avoids workers that
missed a deadline, and a thread keeps removing silent suspects while it runs, on a real
LocalCluster with a SIGSTOPped worker."""

from __future__ import annotations

import os
import signal
from typing import Any

from distributed import Client, LocalCluster

from flows.timeouts import ShardTimeouts, remove_silent_workers
from flows.verify import cluster_workers
from synthgen.config import config_from_dict
from synthgen.io.store import Store
from tests.helpers import fake_config


def _gate(tmp_path, workers: Any, remove: Any = None) -> ShardTimeouts:
    cfg = config_from_dict(fake_config(str(tmp_path / "out"), cluster__flag_after_misses=2))
    return ShardTimeouts(cfg, Store(cfg.output), poll_s=0.2, workers=workers, remove_silent=remove)


def test_the_finish_avoids_flagged_and_suspect_workers_but_never_all(tmp_path) -> None:
    alive = ["w1", "w2", "w3"]
    gate = _gate(tmp_path, lambda: alive)
    assert gate.finishing_workers(alive) is None  # nothing to avoid: any worker
    gate._miss("w1", "shard-00001 attempt 1 ran past its 6s deadline")  # a suspect
    assert gate.finishing_workers(alive) == ["w2", "w3"]
    gate._miss("w2", "shard-00002 attempt 1 ran past its 6s deadline")
    gate._miss("w2", "shard-00003 attempt 1 ran past its 6s deadline")
    assert "w2" in gate.flagged
    assert gate.finishing_workers(alive) == ["w3"]
    assert gate.finishing_workers(["w1", "w2"]) is None  # only avoided ones left: any


def test_while_the_run_finishes_a_frozen_suspect_is_removed_and_its_task_runs_elsewhere(
    tmp_path,
) -> None:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as c,
    ):
        pids = c.run(os.getpid)
        frozen, other = sorted(pids)
        gate = _gate(
            tmp_path,
            lambda: cluster_workers(c),
            lambda suspects, silent_s: remove_silent_workers(c, suspects, silent_s),
        )
        gate.silent_s = 2.0
        gate._miss(frozen, "shard-00001 attempt 1 ran past its 6s deadline")
        assert gate.finishing_workers(cluster_workers(c)) == [other]
        os.kill(pids[frozen], signal.SIGSTOP)
        try:
            with gate.watching():
                # placed on the frozen worker (as Dask may place a publish task on an idle
                # one): without the watch it waits there for the worker TTL (300 s)
                fut = c.submit(os.getpid, workers=[frozen], allow_other_workers=True, pure=False)
                ran_in = fut.result(timeout=90)
        finally:
            os.kill(pids[frozen], signal.SIGCONT)
    assert ran_in == pids[other]
    assert frozen in gate.removed and frozen in gate.flagged
    assert not gate.suspects
