"""What TLS costs a synthgen cluster: real `dask` processes on loopback, tcp:// vs tls://
vs tls:// with certificate roles (synthgen.cluster.roles, as the infra/ scripts start it).

For each it starts a scheduler and one worker (`tls`: plain `dask` commands with certificates
from infra/make-certs.sh; `tls-roles`: the infra/ scripts), then measures, from a client:
  - connect: Client() until connected (TLS handshake included)
  - tiny tasks: N submit+gather round trips of a no-op task, one at a time (task latency)
  - batch: N no-op tasks submitted at once (scheduler throughput)
  - transfer: fetching M results of SIZE MB each from the worker (bulk encryption)
and prints each TLS/TCP ratio. A shard task in synthgen moves a few KB (ids, counts) and runs
for seconds to minutes, so per-task latency matters far more than bulk bandwidth.

    python benchmarks/tls_overhead.py [--tasks 300] [--transfers 10] [--size-mb 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distributed import wait as dask_wait

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(p: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
            p.wait(timeout=10)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def cluster(kind: str, tmp: Path) -> tuple[str, list[subprocess.Popen[bytes]], dict]:
    port = free_port()
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONPATH=str(REPO))
    procs = []
    if kind == "tcp":
        address = f"tcp://127.0.0.1:{port}"
        procs.append(
            start(
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                env,
                tmp / "tcp-s.log",
            )
        )
        procs.append(
            start(
                [
                    str(BIN / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                env,
                tmp / "tcp-w.log",
            )
        )
        return address, procs, {}
    certs = tmp / f"certs-{kind}"
    subprocess.run(
        ["bash", str(REPO / "infra/make-certs.sh"), str(certs)], check=True, capture_output=True
    )
    address = f"tls://127.0.0.1:{port}"
    from distributed.security import Security

    sec = Security(
        tls_ca_file=str(certs / "ca.pem"),
        tls_client_cert=str(certs / "client.pem"),
        tls_client_key=str(certs / "client-key.pem"),
        require_encryption=True,
    )
    if kind == "tls":  # plain dask processes with the same certificates, no roles preload
        tls = ["--tls-ca-file", str(certs / "ca.pem")]
        s_args = [*tls, "--tls-cert", str(certs / "scheduler.pem")]
        s_args += ["--tls-key", str(certs / "scheduler-key.pem")]
        w_args = [*tls, "--tls-cert", str(certs / "worker.pem")]
        w_args += ["--tls-key", str(certs / "worker-key.pem")]
        procs.append(
            start(
                [str(BIN / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1"]
                + ["--port", str(port), "--dashboard-address", "127.0.0.1:0", *s_args],
                env,
                tmp / "tls-s.log",
            )
        )
        procs.append(
            start(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1"]
                + ["--dashboard-address", "127.0.0.1:0", *w_args],
                env,
                tmp / "tls-w.log",
            )
        )
        return address, procs, {"security": sec}
    # tls-roles: the infra scripts (certificate roles preloaded in scheduler and worker)
    env.update(
        SYNTHGEN_TLS_DIR=str(certs),
        SYNTHGEN_DASK_BIN=str(BIN / "dask"),
        SYNTHGEN_SCHEDULER_HOST="127.0.0.1",
        SYNTHGEN_SCHEDULER_PORT=str(port),
        SYNTHGEN_SCHEDULER_DASHBOARD="127.0.0.1:0",
        SYNTHGEN_SCHEDULER_ADDRESS=address,
        SYNTHGEN_GPUS="0",
        SYNTHGEN_GPU_TYPE="bench",
        SYNTHGEN_WORKER_HOST="127.0.0.1",
    )
    procs.append(start(["bash", str(REPO / "infra/start-scheduler.sh")], env, tmp / "tlsr-s.log"))
    procs.append(start(["bash", str(REPO / "infra/start-gpu-workers.sh")], env, tmp / "tlsr-w.log"))
    return address, procs, {"security": sec}


def noop(i: int) -> int:
    return i


def payload(i: int, size: int) -> bytes:
    return os.urandom(size)


def measure(kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from distributed import Client

    address, procs, kw = cluster(kind, tmp)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the worker
            try:
                with Client(address, timeout=5, **kw) as c:
                    if c.scheduler_info()["workers"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} cluster did not start")
            time.sleep(0.3)
        t = time.perf_counter()
        client = Client(address, timeout=10, **kw)
        out = {"connect_s": time.perf_counter() - t}
        client.submit(noop, -1, pure=False).result()  # warm up
        lat = []
        for i in range(args.tasks):
            t = time.perf_counter()
            client.submit(noop, i, pure=False).result()
            lat.append(time.perf_counter() - t)
        out["task_latency_ms_median"] = statistics.median(lat) * 1000
        t = time.perf_counter()
        client.gather(client.map(noop, range(args.tasks), pure=False))
        out["batch_tasks_per_s"] = args.tasks / (time.perf_counter() - t)
        size = int(args.size_mb * 2**20)
        futs = client.map(payload, range(args.transfers), size=size, pure=False)
        dask_wait(futs)
        t = time.perf_counter()
        got = client.gather(futs)
        # real bytes, not a stand-in (the roles preload forwards plain data only)
        assert all(isinstance(b, bytes) and len(b) == size for b in got), kind
        out["transfer_MB_per_s"] = args.transfers * args.size_mb / (time.perf_counter() - t)
        client.close()
        return out
    finally:
        for p in reversed(procs):
            stop(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--transfers", type=int, default=10)
    ap.add_argument("--size-mb", type=float, default=8.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {k: measure(k, args, Path(d)) for k in ("tcp", "tls", "tls-roles")}
    head = f"{'metric':<26}{'tcp':>12}{'tls':>12}{'tls-roles':>12}{'tls/tcp':>10}{'roles/tls':>11}"
    print(head)
    for key in res["tcp"]:
        a, b, c = res["tcp"][key], res["tls"][key], res["tls-roles"][key]
        print(f"{key:<26}{a:>12.3f}{b:>12.3f}{c:>12.3f}{b / a:>10.2f}{c / b:>11.2f}")


if __name__ == "__main__":
    main()
