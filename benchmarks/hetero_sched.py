"""Heterogeneous-GPU scheduling benchmark (no GPU needed).

Simulated workers in a real dask LocalCluster: each shard sleeps
`overhead + tokens / (base_rate * speed)`, with speeds 1x / 1.6x / 3x (RTX 3090 / 4090 /
A100 class). Strategies differ only in how the prompts are cut into shards (and, for
"static", where shards are placed). Reports makespan / ideal makespan, where
ideal = total tokens / total capacity (per-shard overhead not included, so overhead
counts against a strategy).

    python benchmarks/hetero_sched.py                # 12 workers, 2400 prompts
    python benchmarks/hetero_sched.py --workers 24 --prompts 4800
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import dask
import numpy as np
from distributed import Client, LocalCluster, get_worker

from synthgen.cost.summary import per_worker
from synthgen.stages.sizing import max_shard_size, plan_shard_sizes

SPEED_CYCLE = (1.0, 1.6, 3.0)


@dataclass(frozen=True)
class SimResult:
    shard: int
    worker: str
    device: str
    completion_tokens: int
    seconds: float
    end: float


def run_shard(
    shard: int, tokens: int, base_rate: float, overhead: float, speeds: dict
) -> SimResult:
    w = get_worker()
    speed = speeds[str(w.name)]
    t0 = time.perf_counter()
    time.sleep(overhead + tokens / (base_rate * speed))
    return SimResult(
        shard, str(w.name), f"sim-{speed:g}x", tokens, time.perf_counter() - t0, time.time()
    )


def uniform(n: int, size: int) -> list[int]:
    return [size] * (n // size) + ([n % size] if n % size else [])


def run_strategy(
    client: Client,
    sizes: list[int],
    tokens: np.ndarray,
    args: argparse.Namespace,
    speeds: dict[str, float],
    placement: list[str] | None = None,
) -> tuple[float, list[SimResult]]:
    bounds = np.cumsum([0, *sizes])
    shard_tokens = [int(tokens[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    t0 = time.time()
    futs = []
    for i, tok in enumerate(shard_tokens):
        # priority keeps plan order (big shards first); without it dask orders by key
        kw: dict = {"priority": len(shard_tokens) - i}
        if placement:
            kw.update(workers=[placement[i]], allow_other_workers=False)
        futs.append(
            client.submit(
                run_shard, i, tok, args.base_rate, args.overhead, speeds, pure=False, **kw
            )
        )
    results = client.gather(futs)
    return max(r.end for r in results) - t0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=2400)
    ap.add_argument("--base-rate", type=float, default=2500.0, help="tokens/s of a 1x worker")
    ap.add_argument("--overhead", type=float, default=0.01, help="seconds per shard (commit etc.)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per strategy (median shown)")
    ap.add_argument(
        "--saturation",
        type=float,
        default=1.0,
        help="distributed.scheduler.worker-saturation unless a strategy sets it (dask's default: 1.1)",
    )
    ap.add_argument("--only", default="", help="comma-separated strategy names to run")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    tokens = np.clip(rng.gamma(2.0, 75.0, size=args.prompts), 8, 1024).astype(int)
    n, w = args.prompts, args.workers
    speed_list = [SPEED_CYCLE[i % 3] for i in range(w)]
    capacity = args.base_rate * sum(speed_list)
    ideal = tokens.sum() / capacity
    print(
        f"{w} workers speeds {sorted(speed_list)}; {n} prompts, {tokens.sum()} tokens; "
        f"base rate {args.base_rate:g} tok/s; overhead {args.overhead:g} s/shard; "
        f"ideal makespan {ideal:.2f} s"
    )
    rule = max_shard_size(n, speed_list, 1.10)
    rule_blind = max_shard_size(n, [1.0] * w, 1.10)
    big_cap = math.ceil(n / w)  # shards.size no larger than one worker's even share
    guided = plan_shard_sizes(n, big_cap, w, speeds=speed_list)
    guided_blind = plan_shard_sizes(n, big_cap, w)  # speeds unknown: assumes 1x/3x

    def static_sizes() -> list[int]:
        raw = [n * s / sum(speed_list) for s in speed_list]
        sizes = [math.floor(x) for x in raw]
        sizes[-1] += n - sum(sizes)
        return sizes

    def desc(sizes: list[int]) -> str:
        return f"{len(sizes)} shards {sizes[0]}..{sizes[-1]}"

    sat = args.saturation
    # name, sizes, worker-saturation (inf = no scheduler queuing: eager assignment +
    # work stealing), static placement by speed
    strategies: list[tuple[str, Callable[[], list[int]], float, bool]] = [
        ("big: 1 shard/worker", lambda: uniform(n, big_cap), sat, False),
        ("medium: 4 shards/worker", lambda: uniform(n, math.ceil(n / (4 * w))), sat, False),
        ("small: size 8, stealing only (no queuing)", lambda: uniform(n, 8), float("inf"), False),
        ("small: size 8, dask default saturation 1.1", lambda: uniform(n, 8), 1.1, False),
        ("small: size 8", lambda: uniform(n, 8), sat, False),
        (f"uniform max_shard_size={rule}", lambda: uniform(n, rule), sat, False),
        (
            f"uniform max_shard_size, speeds unknown={rule_blind}",
            lambda: uniform(n, rule_blind),
            sat,
            False,
        ),
        (f"guided, saturation 1.1: {desc(guided)}", lambda: guided, 1.1, False),
        (f"guided: {desc(guided)}", lambda: guided, sat, False),
        (f"guided, speeds unknown: {desc(guided_blind)}", lambda: guided_blind, sat, False),
        ("static: 1 shard/worker sized by speed", static_sizes, sat, True),
    ]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    for name, make_sizes, saturation, static in strategies:
        if only and not any(name.startswith(o) for o in only):
            continue
        sizes = make_sizes()
        with dask.config.set({"distributed.scheduler.worker-saturation": saturation}):
            with (
                LocalCluster(
                    n_workers=w, threads_per_worker=1, processes=False, dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                info = client.scheduler_info()["workers"]
                addr_by_name = {str(v["name"]): a for a, v in info.items()}
                names = sorted(addr_by_name, key=int)
                speeds = {nm: speed_list[i] for i, nm in enumerate(names)}
                placement = [addr_by_name[names[i]] for i in range(len(sizes))] if static else None
                ratios = []
                for _ in range(args.repeats):
                    makespan, results = run_strategy(client, sizes, tokens, args, speeds, placement)
                    ratios.append(makespan / ideal)
                    busy = sum(r.seconds for r in results) / (w * makespan)
                    last: dict[str, float] = {}
                    for r in results:
                        last[r.worker] = max(last.get(r.worker, 0.0), r.end)
                    spread = max(last.values()) - min(last.values())
                    print(
                        f"  {name:45s} shards={len(sizes):4d} makespan={makespan:6.2f}s "
                        f"ratio={ratios[-1]:5.3f} busy={busy:.3f} finish-spread={spread:.2f}s"
                    )
        rows.append((name, len(sizes), sorted(ratios), results))

    print(
        "\n| strategy | shards | makespan / ideal (median) | min..max |\n| --- | ---: | ---: | ---: |"
    )
    for name, k, rs, _ in rows:
        print(f"| {name} | {k} | {statistics.median(rs):.3f} | {rs[0]:.3f}..{rs[-1]:.3f} |")
    best = min(rows, key=lambda r: statistics.median(r[2]))
    print(f"\nper-worker throughput for '{best[0]}' (synthgen.cost.summary.per_worker):")
    shard_rows = [
        {
            "worker": r.worker,
            "device": r.device,
            "completion_tokens": r.completion_tokens,
            "engine_seconds": r.seconds,
            "cost_usd": 0.0,
        }
        for r in best[3]
    ]
    for wt in sorted(per_worker(shard_rows), key=lambda x: -x["tokens_per_s"]):
        print(
            f"  worker {wt['worker']:>3s} {wt['device']:8s} shards={wt['shards']:3d} "
            f"tokens={wt['completion_tokens']:6d} tokens/s={wt['tokens_per_s']:8.1f}"
        )


if __name__ == "__main__":
    main()
