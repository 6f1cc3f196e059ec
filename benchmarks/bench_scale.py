"""Orchestration cost per shard at scale (issue 16, item 4): N shards of a zero-work engine
through `flows.run.execute` (the Prefect flow on a LocalCluster, what `synthgen run` calls),
reporting per shard: wall-clock cost, Prefect API calls, Prefect database rows and the Dask
scheduler's memory. Target (issue 16): the per-shard cost at 10,000 shards <= 1.2x the one
at 1,000; the end-of-run phase <= 5 % of the generate phase.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --shards 1000 [--size 2]
        [--workers 1] [--threads 2] [--loop-sample 300] [--json out.json]

What is measured, and how:

- *Phases* (flow process clock): start-up = `execute` called -> the generate loop's first
  `ShardLoop.run` (plan, LocalCluster start, usage plugin); generate phase = that -> the
  `generate.done` checkpoint (every shard submitted, run, returned); end-of-run phase =
  `generate.done` -> `execute` returned (run-wide dedup, publish, ledger bookkeeping, cost
  artifact, manifest, summary). Taken with a checkpoint hook and a wrapper around
  `ShardLoop.run` installed by this script: no product code is timed differently. (The run
  summary's `generate_seconds` runs from checkpoint `generate.started` to `generate.done`:
  it is printed too; until 2026-12-01 it also spanned dedup and publish.)
- *Plain loop*: `run_shard` called in a loop on the first `--loop-sample` shards of an
  N-shard plan (same storage writes, no Prefect, no Dask); the flow's ms/shard minus this
  is the orchestration overhead, as in bench_orchestration.py.
- *Prefect API calls*: counted server-side, so calls from the flow process *and* from the
  Dask worker processes (each task run reports its own states and logs) are all counted.
  This script starts the same temporary server `flows.prefect_env.prefect_api()` would
  (uvicorn on loopback, `prefect.server.api.server:create_app`, the ephemeral-server
  environment: `PREFECT__SERVER_EPHEMERAL=1`, UI off) but through `counting_app` below, a
  plain ASGI middleware around Prefect's app that counts each HTTP request by method and
  path (ids replaced by `{id}`), each websocket connection and each websocket message a
  client sent (the events stream `/api/events/in`: task-run state changes travel there as
  events). PREFECT_API_URL is set to it before Prefect is imported, so `prefect_api()` uses
  it and the settings shipped to the workers carry it. Snapshots at the loop's start, at
  `generate.done` and at the end attribute the calls to phases.
- *Prefect database rows*: PREFECT_HOME is a fresh temporary folder per run, so the
  server's SQLite database (`PREFECT_HOME/prefect.db`) holds this run's rows only. After
  the run, once the `task_run` count stops growing (the server writes task runs from
  events, asynchronously), every table is counted with sqlite3.
- *Dask scheduler memory*: `client.run_on_scheduler` returns the scheduler process's RSS
  (psutil) and its task/transition-log sizes at the loop's start and at `generate.done`.
  With a LocalCluster the scheduler runs in the flow's own process (its pid is printed), so
  this RSS includes the flow and the Prefect client; the scheduler's own structures are
  given as counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import REPO, machine

_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
COUNTS_PATH = "/__bench_counts"


class CountingASGI:
    """Counts the requests an ASGI app handles; GET COUNTS_PATH returns them as JSON."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.http: Counter[str] = Counter()
        self.ws_connections: Counter[str] = Counter()
        self.ws_messages: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"] == COUNTS_PATH:
            body = json.dumps(
                {
                    "http": dict(self.http),
                    "ws_connections": dict(self.ws_connections),
                    "ws_messages": dict(self.ws_messages),
                }
            ).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        if kind == "http":
            self.http[f"{scope['method']} {_ID.sub('{id}', scope['path'])}"] += 1
        elif kind == "websocket":
            path = _ID.sub("{id}", scope["path"])
            self.ws_connections[path] += 1
            inner = receive

            async def receive() -> dict[str, Any]:
                message = await inner()
                if message.get("type") == "websocket.receive":
                    self.ws_messages[path] += 1
                return message

        await self.app(scope, receive, send)


