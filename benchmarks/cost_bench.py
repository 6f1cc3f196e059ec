"""Cost accounting benchmarks (issue 4). Run from the repository root:

    PYTHONPATH=. python benchmarks/cost_bench.py accuracy   # fake engine of known time, real flow
    PYTHONPATH=. python benchmarks/cost_bench.py held       # embedded default: held vs lifetime
    PYTHONPATH=. python benchmarks/cost_bench.py overhead   # ledger+worker row writes per shard
    PYTHONPATH=. python benchmarks/cost_bench.py report     # report on a 5,000-attempt ledger

`accuracy` and `held` drive the real Prefect flow on a real Dask LocalCluster; `held`
observes the worker processes through the OS (psutil), independently of synthgen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from _common import REPO, machine  # noqa: F401  (puts the repo on sys.path)


def _run(config: dict[str, Any], tmp: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    from flows.prefect_env import prefect_api

    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    with prefect_api():
        from flows.run import synthgen_run

        return synthgen_run(config=str(path), overrides=overrides or [])


def accuracy(args: argparse.Namespace) -> None:
    """Each ledger row's wall_seconds vs the fake engine's known time per shard."""
    from synthgen.cost.ledger import open_run_uri

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = {
            "name": "bench-accuracy",
            "prompts": {"type": "builtin"},
            "shards": {"size": 3},
            "model": {"engine": "fake", "fake": {"seconds_per_shard": args.seconds}},
            "cluster": {"n_workers": args.workers, "threads_per_worker": 1},
            "output": {"uri": str(tmp / "out")},
        }
        res = _run(cfg, tmp)
        rows = open_run_uri(str(tmp / "out" / "runs" / res["run_id"])).rows().to_pylist()
    errs = [(r["wall_seconds"] - args.seconds) / args.seconds * 100 for r in rows]
    exact = all(r["cost_usd"] == r["price_per_hour"] * r["wall_seconds"] / 3600 for r in rows)
    print(f"machine: {machine()}")
    print(f"{len(rows)} shards, fake engine {args.seconds:.2f} s per shard, {args.workers} workers")
    print(
        f"wall_seconds error vs known time: mean {statistics.mean(errs):+.2f}%, "
        f"min {min(errs):+.2f}%, max {max(errs):+.2f}%"
    )
    print(f"cost_usd == price x wall / 3600 exactly on every row: {exact}")


def held(args: argparse.Namespace) -> None:
    """Report's held seconds vs the worker processes' lifetime seen through the OS."""
    import psutil

    from synthgen.cost.report import load_summary

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    seen: dict[int, list[float]] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            now = time.time()
            for p in me.children(recursive=True):
                if p.pid in before:
                    continue
                try:
                    cmd = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                # first/last seen by the wall clock: psutil's create_time() counts from a
                # whole-second boot time and can be up to a second early
                if "spawn_main" in cmd:
                    seen.setdefault(p.pid, [now, now])[1] = now
            time.sleep(0.02)

    cfg = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg["output"] = {"uri": str(tmp / "out")}
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        res = _run(cfg, tmp, args.set)
        time.sleep(0.5)
        stop.set()
        watcher.join()
        s = load_summary(str(tmp / "out" / "runs" / res["run_id"]))
    print(f"machine: {machine()}; run status {res['status']}, overrides {args.set}")
    for w in s.workers:
        life = seen[w["pid"]][1] - seen[w["pid"]][0]
        diff = w["held_seconds"] - life
        print(
            f"worker pid {w['pid']}: held {w['held_seconds']:.3f} s, OS lifetime {life:.3f} s, "
            f"diff {diff:+.3f} s ({diff / life * 100:+.2f}%); load {w['load_seconds']:.1f} s, "
            f"busy {w['busy_seconds']:.1f} s, idle {w['idle_seconds']:.1f} s"
        )
    t = s.totals
    print(
        f"utilisation {t['utilisation'] * 100:.1f}%, shard-attributed ${t['cost_usd']:.6f}, "
        f"billed ${t['billed_usd']:.6f}"
    )


def _attempt(i: int, t0: datetime) -> Any:
    from synthgen.cost.prices import Price, ShardAttempt

    price = [Price(0.35, "RTX 4090", "table"), Price(2.2, "H100", "table")][i % 2]
    return ShardAttempt(
        "bench", f"shard-{i // 2:05d}", 1 + i % 2, f"a{i}", f"tcp://w{i % 16}", "h",
        price.device_type, "m", price, t0 + timedelta(seconds=i),
        t0 + timedelta(seconds=i + 30 + i % 7), 29.0, 64, 6400, 25_000, 60, 22_000,
        "failed" if i % 10 == 0 else "succeeded",
    )  # fmt: skip


def overhead(args: argparse.Namespace) -> None:
    """Milliseconds per shard the accounting adds: ledger row + worker row, local and S3."""
    from synthgen.config import config_from_dict
    from synthgen.cost import usage
    from synthgen.cost.ledger import run_ledger
    from synthgen.cost.meter import AttemptMeter, Counts

    def measure(output: dict[str, Any]) -> list[float]:
        cfg = config_from_dict({"run_id": "bench", "output": output})
        ledger = run_ledger(cfg.output, "bench")
        times = []
        for i in range(args.n):
            m = AttemptMeter.start(cfg, f"shard-{i:05d}", 1, "NVIDIA GeForce RTX 4090", "m")
            t = time.perf_counter()
            m.finish_in(ledger, Counts(64, 6400, 25_000, 60, 22_000, 1.0), "succeeded")
            times.append((time.perf_counter() - t) * 1000)
        usage.reset()
        return times

    print(f"machine: {machine()}; {args.n} attempts each")
    with tempfile.TemporaryDirectory() as d:
        local = measure({"uri": d})
    print(
        f"local: median {statistics.median(local):.1f} ms, p90 {sorted(local)[int(0.9 * len(local))]:.1f} ms per shard"
    )
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        import s3fs

        endpoint = f"http://127.0.0.1:{port}"
        s3fs.S3FileSystem(key="x", secret="y", client_kwargs={"endpoint_url": endpoint}).mkdir(
            "bench-bucket"
        )
        s3 = measure(
            {
                "uri": "s3://bench-bucket/out",
                "storage_options": {"key": "x", "secret": "y", "endpoint_url": endpoint},
            }
        )
    finally:
        server.stop()
    print(
        f"moto S3: median {statistics.median(s3):.1f} ms, p90 {sorted(s3)[int(0.9 * len(s3))]:.1f} ms per shard"
    )


def report(args: argparse.Namespace) -> None:
    """Time to summarise, format and chart a large ledger (in memory, no I/O)."""
    from synthgen.cost.chart import render_png
    from synthgen.cost.prices import ledger_row
    from synthgen.cost.report import format_text, summarize, to_markdown

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [ledger_row(_attempt(i, t0)) for i in range(args.n)]
    t = time.perf_counter()
    s = summarize(rows, [])
    t_sum = time.perf_counter() - t
    t = time.perf_counter()
    format_text(s)
    to_markdown(s)
    t_fmt = time.perf_counter() - t
    t = time.perf_counter()
    png = render_png(s)
    t_png = time.perf_counter() - t
    print(f"machine: {machine()}")
    print(
        f"{args.n} attempts ({len(s.per_shard)} shards): summarize {t_sum:.3f} s, "
        f"text+markdown {t_fmt:.3f} s, PNG {t_png:.3f} s ({len(png) // 1024} KiB)"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--seconds", type=float, default=2.0)
    a.add_argument("--workers", type=int, default=2)
    a.set_defaults(func=accuracy)
    h = sub.add_parser("held")
    h.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    h.set_defaults(func=held)
    o = sub.add_parser("overhead")
    o.add_argument("--n", type=int, default=50)
    o.set_defaults(func=overhead)
    r = sub.add_parser("report")
    r.add_argument("--n", type=int, default=5000)
    r.set_defaults(func=report)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
