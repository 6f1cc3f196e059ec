"""The shipped multi-stage recipes (configs/examples/) run to completion on the embedded
default: the transformers engine with the bundled model, a LocalCluster, local Parquet.
Two prompts each and short completions (every stage's `max_new_tokens` capped at 12), to keep
CI short; the full recipes are the same code with more prompts. The four recipes run on one
LocalCluster worker process started once for the module (`cluster.address`): the bundled
model is loaded once, not once per recipe. (The run that starts its own LocalCluster is
tests/e2e/test_preserved.py's embedded default.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

from flows.run import synthgen_run
from synthgen.config import load_config
from synthgen.io.attempts import commit_markers
from synthgen.io.store import Store
from synthgen.stages.publish import read_manifest
from tests.helpers import local_cluster, write_config

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def cluster_address() -> Iterator[str]:
    """One LocalCluster worker process (one thread, as the recipes' `cluster.n_workers: 1`)
    for the module's runs: its engine cache keeps the bundled model across them."""
    with local_cluster(1) as (cluster, _client):
        yield cluster.scheduler_address


def _short(name: str, tmp_path: Path) -> str:
    """The shipped recipe with every stage's own `sampling.max_new_tokens` capped at
    MAX_NEW_TOKENS (`--set sampling.max_new_tokens` sets only the run-wide default)."""
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    for stage in data.get("stages", []):
        sampling = stage.get("sampling") or {}
        if "max_new_tokens" in sampling:
            sampling["max_new_tokens"] = min(sampling["max_new_tokens"], MAX_NEW_TOKENS)
    return write_config(tmp_path / f"{name}.yaml", data)


def _run(name: str, tmp_path: Path, address: str, *more: str) -> tuple[dict, object]:
    overrides = [
        f"output.uri={tmp_path / 'out'}",
        f"cluster.address={address}",
        "prompts.count=2",
        f"sampling.max_new_tokens={MAX_NEW_TOKENS}",
        # 12-token texts fail the Gopher filters (too few stop words): off for the test only
        "clean.filters.gopher_quality.enabled=false",
        "clean.filters.gopher_repetition.enabled=false",
        *more,
    ]
    path = _short(name, tmp_path)
    res = synthgen_run(config=path, overrides=overrides)
    return res, load_config(path, overrides)


def _stage_rows(cfg, stage: str) -> pa.Table:
    store = Store(cfg.output)
    markers = commit_markers(store, cfg.run_id, stage)
    return pa.concat_tables(store.read_table(m["file"]) for m in markers.values())


def _published(tmp_path: Path, cfg) -> pa.Table:
    manifest = read_manifest(Store(cfg.output))
    data = tmp_path / "out" / "dataset" / "data"
    table = ds.dataset(data, format="parquet").to_table() if data.exists() else None
    rows = 0 if table is None else table.num_rows
    assert manifest is not None and manifest["rows"] == rows
    return table


@pytest.mark.parametrize("name", ["sft-judge", "preference", "extraction", "textbook"])
def test_example_recipe_runs_on_the_embedded_default(name, tmp_path, prefect_api, cluster_address):
    res, cfg = _run(name, tmp_path, cluster_address)
    assert res["status"] == "complete", res
    assert cfg.model.engine == "transformers"
    table = _published(tmp_path, cfg)
    if name in ("sft-judge", "preference"):
        judged = _stage_rows(cfg, "judge")
        # the JSON judge is decoded under its schema: every row has a score in 1..10
        scores = judged.column("judge.score").to_pylist()
        assert judged.schema.field("judge.score").type == pa.int64()
        assert scores and all(1 <= s <= 10 for s in scores), scores
        assert "schema_invalid" not in judged.column("drop_reason").to_pylist()
    if name == "preference":
        assert _stage_rows(cfg, "response").num_rows == 2 * 4  # n=4 per instruction
        if table is not None and table.num_rows:
            assert {"prompt", "chosen", "rejected"} <= set(table.column_names)
            for r in table.to_pylist():
                assert r["chosen"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user"
    if name == "extraction":
        rows = _stage_rows(cfg, "extract").to_pylist()
        assert {r["extract.sentiment"] for r in rows} <= {"positive", "negative", "neutral"}
        assert all(json.loads(r["extract"])["category"] == r["extract.category"] for r in rows)
    if name in ("sft-judge", "textbook") and table is not None and table.num_rows:
        chat = table.column("messages").to_pylist()[0]
        assert [m["role"] for m in chat][-2:] == ["user", "assistant"]
    # every stage ran over both prompts (the clean stage's filters may drop short texts)
    for stage in cfg.stages:
        assert _stage_rows(cfg, stage.name).num_rows >= 1, stage.name
