"""Orchestration overhead: a zero-work engine, N shards through the Prefect + Dask flow vs
the same shard function (`run_shard`) called in a plain loop. Reports ms per shard; cluster
and server start-up is reported separately. Target: < 50 ms per shard once the cluster is up.

    .venv/bin/python benchmarks/bench_orchestration.py [--shards 60] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=60)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from flows.prefect_env import prefect_api
    from synthgen.io.store import Store
    from synthgen.stages.generate import ShardTask, run_shard
    from synthgen.stages.plan import write_plan

    with tempfile.TemporaryDirectory() as tmp:
        # baseline: the shard function in a plain loop (same storage writes)
        cfg = config_from_dict(config(f"{tmp}/loop", args.shards, 1, 1))
        plan = write_plan(cfg, Store(cfg.output))
        d = cfg.model_dump(mode="json")
        run_shard(ShardTask(d, plan.shards[0].shard_id))  # warm the engine cache
        t0 = time.perf_counter()
        for s in plan.shards[1:]:
            run_shard(ShardTask(d, s.shard_id))
        loop_ms = (time.perf_counter() - t0) / (len(plan.shards) - 1) * 1000

        t_api = time.perf_counter()
        with prefect_api():
            api_s = time.perf_counter() - t_api
            from flows.run import execute

            cfg2 = config_from_dict(config(f"{tmp}/flow", args.shards, args.workers, args.threads))
            t1 = time.perf_counter()
            summary = execute(cfg2)
            total = time.perf_counter() - t1
        gen = summary["generate_seconds"]
        flow_ms = gen / args.shards * 1000
    print(f"machine: {machine()}")
    print(f"shards={args.shards} workers={args.workers} threads/worker={args.threads}")
    print(f"plain loop: {loop_ms:.1f} ms/shard")
    print(
        f"flow: {flow_ms:.1f} ms/shard from first submit to last result "
        f"(overhead {flow_ms - loop_ms:.1f} ms/shard over the loop)"
    )
    print(
        f"start-up: Prefect server {api_s:.1f}s; whole flow {total:.1f}s incl. plan, "
        f"LocalCluster start, publish ({total - gen:.1f}s outside the generate phase)"
    )


if __name__ == "__main__":
    main()
