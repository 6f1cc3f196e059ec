"""Publish throughput: committed shards -> the published dataset folder (rows/s).

    .venv/bin/python benchmarks/bench_publish.py --rows 1000000 --shards 100 --format raw
    .venv/bin/python benchmarks/bench_publish.py --rows 200000 --shards 20 --s3

Builds `--shards` committed shards of short fake-engine-like rows (16-word completions, the
record schema, commit markers with their sha256, exactly what `run_shard` commits), then
times the publish as the flow runs it: `publish_shard` per shard (in `--workers` processes,
as the cluster's workers would) and `commit_publish` (manifest, card switch, garbage). The
shard building is not timed. `--s3`: the output is a bucket on a moto server in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

import _common  # noqa: F401 - puts the repository on sys.path
import pyarrow as pa

from synthgen.config import RunConfig, config_from_dict
from synthgen.io.layout import RunLayout
from synthgen.io.schema import RECORD_SCHEMA
from synthgen.io.store import Store
from synthgen.stages.publish import commit_publish, publish_id, publish_shard, shard_digests

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def _shard_table(cfg: RunConfig, shard_id: str, start: int, n: int) -> pa.Table:
    rng = random.Random(start)
    now = datetime.now(UTC)
    ids = [f"p{start + i:09d}" for i in range(n)]
    texts = [" ".join(rng.choice(WORDS) for _ in range(16)) for _ in range(n)]
    chat = [json.dumps([{"role": "user", "content": f"Say something {i}."}]) for i in ids]
    cols = {
        "run_id": [cfg.run_id] * n, "shard_id": [shard_id] * n, "prompt_id": ids,
        "prompt": [f"Say something {i}." for i in ids], "messages": chat, "completion": texts,
        "finish_reason": ["stop"] * n, "prompt_tokens": [8] * n, "completion_tokens": [16] * n,
        "model": ["fake"] * n, "engine": ["fake"] * n, "sampling": ["{}"] * n,
        "seed": list(range(start, start + n)), "worker": ["w"] * n, "device": ["cpu"] * n,
        "created_at": [now] * n, "meta": [None] * n, "error": [None] * n,
        "text_hash": [hash(t) & (2**63 - 1) for t in texts], "minhash": [None] * n,
        "drop_reason": [None] * n,
    }  # fmt: skip
    return pa.table(cols, schema=RECORD_SCHEMA)


def build(cfg: RunConfig, shards: int, rows: int) -> list[str]:
    store = Store(cfg.output)
    layout = RunLayout(store, cfg.run_id or "").stage()
    per = rows // shards
    ids = []
    for s in range(shards):
        sid = f"shard-{s:05d}"
        t = _shard_table(cfg, sid, s * per, per)
        size, sha = store.write_table(layout.shard(sid), t)
        marker = {"shard_id": sid, "file": layout.shard(sid), "bytes": size, "sha256": sha,
                  "rows": per, "result": {"prompts": per, "rows": per, "completion_tokens": 16 * per}}  # fmt: skip
        store.write_json(layout.commit(sid), marker)
        ids.append(sid)
    return ids


def _one(args: tuple[dict, str, str, int, int]) -> dict:
    config, sid, pid, i, n = args
    return publish_shard(config, sid, publish_id=pid, index=i, count=n)


def run(cfg: RunConfig, ids: list[str], workers: int) -> tuple[float, float, int]:
    store = Store(cfg.output)
    config = cfg.model_dump(mode="json")
    pid = publish_id(cfg, shard_digests(store, cfg.run_id or ""), None)
    t0 = time.perf_counter()
    jobs = [(config, sid, pid, i, len(ids)) for i, sid in enumerate(ids)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            shards = list(pool.map(_one, jobs))
    else:
        shards = [_one(j) for j in jobs]
    t1 = time.perf_counter()
    m = commit_publish(cfg, store, shards, pid)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, m["rows"]


def _moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--format", choices=["raw", "sft"], default="raw")
    ap.add_argument("--splits", type=float, default=0.0, help="fraction of a `test` split")
    ap.add_argument("--s3", action="store_true")
    a = ap.parse_args()
    server = None
    output: dict = {"format": a.format}
    if a.splits:
        output["splits"] = {"test": a.splits}
    if a.s3:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        server, endpoint = _moto()
        import s3fs

        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("bench")
        output.update(uri="s3://bench/out", storage_options={"endpoint_url": endpoint})
    else:
        output["uri"] = tempfile.mkdtemp(prefix="bench-publish-")
    cfg = config_from_dict({"name": "bench", "output": output, "clean": {"enabled": False}})
    print(f"building {a.shards} committed shards of {a.rows // a.shards} rows -> {output['uri']}")
    ids = build(cfg, a.shards, a.rows)
    files, switch, rows = run(cfg, ids, a.workers)
    total = files + switch
    print(
        f"{rows} rows, format {a.format}, {a.workers} workers, "
        f"{'moto S3' if a.s3 else 'local disk'}: shard files {files:.2f}s, switch "
        f"(manifest, card, garbage) {switch:.2f}s, total {total:.2f}s -> "
        f"{rows / total:,.0f} rows/s"
    )
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
