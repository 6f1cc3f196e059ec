"""A real TLS Dask cluster started with the infra/ scripts: placement, security, probes.

Scheduler, one "GPU" worker (advertising the test-named resource TESTGPU) and one CPU worker
run as separate `dask` processes with certificates from infra/make-certs.sh, on loopback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest
from distributed import Client, get_worker

from synthgen.cluster.client import generate_resources, worker_advertised
from synthgen.config import config_from_dict
from synthgen.cost.ledger import open_run_uri
from synthgen.cost.report import format_text, load_summary
from tests._procs import (
    INFRA,
    TEST_GPU_RESOURCE,
    VENV_BIN,
    Proc,
    TLSClientSide,
    child_env,
    free_port,
    make_certs,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GPU_RESOURCE = TEST_GPU_RESOURCE


@dataclass
class TLSCluster(TLSClientSide):
    gpu_worker: str  # worker name
    cpu_worker: str
    procs: list[Proc]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSCluster]:
    tmp = tmp_path_factory.mktemp("tls-cluster")
    certs = tmp / "certs"
    made = make_certs(certs)
    if made.returncode != 0:
        raise RuntimeError(f"make-certs.sh failed: {made.stderr}")
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    common = {
        "SYNTHGEN_TLS_DIR": str(certs),
        "SYNTHGEN_DASK_BIN": str(VENV_BIN / "dask"),
        "SYNTHGEN_SCHEDULER_ADDRESS": address,
        "SYNTHGEN_WORKER_HOST": "127.0.0.1",
        "SYNTHGEN_WORKER_DIR": str(tmp / "scratch"),
    }
    procs: list[Proc] = []
    try:
        procs.append(
            Proc(
                "scheduler",
                ["bash", str(INFRA / "start-scheduler.sh")],
                child_env(
                    **common,
                    SYNTHGEN_SCHEDULER_HOST="127.0.0.1",
                    SYNTHGEN_SCHEDULER_PORT=str(port),
                    SYNTHGEN_SCHEDULER_DASHBOARD="127.0.0.1:0",
                ),
                tmp,
            )
        )
        procs.append(
            Proc(
                "gpu-workers",
                ["bash", str(INFRA / "start-gpu-workers.sh")],
                child_env(
                    **common,
                    SYNTHGEN_GPUS="0",
                    SYNTHGEN_GPU_TYPE="Test GPU 24GB",
                    # what a host would say it costs: ignored (cost.worker_prices decides)
                    SYNTHGEN_PRICE_PER_HOUR="9.99",
                    SYNTHGEN_GPU_RESOURCE=GPU_RESOURCE,
                    SYNTHGEN_WORKER_NAME="test",
                ),
                tmp,
            )
        )
        procs.append(
            Proc(
                "cpu-worker",
                ["bash", str(INFRA / "start-cpu-worker.sh")],
                child_env(**common, SYNTHGEN_CPU_THREADS="2", SYNTHGEN_WORKER_NAME="test"),
                tmp,
            )
        )
        cluster = TLSCluster(address, certs, "test-gpu0", "test-cpu", procs)
        with cluster.client() as client:
            wait_until(
                lambda: len(client.scheduler_info()["workers"]) == 2,
                90,
                "two TLS workers to register",
                procs,
            )
        yield cluster
    finally:
        for p in reversed(procs):
            p.stop()


def _workers_by_name(client: Client) -> dict[str, dict]:
    return {w["name"]: w for w in client.scheduler_info()["workers"].values()}


def test_scripts_start_workers_with_resources_and_advertised_gpu(tls_cluster: TLSCluster) -> None:
    with tls_cluster.client() as client:
        workers = _workers_by_name(client)
        assert set(workers) == {"test-gpu0", "test-cpu"}
        assert workers["test-gpu0"]["resources"] == {GPU_RESOURCE: 1.0}
        # two threads (SYNTHGEN_WORKER_THREADS, cluster.overlap): the next shard's I/O runs
        # while the engine generates; each generate task asks for half the GPU
        assert workers["test-gpu0"]["nthreads"] == 2
        assert workers["test-cpu"]["resources"] == {}
        assert all(
            addr.startswith("tls://127.0.0.1:") for addr in client.scheduler_info()["workers"]
        )
        by_addr = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        gpu_addr = by_addr["test-gpu0"]
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), worker_advertised()))
        # the GPU type, not a price: the price is the operator's
        assert seen[gpu_addr] == ("0", {"gpu_type": "Test GPU 24GB"})
        # the host's own price is in the worker's environment (the flow test shows it unused)
        host_price = client.run(lambda: os.environ.get("SYNTHGEN_PRICE_PER_HOUR"))
        assert host_price[gpu_addr] == "9.99"
        assert seen[by_addr["test-cpu"]] == ("", {})
        # start-scheduler.sh sets worker-saturation 1.0 (no extra shards queued on busy GPUs)
        saturation = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.WORKER_SATURATION
        )
        assert saturation == 1.0


def _where() -> str:
    return str(get_worker().name)


def test_gpu_constrained_tasks_all_land_on_gpu_worker(tls_cluster: TLSCluster) -> None:
    cfg = config_from_dict(
        {"model": {"engine": "fake"}, "cluster": tls_cluster.cluster_cfg(gpu_tasks=True)}
    )
    resources = generate_resources(cfg)
    assert resources == {GPU_RESOURCE: 1.0 / cfg.cluster.overlap} == {GPU_RESOURCE: 0.5}
    with tls_cluster.client() as client:
        with dask.annotate(resources=resources):
            gpu_futures = [
                client.submit(_where, key=f"generate-{i}", pure=False) for i in range(12)
            ]
        free_futures = [client.submit(_where, key=f"clean-{i}", pure=False) for i in range(12)]
        gpu_places = client.gather(gpu_futures)
        free_places = client.gather(free_futures)
    assert gpu_places == ["test-gpu0"] * 12
    # unconstrained work may go anywhere; it is not forced onto the GPU worker
    assert set(free_places) <= {"test-gpu0", "test-cpu"}


PROBE = textwrap.dedent(
    """
    import sys
    from distributed import Client
    from distributed.security import Security
    address, mode, certs = sys.argv[1], sys.argv[2], sys.argv[3]
    kwargs = {}
    if mode == "foreign-ca":
        kwargs["security"] = Security(
            tls_ca_file=certs + "/ca.pem",
            tls_client_cert=certs + "/client.pem",
            tls_client_key=certs + "/client-key.pem",
            require_encryption=True,
        )
    try:
        with Client(address, timeout=5, **kwargs) as c:
            c.submit(sum, [1, 2]).result(timeout=5)
        print("CONNECTED")
    except BaseException as exc:
        print("REFUSED", type(exc).__name__)
    """
)


@pytest.mark.parametrize("mode", ["no-certificate", "foreign-ca"])
def test_client_without_valid_certificate_cannot_connect(
    tls_cluster: TLSCluster, tmp_path: Path, mode: str
) -> None:
    foreign = tmp_path / "foreign"
    if mode == "foreign-ca":  # a well-formed client cert from a CA the cluster does not trust
        assert make_certs(foreign).returncode == 0
    # each negative probe in its own process: a process with failed connects can hang later
    out = subprocess.run(
        [sys.executable, "-c", PROBE, tls_cluster.address, mode, str(foreign)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert "REFUSED" in out.stdout, out.stdout + out.stderr
    assert "CONNECTED" not in out.stdout
    # and the cluster is unharmed for legitimate clients
    with tls_cluster.client() as client:
        assert client.submit(sum, [1, 2], pure=False).result(timeout=20) == 3


def test_flow_runs_over_tls_and_generate_tasks_land_on_gpu_worker(
    tls_cluster: TLSCluster, tmp_path: Path, prefect_api: str
) -> None:
    """The real `synthgen-run` flow (fake engine) against the TLS cluster at tls://.

    Prefect is the test session's server (`prefect_api`: the same server app as `prefect
    server start`, ~12 s of start-up saved per test); the flow's settings reach the remote
    workers with each task.
    """
    import pyarrow.dataset as pads
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.run import synthgen_run
    from tests.helpers import fake_config, write_config

    out = tmp_path / "out"
    data = fake_config(str(out), shards__size=4)  # 24 built-in prompts -> 6 shards
    data["cluster"] = tls_cluster.cluster_cfg(gpu_tasks=True, retry_delay_s=0.5)
    # the operator's leases: by the certificate the workers present (infra/make-certs.sh's
    # default worker.pem: CN=synthgen-worker) and, lower, by the GPU workers' name prefix
    # (test-gpu0); the certificate wins. The worker's SYNTHGEN_PRICE_PER_HOUR=9.99 counts not.
    data["cost"] = {"worker_prices": {"worker": 0.42, "test": 7.0}}
    cfg_path = write_config(tmp_path / "tls.yaml", data)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        result = synthgen_run(config=cfg_path)
    assert result["status"] == "complete"
    assert result["shards_generated"] == 6
    assert pads.dataset(out / "dataset" / "data", format="parquet").count_rows() == 24

    with tls_cluster.client() as client:
        addr_of = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
    commits = [
        json.loads(p.read_text())["result"]
        for p in (out / "runs" / result["run_id"] / "_commits").glob("*.json")
    ]
    assert len(commits) == 6
    assert {c["worker"] for c in commits} == {addr_of[tls_cluster.gpu_worker]}
    assert all(c["worker"].startswith("tls://") for c in commits)
    # the operator's lease of the worker's certificate is what the cost ledger charged
    assert {c["price_per_hour"] for c in commits} == {0.42}
    run_uri = str(out / "runs" / result["run_id"])
    ledger = open_run_uri(run_uri)
    rows = ledger.rows().to_pylist()
    assert len(rows) == 6
    assert {(r["price_per_hour"], r["price_source"]) for r in rows} == {(0.42, "lease")}
    # the worker rows (written by the run's usage plugin on each worker) too
    held = {
        w["worker"]: (w["price_per_hour"], w["price_source"]) for w in ledger.workers().to_pylist()
    }
    assert held[addr_of[tls_cluster.gpu_worker]] == (0.42, "lease")
    summary = load_summary(run_uri)
    assert addr_of[tls_cluster.gpu_worker] in summary.totals["lease_priced"]
    assert not summary.totals["self_priced"]
    assert "priced by the operator's lease" in format_text(summary)


def test_verified_run_over_tls_gets_every_result_as_plain_data(
    tls_cluster: TLSCluster, tmp_path: Path, prefect_api: str
) -> None:
    """On a TLS cluster every task (generate, verify) sends back plain data, which the
    scheduler forwards (synthgen.cluster.roles) and the flow opens (no result is forged)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.run import synthgen_run
    from tests.helpers import fake_config, write_config

    out = tmp_path / "out"
    data = fake_config(str(out), shards__size=4, verify__enabled=True)
    data["cluster"] = tls_cluster.cluster_cfg(retry_delay_s=0.5)  # shards on both workers
    cfg_path = write_config(tmp_path / "tls-verify.yaml", data)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        result = synthgen_run(config=cfg_path)
    assert result["status"] == "complete" and result["rows_published"] == 24
    assert result["forged"] is None and result["refused"] == []
    v = result["verification"]
    assert v["statuses"] == {"pass": 6} and v["flagged_workers"] == []
