"""Dask worker preload for benchmarks/bench_worker_cpu.py: the CPU time of the worker thread
(`time.thread_time`, so not the time spent waiting for the GIL, the disk or the other
processes of a loaded machine) and the wall time per call of the functions below, written
as JSON at teardown. Generate and publish tasks are told apart by the Prefect task's name."""

import atexit
import importlib
import json
import os
import threading
import time

OUT = os.environ.get("SYNTHGEN_BENCH_CPU_DIR", ".")
TAG = os.environ.get("SYNTHGEN_BENCH_CPU_TAG", "x")
_acc = {}
_lock = threading.Lock()
_tl = threading.local()

TARGETS = [
    ("flows.task_runner", None, "run_prefect_task"),
    ("flows._fast_context", None, "materialize"),
    ("synthgen.config.secrets", None, "protect"),
    ("synthgen.stages.generate", None, "run_shard"),
    ("synthgen.stages.publish", None, "publish_shard"),
    ("synthgen.io.store", "Store", "ls"),
    ("synthgen.io.store", "Store", "write_bytes"),
    ("synthgen.io.store", "Store", "create_bytes"),
    ("synthgen.io.store", "Store", "exists"),
    ("synthgen.io.store", "Store", "read_bytes"),
    ("synthgen.io.store", "Store", "__init__"),
    ("synthgen.cost.meter", "AttemptMeter", "finish_in"),
    ("synthgen.cost.ledger", None, "_parquet"),
    ("synthgen.stages.base", None, "run_stages"),
    ("prefect.client.orchestration", None, "get_client"),
    ("prefect.task_engine", None, "run_task_sync"),
]


def _wrap(owner, name, label):
    orig = getattr(owner, name)
    base_label = label

    def w(*a, **k):
        label = base_label
        if name == "run_prefect_task":
            label = f"{base_label}[{getattr(a[0] if a else k.get('task'), 'name', '?')}]"
        depth = getattr(_tl, "d", {})
        _tl.d = depth
        if depth.get(label):  # recursion: count the outer call only
            return orig(*a, **k)
        depth[label] = True
        t0 = time.thread_time()
        w0 = time.perf_counter()
        try:
            return orig(*a, **k)
        finally:
            depth[label] = False
            dt = time.thread_time() - t0
            dw = time.perf_counter() - w0
            with _lock:
                c = _acc.setdefault(label, [0, 0.0, 0.0])
                c[0] += 1
                c[1] += dt
                c[2] += dw

    setattr(owner, name, w)


def _dump():
    with open(f"{OUT}/worker-cpu-{TAG}-{os.getpid()}.json", "w") as fh:
        json.dump(_acc, fh, indent=1)


def dask_setup(worker):
    for mod, cls, name in TARGETS:
        m = importlib.import_module(mod)
        owner = getattr(m, cls) if cls else m
        _wrap(owner, name, f"{mod}.{cls + '.' if cls else ''}{name}")
    # the task function refers to run_shard through flows.run's namespace
    import flows.run
    import synthgen.stages.generate as g

    flows.run.run_shard = g.run_shard
    import prefect.client.orchestration as pco
    import prefect.context as pc

    pc.get_client = pco.get_client
    atexit.register(_dump)


def dask_teardown(worker):
    _dump()
