"""Straggler speculation at simulated GPU speed: makespan with and without backup copies.

A real `dask scheduler` (worker-saturation 1.0, as infra/start-scheduler.sh) and `--workers`
`dask worker` processes (one thread each: one "GPU"); the last worker's engine is
`--slowdown` times slower (benchmarks/slow_worker_preload.py, keyed by an environment
variable: a throttled card among healthy ones). The fake engine sleeps
`--seconds-per-token` per completion token, like a GPU of that speed. Each run goes through
the real flow (`flows.run.execute`) with `cluster.speculation` off, then on, `--repeats`
times each (alternating), after one warm-up run (not counted). Reported per mode (median): the generate phase's makespan (first
attempt start to last commit, from the ledger), the whole generate flow, the backup copies
started and won, and the extra cost: the ledger's speculation rows (losing copies) as a
share of the run's shard cost. Workers are leased at $0.35/h (cost.worker_prices, by name).

    python benchmarks/bench_stragglers.py                      # 4 workers, 1 at 3x, 24 shards
    python benchmarks/bench_stragglers.py --shards 32 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine

from synthgen.config import config_from_dict
from synthgen.cost.ledger import Ledger
from synthgen.cost.report import summarize
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store

DASK = str(Path(sys.executable).with_name("dask"))
PRELOAD = str(REPO / "benchmarks" / "slow_worker_preload.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["DASK_LOGGING__DISTRIBUTED"] = "error"
    env["DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"] = "1.0"
    env.update(extra)
    return env


def start(tmp: Path, workers: int, slowdown: float) -> tuple[str, list[subprocess.Popen]]:
    port = _port()
    address = f"tcp://127.0.0.1:{port}"
    log = (tmp / "dask.log").open("ab")
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", "127.0.0.1:0"],
            env=_env(), stdout=log, stderr=log, cwd=REPO,
        )
    ]  # fmt: skip
    for i in range(workers):
        slow = {"SYNTHGEN_BENCH_SLOWDOWN": str(slowdown)} if i == workers - 1 else {}
        procs.append(
            subprocess.Popen(
                [DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                 "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}", "--memory-limit", "0",
                 "--preload", PRELOAD],
                env=_env(**slow), stdout=log, stderr=log, cwd=REPO,
            )
        )  # fmt: skip
    from distributed import Client

    with Client(address, timeout=60) as c:
        c.wait_for_workers(workers, timeout=120)
    return address, procs


def config(out: str, address: str, args: argparse.Namespace, speculation: bool) -> dict:
    return {
        "name": "bench-stragglers",
        "prompts": {
            "type": "template",
            "templates": ["{topic} for {audience}"],
            "topics": [f"topic {i}" for i in range(args.shards * args.size)],
        },
        "shards": {"size": args.size},
        "model": {
            "engine": "fake",
            "fake": {"seconds_per_token": args.seconds_per_token, "tokens_per_completion": 128},
        },
        "sampling": {"max_new_tokens": 128},
        "cluster": {"address": address, "speculation": speculation},
        "cost": {"worker_prices": {f"w{i}": 0.35 for i in range(args.workers)}},
        "output": {"uri": out},
        "clean": {"enabled": False},
    }


def one_run(tmp: Path, address: str, args: argparse.Namespace, speculation: bool, i: int) -> dict:
    from flows.run import execute

    cfg = config_from_dict(config(str(tmp / f"out-{speculation}-{i}"), address, args, speculation))
    summary = execute(cfg)
    store = Store(cfg.output)
    rows = Ledger(RunLayout(store, cfg.run_id or "")).rows().to_pylist()
    ok = [r for r in rows if r["status"] == "succeeded"]
    makespan = (
        max(r["finished_at"] for r in ok) - min(r["started_at"] for r in rows)
    ).total_seconds()
    totals = summarize(rows, []).totals
    late = summary.get("deadlines") or {}
    return {
        "makespan": makespan,
        "generate": summary["generate_seconds"],
        "copies": len(late.get("speculative_copies", {})),
        "won": len(late.get("speculation_won", [])),
        "spec_cost": totals["speculation_cost_usd"],
        "cost": totals["cost_usd"],
        "rows": summary["rows_published"],
        # the losing copies as the ledger has them: who wrote the row (the loser itself when
        # it was stopped: "... stopped mid-generation"; the flow when it never answered) and
        # the seconds it was charged
        "losers": [
            (r["status"], round(r["wall_seconds"], 2), (r["error"] or "").rsplit("; ", 1)[-1])
            for r in rows
            if (r["error"] or "").startswith("speculation: ")
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slowdown", type=float, default=3.0)
    ap.add_argument("--shards", type=int, default=24)
    ap.add_argument("--size", type=int, default=32, help="prompts per shard")
    ap.add_argument("--seconds-per-token", type=float, default=0.0005)  # 2000 tokens/s
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from flows.prefect_env import prefect_api

    results: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as d, prefect_api():
        tmp = Path(d)
        address, procs = start(tmp, args.workers, args.slowdown)
        try:
            one_run(tmp, address, args, False, -1)  # warm-up: worker imports, not counted
            for i in range(args.repeats):
                for speculation in (False, True):
                    res = one_run(tmp, address, args, speculation, i)
                    results[speculation].append(res)
                    print(f"speculation={speculation} run {i}: {res}", flush=True)
                    # a losing copy may still sleep on its worker: let it finish first
                    time.sleep(3 * args.slowdown * args.size * 128 * args.seconds_per_token)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:  # a worker busy with a losing copy
                    p.kill()
                    p.wait(timeout=10)
    shard_s = args.size * 128 * args.seconds_per_token
    print(f"machine: {machine()}")
    print(
        f"{args.workers} workers (1 at {args.slowdown:g}x slower), {args.shards} shards x "
        f"{args.size} prompts x 128 tokens at {args.seconds_per_token * 1000:g} ms/token "
        f"({shard_s:.1f}s per shard on a healthy worker), {args.repeats} runs per mode"
    )
    print(
        "| speculation | makespan s, median (each run) | generate flow s | copies (won) "
        "| extra cost, mean per run (share of shard cost) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for mode in (False, True):
        rs = results[mode]
        med = statistics.median
        share = statistics.mean(r["spec_cost"] / r["cost"] if r["cost"] else 0.0 for r in rs)
        each = ", ".join(f"{r['makespan']:.1f}" for r in rs)
        print(
            f"| {'on' if mode else 'off'} | {med(r['makespan'] for r in rs):.1f} ({each}) | "
            f"{med(r['generate'] for r in rs):.1f} | "
            f"{sum(r['copies'] for r in rs)} ({sum(r['won'] for r in rs)}) | "
            f"${statistics.mean(r['spec_cost'] for r in rs):.6f} = {100 * share:.1f}% |"
        )


if __name__ == "__main__":
    main()