def counting_app() -> Any:
    """uvicorn factory: Prefect's server app behind CountingASGI."""
    from prefect.server.api.server import create_app

    return CountingASGI(create_app())


def start_server(port: int) -> subprocess.Popen[bytes]:
    """The temporary server prefect_api() would start (SubprocessASGIServer's command and
    environment), with the counting middleware; returns once /api/health answers."""
    import httpx

    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(Path(__file__).parent),
            "--factory",
            "bench_scale:counting_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("the Prefect server did not answer /api/health within 300 s")


def counts(port: int) -> dict[str, Any]:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}{COUNTS_PATH}", timeout=30).json()


def total_calls(c: dict[str, Any]) -> int:
    return sum(c["http"].values()) + sum(c["ws_messages"].values())


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    """Per-route calls between two snapshots (websocket messages as `WS <path>`)."""
    out: Counter[str] = Counter()
    for k, v in after["http"].items():
        out[k] += v - before["http"].get(k, 0)
    for k, v in after["ws_messages"].items():
        out[f"WS {k}"] += v - before["ws_messages"].get(k, 0)
    return {k: v for k, v in out.most_common() if v}


def _scheduler_structures(dask_scheduler: Any = None) -> dict[str, Any]:
    import psutil

    s = dask_scheduler
    return {
        "pid": os.getpid(),
        "rss": psutil.Process().memory_info().rss,
        "tasks": len(s.tasks),
        "task_groups": len(s.task_groups),
        "task_prefixes": len(s.task_prefixes),
        "transition_log": len(s.transition_log),
        "clients": len(s.clients),
    }


def cpu_tree() -> dict[str, float]:
    """CPU seconds (user + system) of this process (flow and, with a LocalCluster, the Dask
    scheduler), of the Prefect server and of the Dask worker processes (with their nannies):
    a per-shard figure that depends less on what else loads the machine than wall time."""
    import psutil

    me = psutil.Process()
    out = {"flow": sum(me.cpu_times()[:2]), "server": 0.0, "workers": 0.0}
    for p in me.children(recursive=True):
        try:
            part = "server" if "bench_scale:counting_app" in " ".join(p.cmdline()) else "workers"
            out[part] += sum(p.cpu_times()[:2])
        except psutil.Error:  # gone
            pass
    return out


