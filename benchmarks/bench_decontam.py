"""Decontamination throughput: documents/second/core checked against a benchmark set.

    python benchmarks/bench_decontam.py --items 10000 --docs 20000

A synthetic benchmark of `--items` items (40-120 words each) is written as JSONL and hashed
once (timed: what the flow does in the plan phase); then `--docs` LLM-answer-like documents
(20-300 words, 2 % carrying a planted benchmark passage) go through `DecontaminateStage`'s
matching (13-gram hashing + lookup) in batches of 500, as a worker does per shard. CPU time
(time.process_time) of this process, one core. Prints the planted copies found (recall) and
clean documents flagged (false positives).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (repository root on sys.path)
import numpy as np

from synthgen.config import DecontaminateConfig
from synthgen.stages.decontam import NgramIndex, build_index, contamination

_WORDS = (
    "river mountain engine garden window market letter silver yellow planet ocean bridge "
    "forest candle doctor island morning pencil rocket summer teacher violin winter travel "
    "number kitchen monkey orange puzzle rabbit school theory valley wonder answer basket "
    "camera desert energy flower guitar harbor jacket ladder memory nature people quartz "
    "system process result method example important different however because through "
    "the of and to with that a in is for it on"
).split()


def text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--ngram", type=int, default=13)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    items = [text(rng, 40, 120) for _ in range(args.items)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        path.write_text("\n".join(json.dumps({"text": t}) for t in items) + "\n")
        cfg = DecontaminateConfig(benchmarks=[{"path": str(path)}], ngram=args.ngram)
        t0 = time.process_time()
        table, info = build_index(cfg)
        index_s = time.process_time() - t0
    index = NgramIndex(
        table.column("hash").to_numpy(),
        table.column("benchmark").to_numpy().astype(np.int32),
        [b["name"] for b in info],
    )

    docs, planted = [], set()
    for i in range(args.docs):
        doc = text(rng, 20, 300)
        if rng.random() < 0.02:
            words = rng.choice(items).split()
            start = rng.randrange(0, len(words) - args.ngram)
            passage = " ".join(words[start : start + args.ngram + rng.randint(0, 10)])
            doc = f"{text(rng, 5, 50)} {passage} {text(rng, 5, 50)}"
            planted.add(i)
        docs.append(doc)

    t0 = time.process_time()
    flagged = []
    for b in range(0, len(docs), 500):
        batch = docs[b : b + 500]
        by = contamination({"completion": batch}, index, args.ngram)
        flagged += [b + i for i, name in enumerate(by) if name is not None]
    check_s = time.process_time() - t0
    found = set(flagged)
    print(f"machine: {_common.machine()}")
    print(f"benchmark: {args.items} items, {table.num_rows} distinct {args.ngram}-grams, "
          f"hashed in {index_s:.2f} s CPU ({args.items / index_s:,.0f} items/s)")  # fmt: skip
    print(
        f"checked {len(docs)} docs in {check_s:.2f} s CPU: {len(docs) / check_s:,.0f} docs/s/core"
    )
    print(f"planted {len(planted)}: found {len(found & planted)}; "
          f"false positives {len(found - planted)}")  # fmt: skip


if __name__ == "__main__":
    main()
