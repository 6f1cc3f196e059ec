"""End to end: the real `synthgen run` command — Prefect flow, Dask LocalCluster, the bundled
SmolLM2 model on CPU through transformers — writing to a live S3 endpoint (moto server)
through s3fs; the dataset is read back with pyarrow.dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest
import s3fs

from tests.conftest import REPO
from tests.helpers import published_manifest

pytestmark = pytest.mark.slow


def run_cli(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthgen.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_synthgen_run_bundled_model_to_s3_and_resume(tmp_path, s3_server, s3_bucket):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)  # the command starts its own temporary Prefect server
    uri = f"s3://{s3_bucket}/synth"
    args = [
        "run",
        str(REPO / "configs" / "default.yaml"),
        "--set",
        f"output.uri={uri}",
        "--set",
        f"output.storage_options.endpoint_url={s3_server}",
        "--set",
        "prompts.limit=6",
        "--set",
        "shards.size=3",
        "--set",
        "sampling.max_new_tokens=12",
        # 12-token answers are cut by design here: keep them, run every other filter
        "--set",
        "clean.filters.truncated.enabled=false",
        "--summary-json",
        str(tmp_path / "s1.json"),
    ]
    first = run_cli(args, env, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "synthgen run summary" in first.stdout
    assert "shards" in first.stdout and "tokens/s" in first.stdout
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert s1["status"] == "complete" and s1["shards_generated"] == 2

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    table = ds.dataset(
        f"{s3_bucket}/synth/dataset/data", format="parquet", filesystem=fs
    ).to_table()
    manifest = published_manifest(f"s3://{s3_bucket}/synth", {"endpoint_url": s3_server})

    # only kept records are published, and the counts add up: generated = kept + dropped
    totals = manifest["totals"]
    assert totals["generated"] == 6 == totals["kept_records"] + totals["dropped"]
    assert totals["kept_records"] == table.num_rows == manifest["rows"]
    assert sum(totals["drop_counts"].values()) == totals["dropped"]
    assert s1["drop_counts"] == totals["drop_counts"] and s1["generated"] == 6
    assert "generated = " in first.stdout
    assert table.num_rows >= 1
    # one row per kept prompt, real text, provenance filled in
    ids = table["prompt_id"].to_pylist()
    assert len(ids) == len(set(ids)) == table.num_rows
    assert all(len(c.split()) >= 2 for c in table["completion"].to_pylist())
    assert set(table["model"].to_pylist()) == {"SmolLM2-135M-Instruct"}
    assert set(table["engine"].to_pylist()) == {"transformers"}
    assert all(t > 0 for t in table["completion_tokens"].to_pylist())
    assert all(t <= 12 for t in table["completion_tokens"].to_pylist())
    assert all(d.startswith("cpu") for d in table["device"].to_pylist())
    assert all(w for w in table["worker"].to_pylist())
    assert set(table["finish_reason"].to_pylist()) <= {"stop", "length"}
    seeds = table["seed"].to_pylist()
    assert len(set(seeds)) == table.num_rows
    # manifest totals equal the rows
    assert manifest["rows"] == table.num_rows
    assert sum(f["rows"] for f in manifest["files"]) == table.num_rows
    assert totals["kept_tokens"] == sum(table["completion_tokens"].to_pylist())
    assert manifest["totals"]["cost_usd"] > 0

    # resume: same run id, nothing regenerated, dataset unchanged. On the test session's
    # Prefect server (resuming reads the run's markers in storage, not Prefect's database):
    # saves the ~10 s start-up of a second temporary server
    args[-1] = str(tmp_path / "s2.json")
    second = run_cli(args, {**env, "PREFECT_API_URL": os.environ["PREFECT_API_URL"]}, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert s2["run_id"] == s1["run_id"]
    assert s2["shards_generated"] == 0 and s2["completion_tokens"] == 0
    manifest2 = published_manifest(f"s3://{s3_bucket}/synth", {"endpoint_url": s3_server})
    assert [f["sha256"] for f in manifest2["files"]] == [f["sha256"] for f in manifest["files"]]
