"""A GPU worker process killed mid-run on the TLS cluster: the run still completes exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from tests.e2e.test_tls_cluster import TLSCluster, tls_cluster  # noqa: F401 - module fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_killed_gpu_worker_is_restarted_and_no_row_is_lost_or_doubled(
    tls_cluster: TLSCluster,  # noqa: F811
    tmp_path: Path,
    prefect_api: str,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.run import synthgen_run
    from tests.helpers import fake_config, write_config

    out = tmp_path / "out"
    data = fake_config(str(out), shards__size=4)  # 24 prompts -> 6 shards
    data["model"]["fake"] = {"seconds_per_shard": 2.0}
    data["cluster"] = tls_cluster.cluster_cfg(gpu_tasks=True, retry_delay_s=0.5, task_retries=3)
    cfg_path = write_config(tmp_path / "loss.yaml", data)

    with tls_cluster.client() as client:
        gpu_addr = next(
            a
            for a, w in client.scheduler_info()["workers"].items()
            if w["name"] == tls_cluster.gpu_worker
        )
        pid = client.run(os.getpid, workers=[gpu_addr])[gpu_addr]

    killed: list[int] = []

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            commits = (
                list((out / "runs").glob("*/_commits/*.json")) if (out / "runs").exists() else []
            )
            if len(commits) >= 1:  # one shard done, the next one is running on the GPU worker
                time.sleep(0.7)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    # the test session's Prefect server (`prefect_api`), not one started for this test
    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        result = synthgen_run(config=cfg_path)
    killer.join(timeout=5)

    assert killed == [pid], "the GPU worker was never killed"
    assert result["status"] == "complete"
    table = pads.dataset(out / "dataset" / "data", format="parquet").to_table()
    ids = table["prompt_id"].to_pylist()
    assert len(ids) == 24 and len(set(ids)) == 24
    commits = [
        json.loads(p.read_text())["result"] for p in (out / "runs").glob("*/_commits/*.json")
    ]
    assert len(commits) == 6
    with tls_cluster.client() as client:
        workers = client.scheduler_info()["workers"]
        names = {w["name"] for w in workers.values()}
    assert tls_cluster.gpu_worker in names  # the nanny restarted it
    cpu_addrs = {a for a, w in workers.items() if w["name"] == tls_cluster.cpu_worker}
    assert (
        not {c["worker"] for c in commits} & cpu_addrs
    )  # no generate task ever ran on the CPU worker
