"""One-stage run at simulated GPU speed on the S3 protocol: how busy is the engine?

The fake engine sleeps `model.fake.seconds_per_token` per completion token (default 1/2400:
an 8B model on an RTX 4090) and writes `--tokens` tokens per completion; 2 LocalCluster
workers of one thread ("one GPU" each) run the real flow (`flows.run.execute`, what
`synthgen run` calls) with the output in a bucket on a moto S3 server over HTTP on
loopback, in its own process (`--moto-in-process`: in this one, the flow's, as until
2 Dec 2026; `--local`: a local directory instead). Clean (filters, dedup) stays on, as by
default.

    ideal      = the committed shards' engine seconds / workers (perfect packing)
    efficiency = ideal / generate-phase seconds, and ideal / whole-run seconds
    engine-busy fraction (from the ledger) = the workers' engine seconds / held seconds

    python benchmarks/bench_gpu_speed.py --size 8 --prompts 640
    python benchmarks/bench_gpu_speed.py --size 64 --prompts 2560      # 40 shards
    python benchmarks/bench_gpu_speed.py --prompts 640                 # shards.size unset
    python benchmarks/bench_gpu_speed.py --size 64 --prompts 2560 --untrusted  # issue 17
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import machine

from synthgen.checkpoints import set_checkpoint_hook
from synthgen.config import config_from_dict
from synthgen.io.store import Store
from synthgen.stages.units import committed_units


def _moto(in_process: bool) -> tuple[Any, str]:
    """A moto S3 server on loopback: its own process (as any S3 endpoint is), or with
    `in_process` a ThreadedMotoServer in this one, the flow's (how the benchmark ran until
    2 Dec 2026: its request handling then shared the flow process's GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    if in_process:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        return server, endpoint
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.1)
    return _Proc(proc), endpoint


class _Proc:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def config(output: dict, prompts: int, size: int | None, workers: int, a: argparse.Namespace):
    cfg = {
        "name": "bench-gpu-speed",
        "prompts": {
            "type": "template",
            "templates": ["Write about {topic} for {audience}"],
            "topics": [f"topic {i}" for i in range(prompts)],
        },
        "model": {
            "engine": "fake",
            "fake": {"seconds_per_token": a.seconds_per_token, "tokens_per_completion": a.tokens},
        },
        "sampling": {"max_new_tokens": a.tokens},
        "cluster": {
            "n_workers": workers,
            "threads_per_worker": 1,
            "untrusted_workers": bool(a.untrusted),
        },
        "output": output,
    }
    if size is not None:
        cfg["shards"] = {"size": size}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=640)
    ap.add_argument("--size", type=int, default=None, help="shards.size (unset: the default)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256, help="completion tokens")
    ap.add_argument("--seconds-per-token", type=float, default=1 / 2400)
    ap.add_argument("--local", action="store_true", help="local disk instead of moto S3")
    ap.add_argument(
        "--moto-in-process",
        action="store_true",
        help="run the moto S3 server in this process (the flow's) instead of its own",
    )
    ap.add_argument(
        "--untrusted",
        action="store_true",
        help="cluster.untrusted_workers: true (presigned URLs per attempt, the flow commits)",
    )
    args = ap.parse_args()
    if args.untrusted and args.local:
        ap.error("--untrusted needs the S3 output (presigned URLs): drop --local")

    from flows.prefect_env import prefect_api

    server = None
    with tempfile.TemporaryDirectory() as tmp, prefect_api():
        from flows.run import execute

        if args.local:
            output = {"uri": f"{tmp}/out"}
        else:
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            server, endpoint = _moto(args.moto_in_process)
            import s3fs

            s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("bench")
            output = {"uri": "s3://bench/out", "storage_options": {"endpoint_url": endpoint}}
        cfg = config_from_dict(config(output, args.prompts, args.size, args.workers, args))
        marks: dict[str, float] = {}  # checkpoint -> wall-clock time (the flow's process)

        def hook(name: str) -> None:
            if name in ("generate.started", "generate.done"):
                marks.setdefault(name, time.time())

        set_checkpoint_hook(hook)
        t0 = time.perf_counter()
        try:
            summary = execute(cfg)
        finally:
            set_checkpoint_hook(None)
        total = time.perf_counter() - t0
        store = Store(cfg.output)
        markers = committed_units(store, cfg)
        engine = sum(m["result"]["engine_seconds"] for m in markers.values())
        from synthgen.cost.ledger import run_ledger

        ledger = run_ledger(cfg.output, cfg.run_id or "")
        rows = ledger.rows().to_pylist()
        workers = ledger.workers().to_pylist()
        latest: dict[str, dict] = {}
        for w in workers:  # the latest row of each worker process
            if (
                w["worker_id"] not in latest
                or w["held_until"] > latest[w["worker_id"]]["held_until"]
            ):
                latest[w["worker_id"]] = w
        held = sum(w["held_seconds"] for w in latest.values())
        ledger_engine = sum(r["engine_seconds"] for r in rows)
        shard_wall = sum(r["wall_seconds"] for r in rows if r["status"] == "succeeded")
        span = (
            max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)
        ).total_seconds()
        first_start = min(r["started_at"] for r in rows).timestamp()
        last_end = max(r["finished_at"] for r in rows).timestamp()
        head = first_start - marks.get("generate.started", first_start)
        tail = marks.get("generate.done", last_end) - last_end
        gaps = []  # a worker's idle time between one attempt's end and its next one's start
        for w in {r["worker"] for r in rows}:
            mine = sorted((r for r in rows if r["worker"] == w), key=lambda r: r["started_at"])
            for a, b in zip(mine, mine[1:], strict=False):
                gaps.append((b["started_at"] - a["finished_at"]).total_seconds())
    if server is not None:
        server.stop()
    gen = summary["generate_seconds"]
    ideal = engine / args.workers
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.1f}")
    print(
        f"{args.prompts} prompts in {len(markers)} shards (size {args.size or 'default'}), "
        f"{args.workers} workers, {args.tokens} tokens/completion at "
        f"{args.seconds_per_token * 1000:.3f} ms/token, {'local disk' if args.local else 'moto S3'}"
        + (" (in the flow's process)" if args.moto_in_process and not args.local else "")
        + (", untrusted workers (presigned URLs, trusted commit)" if args.untrusted else "")
    )
    print(f"engine time (sum): {engine:.1f}s; ideal {ideal:.1f}s")
    print(
        f"generate phase: {gen:.1f}s -> efficiency {ideal / gen:.3f} "
        "(checkpoints generate.started to generate.done: first submission to last result)"
    )
    print(
        f"first attempt start to last attempt end: {span:.1f}s -> efficiency {ideal / span:.3f} "
        f"(the generate phase less the first submission's and the last result's latency)"
    )
    print(
        f"generate.started to the first attempt's start: {head:.2f}s; last attempt's end to "
        f"generate.done: {tail:.2f}s"
    )
    print(f"whole run: {total:.1f}s -> efficiency {ideal / total:.3f}")
    print(
        f"ledger: engine {ledger_engine:.1f}s / held {held:.1f}s over {len(latest)} workers -> "
        f"engine-busy fraction {ledger_engine / held if held else 0:.3f}; "
        f"shard wall sum {shard_wall:.1f}s"
    )
    if gaps:
        gaps.sort()
        print(
            f"between attempts on a worker: mean {sum(gaps) / len(gaps) * 1000:.0f} ms, "
            f"median {gaps[len(gaps) // 2] * 1000:.0f} ms (negative: attempts overlap)"
        )


if __name__ == "__main__":
    main()
