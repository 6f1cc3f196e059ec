"""Orchestration overhead: a zero-work engine, N shards through the Prefect + Dask flow vs
the same shard function (`run_shard`) called in a plain loop. Reports ms per shard; cluster
and server start-up is reported separately. Target: < 50 ms per shard once the cluster is up
(issue 2); about 25 ms/shard over the loop at 200 shards (issue 13).

The flow's time is the run summary's `generate_seconds`: checkpoint `generate.started` to
`generate.done` (first submission to last result; dedup and publish are not in it). The
wall time on 2 cores swings by +-5 ms/shard from run to run, so the CPU each process spent
in that window (the flow's process, the Prefect server, the Dask workers; psutil, from the
same two checkpoints) is printed too: it is steadier, and says where the time goes.

    .venv/bin/python benchmarks/bench_orchestration.py [--shards 60] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import psutil
from _common import machine

from synthgen.config import config_from_dict


def config(out: str, shards: int, workers: int, threads: int) -> dict:
    return {
        "name": "bench-orch",
        "prompts": {
            "type": "template",
            "templates": ["Item {topic}"],
            "topics": [str(i) for i in range(shards * 2)],
        },
        "shards": {"size": 2},
        "model": {"engine": "fake"},
        "sampling": {"max_new_tokens": 8},
        "cluster": {"n_workers": workers, "threads_per_worker": threads},
        "output": {"uri": out},
    }


def _cpu_by_role() -> dict[tuple[str, int], float]:
    """CPU seconds (user + system) of this process and its descendants, by role and pid."""
    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            t = p.cpu_times()
        except psutil.Error:
            continue
        role = (
            "flow" if p.pid == me.pid
            else "server" if "uvicorn" in cmd
            else "workers" if "dask worker" in cmd or "spawn_main" in cmd
            else "other"
        )  # fmt: skip
        out[(role, p.pid)] = t.user + t.system
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from flows.prefect_env import prefect_api
    from synthgen.checkpoints import set_checkpoint_hook
    from synthgen.io.store import Store
    from synthgen.stages.generate import ShardTask, run_shard
    from synthgen.stages.plan import write_plan

    with tempfile.TemporaryDirectory() as tmp:
        # baseline: the shard function in a plain loop (same storage writes)
        cfg = config_from_dict(config(f"{tmp}/loop", args.shards, 1, 1))
        plan = write_plan(cfg, Store(cfg.output))
        d = cfg.model_dump(mode="json")
        run_shard(ShardTask(d, plan.shards[0].shard_id))  # warm the engine cache
        t0, c0 = time.perf_counter(), time.process_time()
        for s in plan.shards[1:]:
            run_shard(ShardTask(d, s.shard_id))
        loop_ms = (time.perf_counter() - t0) / (len(plan.shards) - 1) * 1000
        loop_cpu_ms = (time.process_time() - c0) / (len(plan.shards) - 1) * 1000

        t_api = time.perf_counter()
        with prefect_api():
            api_s = time.perf_counter() - t_api
            from flows.run import execute

            cfg2 = config_from_dict(config(f"{tmp}/flow", args.shards, args.workers, args.threads))
            snaps: dict[str, dict[tuple[str, int], float]] = {}

            def hook(point: str) -> None:
                if point in ("generate.started", "generate.done"):
                    snaps[point] = _cpu_by_role()

            set_checkpoint_hook(hook)
            t1 = time.perf_counter()
            try:
                summary = execute(cfg2)
            finally:
                set_checkpoint_hook(None)
            total = time.perf_counter() - t1
        gen = summary["generate_seconds"]
        flow_ms = gen / args.shards * 1000
    print(f"machine: {machine()}")
    print(f"shards={args.shards} workers={args.workers} threads/worker={args.threads}")
    print(f"plain loop: {loop_ms:.1f} ms/shard ({loop_cpu_ms:.1f} ms CPU)")
    print(
        f"flow: {flow_ms:.1f} ms/shard from first submit to last result "
        f"(overhead {flow_ms - loop_ms:.1f} ms/shard over the loop)"
    )
    a, b = snaps["generate.started"], snaps["generate.done"]
    roles: dict[str, float] = {}
    for key, secs in b.items():
        roles[key[0]] = roles.get(key[0], 0.0) + secs - a.get(key, 0.0)
    print(
        "CPU in the generate phase, ms/shard: "
        + ", ".join(f"{r} {v / args.shards * 1000:.1f}" for r, v in sorted(roles.items()) if v)
        + f"; all {sum(roles.values()) / args.shards * 1000:.1f} "
        f"({sum(roles.values()) / args.shards * 1000 - loop_cpu_ms:.1f} over the loop's)"
    )
    print(
        f"start-up: Prefect server {api_s:.1f}s; whole flow {total:.1f}s incl. plan, "
        f"LocalCluster start, publish ({total - gen:.1f}s outside the generate phase)"
    )


if __name__ == "__main__":
    main()
