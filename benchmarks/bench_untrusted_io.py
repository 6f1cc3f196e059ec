"""Per-shard storage time: trusted workers vs untrusted workers (issue 17 item 3).

Trusted path (what `run_shard` does once a shard is generated): write the shard file, its
ledger row, its commit marker, with the run's credentials. Untrusted path: the worker PUTs
the file to its staging key through a presigned URL (`GrantStore`); the flow makes the grant
(attempt marker, presigned URLs) and commits (`commit_staged`: read the staged object, check
size/sha256/schema/rows/prompt ids, write the shard file, ledger row and marker, delete the
staged object). Both against the same moto server in this process, same shards, interleaved.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_untrusted_io.py --shards 24 --rows 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import s3fs
from moto.server import ThreadedMotoServer

from flows.grants import Granter
from synthgen.config import config_from_dict
from synthgen.cost.ledger import Ledger
from synthgen.cost.prices import Price, ShardAttempt, ledger_row
from synthgen.io.attempts import next_attempt
from synthgen.io.grant import GrantStore
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.commit import commit_staged
from synthgen.stages.generate import _plain_row
from synthgen.stages.plan import read_shard_rows, write_plan
from tests.conftest import free_port


def _table(run_id: str, shard: str, ids: list[str], words: int) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "run_id": [run_id] * n,
            "shard_id": [shard] * n,
            "prompt_id": ids,
            "completion": [" ".join(["word"] * words) + f" {i}" for i in ids],
        }
    )


def _row(run_id: str, unit: str, attempt: int, n: int) -> dict:
    t = datetime.now(UTC)
    return ledger_row(
        ShardAttempt(
            run_id,
            unit,
            attempt,
            uuid.uuid4().hex[:12],
            "w",
            "h",
            "cpu",
            "fake",
            Price(0.1, "cpu", "table"),
            t,
            t + timedelta(seconds=1),
            1.0,
            n,
            10 * n,
            100 * n,
            n,
            100 * n,
            "succeeded",
        )  # fmt: skip
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=24)  # at most 24 (the builtin prompts)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--words", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}).mkdir("bench")
        results = {}
        for mode in ("trusted", "untrusted"):
            data = {
                "name": f"b-{mode}",
                "prompts": {"type": "builtin"},
                "shards": {"size": 1},  # 24 shards of one prompt
                "model": {"engine": "fake"},
                "output": {
                    "uri": f"s3://bench/{mode}",
                    "storage_options": {"endpoint_url": endpoint},
                },  # fmt: skip
                "clean": {"enabled": False},
            }
            cfg = config_from_dict(data)
            store = Store(cfg.output)
            plan = write_plan(cfg, store)
            results[mode] = (cfg, store, [s.shard_id for s in plan.shards])
        times: dict[str, list[float]] = {"trusted": [], "untrusted": []}
        worker_s: list[float] = []  # the untrusted worker's part: its PUT
        n = min(args.shards, len(results["trusted"][2]))
        granter = Granter(*results["untrusted"][:2])  # one per run, as in the flow
        for i in range(n):
            for mode in ("trusted", "untrusted"):  # interleaved: the same load on both
                cfg, store, shards = results[mode]
                shard = shards[i]
                ids = read_shard_rows(store, cfg.run_id, shard).column("prompt_id").to_pylist()
                ids = (ids * args.rows)[: args.rows]  # a shard of --rows rows (its prompt's)
                table = _table(cfg.run_id, shard, ids, args.words)
                layout = RunLayout(store, cfg.run_id).stage()
                row = _row(cfg.run_id, shard, 1, table.num_rows)
                started = time.perf_counter()
                if mode == "trusted":  # run_shard's storage calls, worker row left out
                    attempt = next_attempt(store, layout, shard)
                    store.write_json(layout.attempt(shard, attempt, "u"), {"shard_id": shard})
                    if store.exists(layout.commit(shard)):
                        raise RuntimeError(f"shard {shard}: committed already")
                    size, sha = store.write_table(layout.shard(shard), table)
                    Ledger(RunLayout(store, cfg.run_id)).write(row)
                    marker = {"shard_id": shard, "sha256": sha, "rows": table.num_rows}
                    store.create_bytes(layout.commit(shard), json.dumps(marker).encode())
                else:
                    grant = granter.grant(shard)  # flow: marker + URLs
                    put = time.perf_counter()
                    size, sha = GrantStore(grant).write_table(grant.staged, table)  # worker
                    worker_s.append(time.perf_counter() - put)
                    res = {
                        "unit": shard, "attempt": grant.attempt, "status": "staged",
                        "staged": grant.staged, "bytes": size, "sha256": sha,
                        "rows": table.num_rows, "ledger_row": _plain_row(row),
                    }  # fmt: skip
                    out = commit_staged(cfg, store, grant, res, "w")  # flow: check + commit
                    if out["status"] != "done":
                        raise RuntimeError(f"shard {shard}: {out['status']}")
                times[mode].append(time.perf_counter() - started)
        med = {m: statistics.median(v) for m, v in times.items()}
        for m, v in times.items():
            print(f"{m:10s} shards {len(v):4d}  median {med[m] * 1000:7.1f} ms  mean {statistics.mean(v) * 1000:7.1f} ms")  # fmt: skip
        w = statistics.median(worker_s)
        print(f"untrusted: the worker's part (its PUT) median {w * 1000:.1f} ms, the flow's part {(med['untrusted'] - w) * 1000:.1f} ms")  # fmt: skip
        print(f"untrusted/trusted per-shard storage time (median): {med['untrusted'] / med['trusted']:.2f}x")  # fmt: skip
        extra = med["untrusted"] - med["trusted"]
        for shard_s in (30.0, 120.0):
            print(f"extra storage time per shard: {extra * 1000:.0f} ms = {100 * extra / shard_s:.2f} % of a {shard_s:.0f} s GPU shard")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
