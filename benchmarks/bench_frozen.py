"""A frozen worker with default settings: how long until the run completes?

The issue-19 scenario: a real `dask scheduler` (Dask's own defaults: worker TTL 5 minutes)
and two `dask worker` processes, `synthgen run` (the CLI, its own temporary Prefect server)
on the fake engine, 12 shards of `--shard-seconds`. After the first commit the worker of a
running attempt is stopped with SIGSTOP (connections open, nothing answers). Reported: the
run's wall time, the time from the freeze to the CLI's exit, and whether every prompt is in
the dataset once. Default run config (no `cluster.shard_timeout_s`): the derived deadline
(floor 60 s) moves the frozen shard; before issue 19 the same run waited for the TTL (627 s).

    python benchmarks/bench_frozen.py                 # default deadline floor (60 s)
    python benchmarks/bench_frozen.py --floor 10      # cluster.deadline_floor_s=10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as ds
from _common import machine

from synthgen.config import config_from_dict
from synthgen.io.attempts import attempt_history, commit_markers
from synthgen.io.store import Store
from tests.crash_helpers import start_cli, start_dask, wait_for
from tests.helpers import fake_config, write_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shard-seconds", type=float, default=2.0)
    ap.add_argument("--floor", type=float, default=None, help="cluster.deadline_floor_s")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        procs = start_dask(tmp)
        try:
            more = {} if args.floor is None else {"cluster__deadline_floor_s": args.floor}
            data = fake_config(
                str(tmp / "out"),
                shards__size=2,
                cluster__address=procs.address,
                model__fake__seconds_per_shard=args.shard_seconds,
                **more,
            )
            cfg = config_from_dict(data)
            store = Store(cfg.output)
            t0 = time.monotonic()
            cli = start_cli(write_config(tmp / "c.yaml", data), tmp / "s.json", tmp / "log")

            def running() -> dict | None:
                if not commit_markers(store, cfg.run_id):
                    return None
                now = datetime.now(UTC)
                for a in attempt_history(store, cfg.run_id):
                    age = (now - datetime.fromisoformat(a["started_at"])).total_seconds()
                    if a["outcome"] == "running" and age < args.shard_seconds / 2:
                        return a
                return None

            victim: dict = {}
            wait_for(lambda: bool(victim.update(running() or {}) or victim), 300, "a shard")
            procs.freeze_worker(victim["worker"])
            frozen_at = time.monotonic()
            code = cli.wait(timeout=1200)
            done = time.monotonic()
            ids = ds.dataset(tmp / "out" / "dataset" / "data").to_table()["prompt_id"].to_pylist()
        finally:
            procs.stop()
    print(f"machine: {machine()}")
    print(
        f"12 shards of {args.shard_seconds:g}s, 2 workers, deadline floor "
        f"{args.floor if args.floor is not None else 'default (60)'} s"
    )
    print(f"exit code {code}; {len(ids)} rows, {len(set(ids))} distinct prompts")
    print(f"run wall {done - t0:.1f}s; freeze -> exit {done - frozen_at:.1f}s")


if __name__ == "__main__":
    main()
