"""A tampered worker on a real TLS cluster (issue 17): certificate roles are enforced.

Scheduler and honest GPU worker are started by the infra/ scripts (which preload
synthgen.cluster.roles); the tampered worker is a plain `dask worker` with the worker
certificate the operator issued its host and `--preload tests.support.tampered`, which tries
to act as a client, run code on the scheduler and the other worker, and send them pickles
that would create a marker file. A real `synthgen-run` flow then runs on both workers.
A second run writes to S3 (moto behind a SigV4-checking proxy) with untrusted workers: the
tampered worker looks for storage credentials and misuses its presigned URLs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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
ATTACKS = {
    "client",
    "run_on_scheduler",
    "client_run",
    "pickle_to_scheduler",
    "pickle_to_worker",
    "run_on_worker",
}


@dataclass
class HostileCluster(TLSClientSide):
    marker: Path
    tamper_log: Path
    procs: dict[str, Proc]

    def attack_lines(self) -> list[dict[str, str]]:
        if not self.tamper_log.exists():
            return []
        return [json.loads(x) for x in self.tamper_log.read_text().splitlines() if x.strip()]

    def attacks(self) -> dict[str, str]:
        return {
            x["attack"]: x["outcome"]
            for x in self.attack_lines()
            if x["attack"] != "poisoned_result"
            and x["attack"] != "credentials"
            and not x["attack"].startswith("s3:")
        }

    def _address(self, name: str) -> str:
        with self.client() as client:
            return next(
                a for a, w in client.scheduler_info()["workers"].items() if w["name"] == name
            )

    def tampered_address(self) -> str:
        return self._address("tampered-gpu0")

    def honest_address(self) -> str:
        return self._address("honest-gpu0")


def _no_cloud_credentials(env: dict[str, str]) -> dict[str, str]:
    """A rented host's environment: none of the operator's storage credentials (this test
    process has some, for moto), no instance-metadata lookups."""
    out = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileCluster]:
    tmp = tmp_path_factory.mktemp("hostile")
    certs = tmp / "certs"
    for args in ((), ("--issue", "worker", "rented-host-7")):
        made = make_certs(certs, *args)
        assert made.returncode == 0, made.stderr
    port, honest_port = free_port(), free_port()
    address = f"tls://127.0.0.1:{port}"
    marker = tmp / "PAYLOAD-RAN"
    common = {
        "SYNTHGEN_TLS_DIR": str(certs),
        "SYNTHGEN_DASK_BIN": str(VENV_BIN / "dask"),
        "SYNTHGEN_SCHEDULER_ADDRESS": address,
        "SYNTHGEN_WORKER_HOST": "127.0.0.1",
        "SYNTHGEN_WORKER_DIR": str(tmp / "scratch"),
    }
    procs: dict[str, Proc] = {}
    cluster = HostileCluster(address, certs, marker, tmp / "tamper.jsonl", procs)
    try:
        procs["scheduler"] = Proc(
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
        procs["honest"] = Proc(
            "honest",
            ["bash", str(INFRA / "start-gpu-workers.sh")],
            _no_cloud_credentials(
                child_env(
                    **common,
                    SYNTHGEN_GPUS="0",
                    SYNTHGEN_GPU_TYPE="Test GPU 24GB",
                    SYNTHGEN_GPU_RESOURCE=GPU_RESOURCE,
                    SYNTHGEN_WORKER_NAME="honest",
                    SYNTHGEN_WORKER_PORT_BASE=str(honest_port),
                )
            ),  # fmt: skip
            tmp,
        )
        with cluster.client() as client:
            wait_until(
                lambda: len(client.scheduler_info()["workers"]) == 1,
                90,
                "the honest worker to register",
                list(procs.values()),
            )
        # the rented host runs the worker it was given, its own way: no roles preload, its
        # certificate, and the tampering preload
        procs["tampered"] = Proc(
            "tampered",
            [
                str(VENV_BIN / "dask"),
                "worker",
                address,
                "--name",
                "tampered-gpu0",
                "--host",
                "127.0.0.1",
                "--nthreads",
                "2",
                "--resources",
                f"{GPU_RESOURCE}=1",
                "--dashboard-address",
                "127.0.0.1:0",
                "--local-directory",
                str(tmp / "scratch-tampered"),
                "--tls-ca-file",
                str(certs / "ca.pem"),
                "--tls-cert",
                str(certs / "rented-host-7.pem"),
                "--tls-key",
                str(certs / "rented-host-7-key.pem"),
                "--preload",
                "tests.support.tampered",
            ],
            _no_cloud_credentials(
                child_env(
                    SYNTHGEN_TAMPER_LOG=str(cluster.tamper_log),
                    SYNTHGEN_TAMPER_MARKER=str(marker),
                    SYNTHGEN_TAMPER_TARGET=f"tls://127.0.0.1:{honest_port}",
                    SYNTHGEN_GPU_TYPE="Test GPU 24GB",
                )
            ),  # fmt: skip
            tmp,
        )
        with cluster.client() as client:
            wait_until(
                lambda: (
                    len(client.scheduler_info()["workers"]) == 2 and "done" in cluster.attacks()
                ),
                120,
                "the tampered worker to register and try its attacks",
                list(procs.values()),
            )
        yield cluster
    finally:
        for p in reversed(list(procs.values())):
            p.stop()


def test_a_tampered_worker_runs_nothing_outside_itself_and_the_run_completes(
    hostile: HostileCluster, tmp_path: Path, prefect_api: str
) -> None:
    import pyarrow.dataset as pads
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.run import synthgen_run
    from tests.helpers import fake_config, published_manifest, write_config

    # every attack was refused, and no payload ran anywhere (the scheduler, the honest
    # worker, this process): the marker file the payloads create does not exist
    outcomes = hostile.attacks()
    assert set(outcomes) == ATTACKS | {"done"}, outcomes
    accepted = {a: o for a, o in outcomes.items() if not o.startswith(("refused", "done"))}
    assert not accepted, accepted
    assert not hostile.marker.exists()

    out = tmp_path / "out"
    data = fake_config(str(out), shards__size=4)  # 24 built-in prompts -> 6 shards
    data["cluster"] = hostile.cluster_cfg(gpu_tasks=True, retry_delay_s=0.5)
    # run-wide dedup (exact and near): its shuffle mixes data of both workers, so on a TLS
    # cluster it runs on the trusted side (the flow's process), never worker to worker
    data["clean"] = {
        "enabled": True,
        "filters": {
            name: {"enabled": False}
            for name in (
                "word_count",
                "gopher_quality",
                "gopher_repetition",
                "truncated",
                "refusal",
            )
        },
    }
    cfg_path = write_config(tmp_path / "hostile.yaml", data)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        result = synthgen_run(config=cfg_path)

    # the run completes on both workers, every prompt published exactly once
    assert result["status"] == "complete"
    table = pads.dataset(out / "dataset" / "data", format="parquet").to_table()
    ids = table.column("prompt_id").to_pylist()
    dropped = sum(result["drop_counts"].values())
    assert len(ids) + dropped == 24 and len(set(ids)) == len(ids)
    manifest = published_manifest(out)
    assert manifest["dedup"]["rows_checked"] == 24, manifest.get("dedup")
    commits = [
        json.loads(p.read_text())["result"]
        for p in (out / "runs" / result["run_id"] / "_commits").glob("*.json")
    ]
    assert len(commits) == 6

    # it sent back poisoned results instead of plain data: the scheduler did not pass them
    # on, the flow used none, ran those shards on the honest worker and flagged it
    poisoned = [o for o in hostile.attack_lines() if o["attack"] == "poisoned_result"]
    assert poisoned, "the tampered worker ran no generate task"
    forged = result["forged"]
    assert forged and set(forged) == {hostile.tampered_address()}, forged
    assert sum(len(v) for v in forged.values()) == len(poisoned)
    assert {c["worker"] for c in commits} == {hostile.honest_address()}
    # the summary names the tampered host's certificate, and only it
    refused = result["refused"]
    assert [g["certificate"] for g in refused] == ["synthgen-rented-host-7"], refused
    what = " ".join(refused[0]["what"])
    for op in ("'register-client'", "'run_function'", "'broadcast'", "pickled payload"):
        assert op in what, refused
    # the honest worker refused (and logged) what the tampered one asked of it directly
    log = hostile.procs["honest"].log(tail=200_000)
    assert "refused operation 'run'" in log
    assert "refused a pickled payload" in log
    assert hostile.procs["scheduler"].alive() and hostile.procs["honest"].alive()
    assert not hostile.marker.exists()


S3_MISUSES = {
    "overwrite_committed_shard",
    "write_commit_marker",
    "write_into_dataset",
    "delete_with_put_url",
    "delete_input",
    "get_url_for_put",
    "put_url_for_get",
    "read_other_run",
    "read_other_shard",
    "list_bucket",
    "list_with_signed_query",
    "extend_expiry",
    "unsigned_put",
    "grant_store_rm",
    "grant_store_ls",
}


def test_untrusted_workers_hold_no_credentials_and_their_urls_open_only_their_keys(
    hostile: HostileCluster,
    tmp_path: Path,
    prefect_api: str,
    s3_server: str,
    s3_bucket: str,
    untrusted: bool = True,
) -> None:
    """Output on the S3 protocol with the credentials in the run config (as the README
    shows), behind a proxy that checks signatures as S3 does: with untrusted workers (auto:
    TLS + s3://) the tampered worker finds no credentials anywhere, every misuse of its
    presigned URLs is refused, and the run publishes every prompt once, leaving in the
    bucket only the run's own keys."""
    import os

    import pyarrow.dataset as pads
    import s3fs
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.run import synthgen_run
    from synthgen.config import OutputConfig
    from synthgen.cost.ledger import Ledger
    from synthgen.io.layout import RunLayout
    from synthgen.io.store import Store
    from tests.helpers import fake_config, write_config
    from tests.support.s3_sigcheck import sigcheck_proxy

    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    seen = len(hostile.attack_lines())
    with sigcheck_proxy(s3_server, {key: secret}) as (endpoint, refused):
        data = fake_config(f"s3://{s3_bucket}/h", shards__size=4)  # 6 shards
        data["output"]["storage_options"] = {
            "endpoint_url": endpoint,
            "key": key,
            "secret": secret,
        }
        data["cluster"] = hostile.cluster_cfg(gpu_tasks=True, retry_delay_s=0.5)
        # the operator's lease of the honest host, by the certificate it was issued
        data["cost"] = {"worker_prices": {"worker": 1.25}}
        if not untrusted:
            data["cluster"]["untrusted_workers"] = False
        cfg_path = write_config(tmp_path / "hostile-s3.yaml", data)
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            result = synthgen_run(config=cfg_path)
        lines = hostile.attack_lines()[seen:]

    # the tampered host found no credentials: not in its environment, its files, the config
    # its tasks carried, nor botocore's chain
    searches = [x["outcome"] for x in lines if x["attack"] == "credentials"]
    assert searches, "the tampered worker ran no generate task"
    assert set(searches) == {"none"}, searches
    # every misuse of its presigned URLs was refused (403 from the store, or GrantRefused)
    misuses = {x["attack"][3:]: x["outcome"] for x in lines if x["attack"].startswith("s3:")}
    assert set(misuses) == S3_MISUSES, misuses
    assert all(o.startswith("refused") for o in misuses.values()), misuses
    assert len(refused) >= len(S3_MISUSES) - 2, refused  # the store refused each request

    # the run completed on the honest worker, every prompt published exactly once
    assert result["status"] == "complete"
    forged = result["forged"]
    assert forged and set(forged) == {hostile.tampered_address()}, forged
    fs = s3fs.S3FileSystem(key=key, secret=secret, client_kwargs={"endpoint_url": s3_server})
    table = pads.dataset(f"{s3_bucket}/h/dataset/data", format="parquet", filesystem=fs).to_table()
    ids = table.column("prompt_id").to_pylist()
    assert len(ids) == 24 == len(set(ids))
    # the bucket holds only the run's keys and its published dataset: nothing staged, nothing
    # the tampered host wrote
    keys = fs.find(s3_bucket)
    run_prefix, dataset = f"{s3_bucket}/h/runs/{result['run_id']}/", f"{s3_bucket}/h/dataset/"
    stray = [k for k in keys if not k.startswith((run_prefix, dataset)) or "/staging/" in k]
    assert not stray, stray
    assert not any("evil" in k for k in keys)
    # the committed attempts are priced by the flow: the lease of the certificate the
    # scheduler saw the honest worker present (synthgen_worker_certificates)
    store = Store(
        OutputConfig(
            uri=f"s3://{s3_bucket}/h",
            storage_options={"endpoint_url": s3_server, "key": key, "secret": secret},
        )
    )
    rows = Ledger(RunLayout(store, result["run_id"])).rows().to_pylist()
    done = [r for r in rows if r["status"] == "succeeded"]
    assert len(done) == 6, rows
    assert {(r["price_per_hour"], r["price_source"]) for r in done} == {(1.25, "lease")}, done
