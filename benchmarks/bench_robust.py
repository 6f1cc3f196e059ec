"""What robustness costs and buys, measured on the local machine.

- preflight latency (local output; S3 output on a moto server; unreachable scheduler)
- lease acquire + renew + release latency (local file; S3 with conditional writes)
- one S3 write across an endpoint outage of D seconds (moto stopped, restarted on the same
  port): time until the write lands, with the default retry policy
- the same outage with a 2-try budget: time until the clear failure

Run from the repository root:  python benchmarks/bench_robust.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

from _common import machine

from synthgen.cluster.preflight import check_scheduler, run_preflight
from synthgen.config import ClusterConfig, OutputConfig, RunConfig
from synthgen.errors import PreflightError, StorageError
from synthgen.io.lease import RunLease
from synthgen.io.store import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times)


class Moto:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        for _ in range(100):
            try:
                self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
                self.server.start()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto did not restart")

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--outages", default="2,5", help="outage lengths in seconds")
    args = ap.parse_args()
    import logging
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import s3fs

    moto = Moto()
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto.url}, skip_instance_cache=True).mkdir(
        bucket
    )
    local = tempfile.mkdtemp()
    local_cfg = RunConfig.model_validate(
        {"model": {"engine": "fake"}, "output": {"uri": f"{local}/out"}}
    )
    s3_out = {"uri": f"s3://{bucket}/out", "storage_options": {"endpoint_url": moto.url}}
    s3_cfg = RunConfig.model_validate({"model": {"engine": "fake"}, "output": s3_out})

    print(f"machine: {machine()}; repeats {args.repeats}")
    print("| measurement | median ms | max ms |")
    print("| --- | --- | --- |")
    for name, cfg in (("local", local_cfg), ("s3 (moto)", s3_cfg)):
        med, mx = _ms(lambda cfg=cfg: run_preflight(cfg), args.repeats)
        print(f"| preflight, {name} output | {med:.1f} | {mx:.1f} |")
    dead = ClusterConfig(address=f"tcp://127.0.0.1:{_free_port()}", connect_timeout_s=2)

    def refused() -> None:
        try:
            check_scheduler(dead)
        except PreflightError:
            return
        raise RuntimeError("expected a refusal")

    med, mx = _ms(refused, args.repeats)
    print(f"| preflight, unreachable scheduler (refused) | {med:.1f} | {mx:.1f} |")
    for name, out in (("local", local_cfg.output), ("s3 (moto)", s3_cfg.output)):
        store = Store(out)

        def cycle(store: Store = store) -> None:
            lease = RunLease(store, f"r-{uuid.uuid4().hex[:6]}", ttl_s=60).acquire()
            lease.renew()
            lease.release()

        med, mx = _ms(cycle, args.repeats)
        print(f"| lease acquire+renew+release, {name} | {med:.1f} | {mx:.1f} |")

    print()
    print("| S3 outage | retry policy | result | seconds from first try |")
    print("| --- | --- | --- | --- |")
    for seconds in [float(x) for x in args.outages.split(",")]:
        for attempts in (8, 2):
            out = OutputConfig(**s3_out, retry_attempts=attempts)
            store = Store(out)
            store.write_bytes(store.path("warm"), b"x")
            moto.stop()
            threading.Timer(seconds, moto.start).start()
            t0 = time.perf_counter()
            try:
                store.write_bytes(store.path(f"obj-{uuid.uuid4().hex[:6]}"), b"payload")
                result = "written"
            except StorageError:
                result = "StorageError (clear failure)"
            took = time.perf_counter() - t0
            time.sleep(max(0.0, seconds - took) + 0.5)  # the endpoint is back before the next
            print(f"| {seconds:g} s | {attempts} tries | {result} | {took:.2f} |")
    moto.stop()


if __name__ == "__main__":
    main()
