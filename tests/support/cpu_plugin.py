"""Per-test CPU accounting (opt-in): `pytest -p tests.support.cpu_plugin` with
SYNTHGEN_TEST_CPU_DIR=DIR writes one JSON line per test to DIR/cpu-<xdist worker>.jsonl.

CI on 2 cores is CPU-bound, so the suite's CPU (not its wall time, which depends on what
else runs) is what a cut must reduce. Per test (setup, call and teardown together):
- `self_s`: this pytest process (its threads: in-process flows, moto, fsspec);
- `children_s`: processes it started and reaped during the test (CLI runs, LocalCluster
  workers, `dask` processes; each with the descendants *they* reaped);
- `prefect_s`: the session's Prefect server (uvicorn child), which serves every flow run.
`python -m tests.support.cpu_plugin DIR` sums them by file and lists the top tests."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest


def _rusage(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _prefect_cpu() -> float:
    import psutil

    total = 0.0
    try:
        for p in psutil.Process().children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
                if "uvicorn" in cmd and "prefect.server" in cmd:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    out = os.environ.get("SYNTHGEN_TEST_CPU_DIR")
    if not out:
        yield
        return
    before = (_rusage(resource.RUSAGE_SELF), _rusage(resource.RUSAGE_CHILDREN), _prefect_cpu())
    t0 = time.monotonic()
    yield
    after = (_rusage(resource.RUSAGE_SELF), _rusage(resource.RUSAGE_CHILDREN), _prefect_cpu())
    row = {
        "test": item.nodeid,
        "wall_s": round(time.monotonic() - t0, 2),
        "self_s": round(after[0] - before[0], 2),
        "children_s": round(after[1] - before[1], 2),
        "prefect_s": round(max(0.0, after[2] - before[2]), 2),
    }
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    Path(out).mkdir(parents=True, exist_ok=True)
    with (Path(out) / f"cpu-{worker}.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _cpu(row: dict) -> float:
    return row["self_s"] + row["children_s"] + row["prefect_s"]


def summarise(folder: str, top: int = 25) -> None:
    rows = [
        json.loads(line)
        for f in sorted(Path(folder).glob("cpu-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    by_file: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0, 0.0])
    for r in rows:
        f = by_file[r["test"].split("::")[0]]
        for i, v in enumerate(
            (1, _cpu(r), r["self_s"], r["children_s"], r["prefect_s"], r["wall_s"])
        ):
            f[i] += v
    total = sum(v[1] for v in by_file.values())
    print(f"{len(rows)} tests, {total:.0f} s CPU (self + reaped children + Prefect server)")
    print(f"{'file':60} {'n':>4} {'cpu':>7} {'self':>7} {'child':>7} {'prefect':>7} {'wall':>7}")
    for name, v in sorted(by_file.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"{name:60} {v[0]:4d} {v[1]:7.1f} {v[2]:7.1f} {v[3]:7.1f} {v[4]:7.1f} {v[5]:7.1f}")
    print("\ntop tests by CPU:")
    for r in sorted(rows, key=_cpu, reverse=True)[:top]:
        print(f"{_cpu(r):7.1f} {r['wall_s']:7.1f}  {r['test']}")


if __name__ == "__main__":
    summarise(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
