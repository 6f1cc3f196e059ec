"""A three-stage run at simulated GPU speed: do the stages overlap or wait on each other?

The fake engine sleeps `model.fake.seconds_per_token` per completion token (plus
`seconds_per_shard`), like a GPU of that speed. The run goes through the real flow on a
LocalCluster (one thread per worker: one "GPU" each). The ideal is the sum of every unit's
engine time divided by the workers (perfect packing, no orchestration, no stage waiting for
another); efficiency = ideal / generate-phase wall time, and the whole run (plan, cluster
start, dedup, publish) is reported beside it.

    python benchmarks/bench_multistage.py                       # 3 stages, 16 shards x 8
    python benchmarks/bench_multistage.py --shards 40 --size 64 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import machine

from synthgen.config import config_from_dict
from synthgen.io.store import Store
from synthgen.stages.units import committed_units

STAGES = [
    {"name": "instruction", "prompt": "Ask about {{ prompt }}"},
    {"name": "response", "prompt": "{{ instruction }}", "sampling": {"n": 2}},
    {"name": "judge", "prompt": "Q: {{ instruction }} A: {{ response }} Score 1-10."},
]


def config(out: str, shards: int, size: int, workers: int, spt: float) -> dict:
    return {
        "name": "bench-multistage",
        "prompts": {
            "type": "template",
            "templates": ["{topic} for {audience}"],
            "topics": [f"topic {i}" for i in range(shards * size)],
        },
        "shards": {"size": size},
        "model": {
            "engine": "fake",
            "fake": {"seconds_per_token": spt, "tokens_per_completion": 16},
        },
        "sampling": {"max_new_tokens": 16},
        "cluster": {"n_workers": workers, "threads_per_worker": 1},
        "output": {"uri": out},
        "clean": {"enabled": False},
        "stages": STAGES,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--size", type=int, default=8, help="prompts per shard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds-per-token", type=float, default=0.002)
    args = ap.parse_args()

    from flows.prefect_env import prefect_api

    with tempfile.TemporaryDirectory() as tmp, prefect_api():
        from flows.run import execute

        cfg = config_from_dict(
            config(f"{tmp}/out", args.shards, args.size, args.workers, args.seconds_per_token)
        )
        t0 = time.perf_counter()
        summary = execute(cfg)
        total = time.perf_counter() - t0
        markers = committed_units(Store(cfg.output), cfg)
        engine = sum(m["result"]["engine_seconds"] for m in markers.values())
    gen = summary["generate_seconds"]
    ideal = engine / args.workers
    print(f"machine: {machine()}")
    print(
        f"3 stages (n=2 at the second), {args.shards} shards x {args.size} prompts, "
        f"{args.workers} workers, {args.seconds_per_token * 1000:g} ms/token"
    )
    print(f"units: {summary['shards_total']}; engine time (sum): {engine:.1f}s")
    print(f"generate phase: {gen:.1f}s; ideal {ideal:.1f}s -> efficiency {ideal / gen:.3f}")
    print(f"whole run: {total:.1f}s -> efficiency {ideal / total:.3f}")


if __name__ == "__main__":
    main()
