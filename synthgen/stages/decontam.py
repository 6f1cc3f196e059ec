"""Decontamination: drop records that share a word n-gram with a benchmark (evaluation) set.

Text is normalised as for dedup (`dedup.normalize.normalize`: NFKC, case-fold, collapsed
whitespace) and split into words (runs of letters and digits; punctuation is ignored); an n-gram is `ngram` consecutive words, hashed to 64 bits
(xxhash64 per word, a polynomial over the window, splitmix64). A record is contaminated when
one n-gram of a checked column is an n-gram of a benchmark item (GPT-3's 13-gram rule).
Benchmark items shorter than `ngram` words have no n-gram and are not checked (counted as
`too_short` in the manifest).

The flow hashes the benchmarks once, in the plan phase (`write_benchmark_index`), into
`runs/RUN_ID/decontam/ngrams.parquet` (sorted unique hashes + the first benchmark that has
each) and `ngrams.json` (names, counts); the shard stage (`DecontaminateStage`, on the
worker, before `clean`) loads that file once per process (cached by its path and version)
and flags matching rows `contaminated`, naming the benchmark in `contaminated_by`.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import threading
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from synthgen.config import CleanConfig, DecontaminateConfig, RunConfig
from synthgen.errors import PromptError
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.base import DROP_COLUMN, Stage
from synthgen.stages.dedup.minhash import splitmix64
from synthgen.stages.dedup.normalize import normalize

log = logging.getLogger(__name__)

REASON = "contaminated"
COLUMN = "contaminated_by"
_U64 = np.uint64
_WORD = re.compile(r"\w+")  # words of the normalised text, punctuation left out
_MUL = _U64(0x100000001B3)  # FNV-style odd multiplier of the window polynomial
INDEX_SCHEMA = pa.schema([pa.field("hash", pa.uint64()), pa.field("benchmark", pa.int32())])


# ---------------------------------------------------------------------------- hashing
def ngram_hashes(text: str, n: int) -> np.ndarray:
    """The 64-bit hashes of the word n-grams of `text` (normalised); empty when it has
    fewer than n words."""
    words = _WORD.findall(normalize(text)) if text else []
    if len(words) < n:
        return np.zeros(0, _U64)
    w = np.fromiter(
        (xxhash.xxh64_intdigest(x.encode("utf-8")) for x in words), dtype=_U64, count=len(words)
    )
    m = len(words) - n + 1
    acc = np.zeros(m, _U64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _MUL + w[k : k + m]
    return splitmix64(acc ^ _U64(n))


# ---------------------------------------------------------------------------- the flow side
def _read_items(path: str, field: str) -> list[str]:
    """The text of every item of a JSONL or Parquet benchmark file."""
    with fsspec.open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".parquet"):
        table = pq.read_table(io.BytesIO(data))
        if field not in table.column_names:
            raise PromptError(f"{path}: no column {field!r} (clean.decontaminate.benchmarks)")
        return [str(t) for t in table.column(field).to_pylist() if t is not None]
    out = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise PromptError(f"{path}:{lineno}: not JSON ({exc})") from None
        if not isinstance(item, dict) or field not in item:
            raise PromptError(f"{path}:{lineno}: no field {field!r} (clean.decontaminate)")
        if item[field] is not None:
            out.append(str(item[field]))
    return out


def build_index(cfg: DecontaminateConfig) -> tuple[pa.Table, list[dict[str, Any]]]:
    """(sorted unique n-gram hashes with their first benchmark's index, per-benchmark info)."""
    hashes, owners, info = [], [], []
    for i, bench in enumerate(cfg.benchmarks):
        items = _read_items(bench.path, bench.field)
        grams = [ngram_hashes(t, cfg.ngram) for t in items]
        short = sum(1 for g in grams if len(g) == 0)
        flat = np.concatenate(grams) if grams else np.zeros(0, _U64)
        hashes.append(flat)
        owners.append(np.full(len(flat), i, np.int32))
        info.append({"name": bench.label, "path": bench.path, "field": bench.field,
                     "items": len(items), "too_short": short, "ngrams": int(len(np.unique(flat)))})  # fmt: skip
    h = np.concatenate(hashes) if hashes else np.zeros(0, _U64)
    o = np.concatenate(owners) if owners else np.zeros(0, np.int32)
    h, first = np.unique(h, return_index=True)  # sorted; the first benchmark holding each
    table = pa.table([pa.array(h, pa.uint64()), pa.array(o[first], pa.int32())], INDEX_SCHEMA)
    return table, info


def index_paths(store: Store, run_id: str) -> tuple[str, str]:
    base = posixpath.join(RunLayout(store, run_id).root, "decontam")
    return posixpath.join(base, "ngrams.parquet"), posixpath.join(base, "ngrams.json")


def write_benchmark_index(cfg: RunConfig, store: Store) -> dict[str, Any] | None:
    """Hash the benchmarks of `clean.decontaminate` once per run (the flow's plan phase);
    returns what the manifest records (None when there is nothing to check). An index the
    run already wrote for the same settings is kept."""
    dc = cfg.clean.decontaminate
    if not (cfg.clean.enabled and dc.enabled):
        return None
    table_path, info_path = index_paths(store, cfg.run_id or "")
    want = {"ngram": dc.ngram, "columns": list(dc.columns),
            "benchmarks": [b.model_dump(mode="json") for b in dc.benchmarks]}  # fmt: skip
    old = store.read_optional(info_path)
    if old is not None and store.exists(table_path):
        doc = json.loads(old)
        if doc.get("settings") == want:
            return dict(doc["summary"])
    table, info = build_index(dc)
    store.write_table(table_path, table)
    summary = {"ngram": dc.ngram, "columns": list(dc.columns), "benchmarks": info,
               "ngrams": table.num_rows}  # fmt: skip
    store.write_json(info_path, {"settings": want, "summary": summary})
    return summary


def benchmark_summary(cfg: RunConfig, store: Store) -> dict[str, Any] | None:
    """What `write_benchmark_index` recorded for the run (for the manifest), or None."""
    if not (cfg.clean.enabled and cfg.clean.decontaminate.enabled):
        return None
    raw = store.read_optional(index_paths(store, cfg.run_id or "")[1])
    return None if raw is None else dict(json.loads(raw)["summary"])


# ---------------------------------------------------------------------------- the worker side
@dataclass(frozen=True)
class NgramIndex:
    hashes: np.ndarray  # sorted unique uint64
    owner: np.ndarray  # int32 index into names
    names: list[str]

    def match(self, grams: np.ndarray) -> int | None:
        """Index of the benchmark of the first matching n-gram, or None."""
        if len(grams) == 0 or len(self.hashes) == 0:
            return None
        pos = np.searchsorted(self.hashes, grams)
        pos[pos == len(self.hashes)] = 0
        hit = np.flatnonzero(self.hashes[pos] == grams)
        return int(self.owner[pos[hit[0]]]) if len(hit) else None


_cache: dict[tuple[str, str], NgramIndex] = {}
_lock = threading.Lock()


def load_index(store: Store, run_id: str) -> NgramIndex:
    """The run's n-gram index, read once per process (keyed by its path and the version of
    the stored file, so a rewritten index is read again)."""
    table_path, info_path = index_paths(store, run_id)
    if hasattr(store, "version"):  # an untrusted worker's GrantStore: the grant says
        version = store.version(table_path)
    else:
        version = str(store.retry(lambda: store.fs.ukey(table_path), f"checking {table_path}"))
    key = (store.location(table_path), version)
    with _lock:
        if key in _cache:
            return _cache[key]
    doc = store.read_json(info_path)
    table = store.read_table(table_path)
    index = NgramIndex(
        table.column("hash").to_numpy().astype(_U64, copy=False),
        table.column("benchmark").to_numpy().astype(np.int32, copy=False),
        [b["name"] for b in doc["summary"]["benchmarks"]],
    )
    with _lock:
        _cache.clear()  # one run's index per process at a time
        _cache[key] = index
    return index


def contamination(
    texts: dict[str, list[str | None]], index: NgramIndex, n: int
) -> list[str | None]:
    """Per row, the name of the benchmark it overlaps (first checked column that matches)."""
    rows = len(next(iter(texts.values()))) if texts else 0
    out: list[str | None] = [None] * rows
    for values in texts.values():
        for i, text in enumerate(values):
            if out[i] is None and text:
                hit = index.match(ngram_hashes(text, n))
                if hit is not None:
                    out[i] = index.names[hit]
    return out


class DecontaminateStage(Stage):
    """Per shard, on the worker before `clean`: rows sharing a word n-gram with a benchmark
    are flagged `contaminated` (unless already dropped) and get the benchmark's name in
    `contaminated_by` (a column of the raw shard only)."""

    name = "decontaminate"

    def __init__(self, cfg: CleanConfig, store: Store, run_id: str) -> None:
        self.cfg = cfg.decontaminate
        self.store = store
        self.run_id = run_id

    def process(self, rows: pa.Table) -> pa.Table:
        index = load_index(self.store, self.run_id)
        texts = {c: rows.column(c).to_pylist() for c in self.cfg.columns}
        by = contamination(texts, index, self.cfg.ngram)
        reasons = rows.column(DROP_COLUMN).to_pylist()
        new = [REASON if (r is None and b is not None) else r for r, b in zip(reasons, by, strict=True)]  # fmt: skip
        idx = rows.schema.get_field_index(DROP_COLUMN)
        rows = rows.set_column(idx, rows.schema.field(idx), pa.array(new, pa.string()))
        return rows.append_column(pa.field(COLUMN, pa.string()), pa.array(by, pa.string()))


def decontam_stages(cfg: RunConfig, store: Any = None) -> list[Stage]:
    """[DecontaminateStage] when the run checks benchmarks, else []. `store`: where the
    index is read (default: the run's output; an untrusted worker's `GrantStore`)."""
    if not (cfg.clean.enabled and cfg.clean.decontaminate.enabled):
        return []
    return [DecontaminateStage(cfg.clean, store or Store(cfg.output), cfg.run_id or "")]


def contaminated_count(table: pa.Table) -> int:
    if COLUMN not in table.column_names:
        return 0
    return int(pc.sum(pc.is_valid(table.column(COLUMN))).as_py() or 0)


__all__ = [
    "COLUMN",
    "REASON",
    "DecontaminateStage",
    "NgramIndex",
    "benchmark_summary",
    "build_index",
    "contamination",
    "decontam_stages",
    "load_index",
    "ngram_hashes",
    "write_benchmark_index",
]
