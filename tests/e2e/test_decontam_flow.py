"""Decontamination through the real flow (Prefect + LocalCluster, fake engine): a benchmark
holding one generated completion (and a paraphrase of another) drops exactly that record,
names the benchmark in the raw shard, and the manifest lists the benchmark checked."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from flows.run import synthgen_run
from synthgen.config import OutputConfig
from synthgen.io.store import Store
from synthgen.stages.publish import read_manifest
from tests.helpers import CLEAN_ONLY, fake_config, write_config

pytestmark = pytest.mark.slow


def test_a_benchmark_copy_is_dropped_and_the_manifest_lists_the_benchmark(tmp_path, prefect_api):
    plain = fake_config(str(tmp_path / "a"), shards__size=6, clean=CLEAN_ONLY)
    synthgen_run(config=write_config(tmp_path / "a.yaml", plain))
    rows = ds.dataset(tmp_path / "a" / "dataset" / "data", format="parquet").to_table().to_pylist()
    rows = sorted(rows, key=lambda r: r["prompt_id"])
    target, other = rows[3], rows[7]
    assert len(target["completion"].split()) >= 13
    words = other["completion"].split()
    paraphrase = " ".join(words[::2] + ["and", "so", "on"] + words[1::2])  # no 13-gram shared
    bench = tmp_path / "evals.jsonl"
    bench.write_text(
        json.dumps({"q": f"Quote: {target['completion'].upper()}!"})
        + "\n"
        + json.dumps({"q": paraphrase})
        + "\n"
    )

    data = fake_config(str(tmp_path / "b"), shards__size=6, clean=CLEAN_ONLY)
    data["clean"] = {
        **CLEAN_ONLY,
        "decontaminate": {"benchmarks": [{"path": str(bench), "field": "q"}]},
    }
    summary = synthgen_run(config=write_config(tmp_path / "b.yaml", data))
    assert summary["status"] == "complete"

    manifest = read_manifest(Store(OutputConfig(uri=str(tmp_path / "b"))))
    dc = manifest["decontamination"]
    assert dc["ngram"] == 13 and dc["columns"] == ["completion"]
    assert [b["name"] for b in dc["benchmarks"]] == ["evals"] and dc["benchmarks"][0]["items"] == 2
    assert manifest["totals"]["drop_counts"] == {"contaminated": 1}
    published = ds.dataset(tmp_path / "b" / "dataset" / "data", format="parquet").to_table()
    ids = set(published["prompt_id"].to_pylist())
    assert target["prompt_id"] not in ids and other["prompt_id"] in ids and len(ids) == 23
    assert "contaminated_by" not in published.column_names  # published columns unchanged

    run_dir = tmp_path / "b" / "runs" / manifest["run_id"]
    assert (run_dir / "decontam" / "ngrams.parquet").is_file()  # hashed once, by the flow
    raw = pa.concat_tables(
        [pq.read_table(p) for p in sorted((run_dir / "shards").glob("*.parquet"))]
    )
    flagged = [r for r in raw.to_pylist() if r["contaminated_by"] is not None]
    assert [(r["prompt_id"], r["contaminated_by"], r["drop_reason"]) for r in flagged] == [
        (target["prompt_id"], "evals", "contaminated")
    ]
