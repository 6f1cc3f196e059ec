"""Worker CPU per task: the orchestration benchmark's flow (zero-work fake engine) with a
preload that times chosen functions in the Dask worker by thread CPU time
(benchmarks/worker_cpu_preload.py). CPU time per call holds up on a loaded machine where
the wall-clock ms/shard of bench_orchestration.py does not.

    .venv/bin/python benchmarks/bench_worker_cpu.py [--shards 200] [--tag NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import dask
from bench_orchestration import config

from flows.prefect_env import prefect_api
from synthgen.config import config_from_dict

PRELOAD = str(Path(__file__).with_name("worker_cpu_preload.py"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--tag", default="run")
    ap.add_argument("--out", default=tempfile.gettempdir())
    args = ap.parse_args()
    os.environ["SYNTHGEN_BENCH_CPU_DIR"] = args.out  # the worker processes inherit it
    os.environ["SYNTHGEN_BENCH_CPU_TAG"] = args.tag
    dask.config.set({"distributed.worker.preload": [PRELOAD]})
    with tempfile.TemporaryDirectory() as tmp, prefect_api():
        from flows.run import execute

        summary = execute(config_from_dict(config(f"{tmp}/flow", args.shards, 1, 2)))
    print(f"flow: {summary['generate_seconds'] / args.shards * 1000:.1f} ms/shard")
    for path in sorted(Path(args.out).glob(f"worker-cpu-{args.tag}-*.json")):
        for name, (n, cpu, wall) in sorted(json.loads(path.read_text()).items()):
            print(
                f"{name:55s} n={n:4d} cpu {cpu / n * 1000:7.3f} ms/call, wall {wall / n * 1000:7.3f}"
            )


if __name__ == "__main__":
    main()