class PeakRSS:
    """Samples, once a second in a thread, the RSS of this process (flow + scheduler), of
    the Prefect server and of the Dask workers (summed); keeps each one's peak per phase."""

    def __init__(self) -> None:
        import threading

        self.phase = "start-up"
        self.peaks: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(1.0):
            rss = {"flow": me.memory_info().rss, "server": 0, "workers": 0}
            for p in me.children(recursive=True):
                try:
                    part = "server" if "counting_app" in " ".join(p.cmdline()) else "workers"
                    rss[part] += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = self.peaks.setdefault(self.phase, dict.fromkeys(rss, 0))
            for k, v in rss.items():
                peak[k] = max(peak[k], v)

    def stop(self) -> dict[str, dict[str, int]]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def db_rows(db: Path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
        ]
        return {t: con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        con.close()


def settled_rows(db: Path, timeout_s: float = 120.0) -> dict[str, int]:
    """The table counts once task_run and events stop growing (written from events)."""
    last: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        rows = db_rows(db)
        if rows == last or time.monotonic() > deadline:
            return rows
        last = rows
        time.sleep(5)


def write_prompts(path: Path, n: int) -> str:
    """A JSONL prompt file: the run config (shipped with every task) stays the same size at
    any N (a template's topic list of N values made every task carry O(N) bytes)."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Item {i}"}) + "\n")
    return str(path)


def config(out: str, prompts: str, size: int, workers: int, threads: int) -> dict[str, Any]:
    return {
        "name": "bench-scale",
        "prompts": {"type": "jsonl", "path": prompts},
        "shards": {"size": size},
        "model": {"engine": "fake"},
        "sampling": {"max_new_tokens": 8},
        "cluster": {"n_workers": workers, "threads_per_worker": threads},
        "output": {"uri": out},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--size", type=int, default=2, help="prompts per shard (shards.size)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loop-sample", type=int, default=300, help="shards in the plain loop")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-scale-")
    home = Path(tmp, "prefect-home")
    home.mkdir()
    # before Prefect is imported anywhere: a fresh database, our counting server
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    from flows.prefect_env import quiet_defaults

    quiet_defaults()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    t_server = time.perf_counter()
    server = start_server(port)
    server_s = time.perf_counter() - t_server
    try:
        out = run(args, tmp, port)
        out["server_start_s"] = round(server_s, 1)
        out["db_rows"] = settled_rows(home / "prefect.db")
        out["api_calls"]["after_settle"] = diff(counts(port), {"http": {}, "ws_messages": {}})
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def run(args: argparse.Namespace, tmp: str, port: int) -> dict[str, Any]:
    from flows.loop import ShardLoop
    from flows.prefect_env import prefect_api
    from flows.verify import runner_client
    from synthgen.checkpoints import set_checkpoint_hook
    from synthgen.config import config_from_dict
    from synthgen.io.store import Store
    from synthgen.stages.generate import ShardTask, run_shard
    from synthgen.stages.plan import write_plan

    n = args.shards
    prompts = write_prompts(Path(tmp, "prompts.jsonl"), n * args.size)
    # baseline: the shard function in a plain loop, on a sample of an N-shard plan
    cfg = config_from_dict(config(f"{tmp}/loop", prompts, args.size, 1, 1))
    plan = write_plan(cfg, Store(cfg.output))
    d = cfg.model_dump(mode="json")
    sample = plan.shards[: max(2, min(args.loop_sample, n))]
    run_shard(ShardTask(d, sample[0].shard_id))  # warm the engine cache
    t0 = time.perf_counter()
    for s in sample[1:]:
        run_shard(ShardTask(d, s.shard_id))
    loop_ms = (time.perf_counter() - t0) / (len(sample) - 1) * 1000

    marks: dict[str, Any] = {}
    real_run = ShardLoop.run

    def timed_run(self: ShardLoop) -> Any:
        if "loop_start" not in marks:
            client = runner_client()
            marks["sched_start"] = client.run_on_scheduler(_scheduler_structures)
            marks["calls_start"] = counts(port)
            marks["cpu_start"] = cpu_tree()
            peaks.phase = "generate"
            marks["loop_start"] = time.perf_counter()
        return real_run(self)

    def hook(name: str) -> None:
        if name == "generate.done" and "done" not in marks:
            marks["done"] = time.perf_counter()
            marks["calls_done"] = counts(port)
            marks["cpu_done"] = cpu_tree()
            peaks.phase = "end-of-run"
            marks["sched_done"] = runner_client().run_on_scheduler(_scheduler_structures)

    ShardLoop.run = timed_run  # type: ignore[method-assign]
    set_checkpoint_hook(hook)
    peaks = PeakRSS()
    try:
        with prefect_api():
            from flows.run import execute

            cfg2 = config_from_dict(
                config(f"{tmp}/flow", prompts, args.size, args.workers, args.threads)
            )
            t1 = time.perf_counter()
            summary = execute(cfg2)
            t_end = time.perf_counter()
            from flows.prefect_env import _flush_logs

            _flush_logs()
            calls_end = counts(port)
    finally:
        ShardLoop.run = real_run  # type: ignore[method-assign]
        set_checkpoint_hook(None)
        peak_rss = peaks.stop()

    startup = marks["loop_start"] - t1
    gen = marks["done"] - marks["loop_start"]
    end = t_end - marks["done"]
    zero = {"http": {}, "ws_messages": {}}
    return {
        "shards": n,
        "size": args.size,
        "workers": args.workers,
        "threads": args.threads,
        "status": summary.get("status"),
        "loop_ms_per_shard": round(loop_ms, 2),
        "loop_sample": len(sample) - 1,
        "startup_s": round(startup, 2),
        "generate_s": round(gen, 2),
        "end_s": round(end, 2),
        "summary_generate_seconds": round(summary.get("generate_seconds", 0.0), 2),
        "wall_s": round(t_end - t1, 2),
        "flow_ms_per_shard": round(gen / n * 1000, 2),
        "overhead_ms_per_shard": round(gen / n * 1000 - loop_ms, 2),
        "end_over_generate": round(end / gen, 4),
        "generate_cpu_ms_per_shard": {
            k: round((marks["cpu_done"][k] - marks["cpu_start"][k]) / n * 1000, 2)
            for k in marks["cpu_start"]
        },
        "scheduler": {"start": marks["sched_start"], "done": marks["sched_done"]},
        "peak_rss_mib": {ph: {k: v >> 20 for k, v in d.items()} for ph, d in peak_rss.items()},
        "flow_pid": os.getpid(),
        "api_calls": {
            "startup": total_calls(marks["calls_start"]),
            "generate": diff(marks["calls_done"], marks["calls_start"]),
            "end": diff(calls_end, marks["calls_done"]),
            "total": total_calls(calls_end),
            "all": diff(calls_end, zero),
        },
    }


def report(args: argparse.Namespace, o: dict[str, Any]) -> None:
    n = o["shards"]
    print(f"machine: {machine()}; load {os.getloadavg()}")
    print(
        f"shards={n} x {o['size']} prompts, workers={o['workers']} threads/worker={o['threads']}"
        f", status {o['status']}"
    )
    print(
        f"plain loop: {o['loop_ms_per_shard']:.1f} ms/shard ({o['loop_sample']} shards); flow: "
        f"{o['flow_ms_per_shard']:.1f} ms/shard in the generate phase "
        f"(overhead {o['overhead_ms_per_shard']:.1f} ms/shard over the loop)"
    )
    print(
        f"phases: server start {o['server_start_s']} s (not in the run), start-up "
        f"{o['startup_s']} s, generate {o['generate_s']} s, end-of-run {o['end_s']} s "
        f"= {100 * o['end_over_generate']:.1f} % of generate (target <= 5 %); wall {o['wall_s']} s; "
        f"summary generate_seconds {o['summary_generate_seconds']} s"
    )
    cpu = o["generate_cpu_ms_per_shard"]
    print(
        "generate-phase CPU per shard: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items())
        + f" (all {sum(cpu.values()):.1f} ms)"
    )
    gen_calls = sum(o["api_calls"]["generate"].values())
    print(
        f"Prefect API calls: {o['api_calls']['total']} in all, {o['api_calls']['total'] / n:.2f}"
        f"/shard; generate phase {gen_calls} ({gen_calls / n:.2f}/shard), start-up "
        f"{o['api_calls']['startup']}, end-of-run {sum(o['api_calls']['end'].values())}"
    )
    for k, v in o["api_calls"]["after_settle"].items():
        print(f"  {v:>8}  {v / n:8.3f}/shard  {k}")
    print("Prefect database rows (table: rows, rows/shard):")
    for t, c in sorted(o["db_rows"].items(), key=lambda kv: -kv[1]):
        if c:
            print(f"  {t:32s} {c:>9}  {c / n:8.3f}")
    s0, s1 = o["scheduler"]["start"], o["scheduler"]["done"]
    same = "the flow's process" if s0["pid"] == o["flow_pid"] else f"pid {s0['pid']}"
    print(
        f"Dask scheduler ({same}): RSS {s0['rss'] / 2**20:.0f} -> {s1['rss'] / 2**20:.0f} MiB "
        f"({(s1['rss'] - s0['rss']) / n / 1024:.1f} KiB/shard); tasks {s0['tasks']} -> "
        f"{s1['tasks']}, transition log {s0['transition_log']} -> {s1['transition_log']}, "
        f"task groups {s0['task_groups']} -> {s1['task_groups']}"
    )
    print(
        "peak RSS (MiB) by phase: "
        + "; ".join(
            f"{ph}: " + ", ".join(f"{k} {v}" for k, v in d.items())
            for ph, d in o["peak_rss_mib"].items()
        )
    )


if __name__ == "__main__":
    main()
