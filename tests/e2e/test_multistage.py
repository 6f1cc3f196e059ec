"""Multi-stage runs through the real flow on a real Dask LocalCluster (fake engine)."""

from __future__ import annotations

import json

import pyarrow.dataset as ds

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.cost.ledger import run_ledger
from synthgen.io.attempts import commit_markers
from synthgen.io.store import Store
from tests.helpers import fake_config, write_config

STAGES = [
    {"name": "instruction", "prompt": "Write one question about: {{ prompt }}"},
    {"name": "response", "system": "You are a teacher.", "prompt": "{{ instruction }}"},
    {"name": "judge", "prompt": "Q: {{ instruction }}\nA: {{ response }}\nRate 1-10."},
]


def test_three_stages_each_committed_and_costed_and_chained(tmp_path, prefect_api):
    out = tmp_path / "out"
    raw = fake_config(str(out), cluster__n_workers=2, stages=STAGES)
    cfg_path = write_config(tmp_path / "c.yaml", raw)
    res = synthgen_run(config=cfg_path)
    assert res["status"] == "complete"
    cfg = config_from_dict(raw)
    store = Store(cfg.output)
    # every stage has its own committed shards (5 shards each)
    for name in ("instruction", "response", "judge"):
        markers = commit_markers(store, cfg.run_id, name)
        assert len(markers) == 5, name
        assert all(m["stage"] == name for m in markers.values())
    # and its own ledger rows, keyed STAGE:SHARD
    rows = run_ledger(cfg.output, cfg.run_id).rows().to_pylist()
    stages = {r["shard_id"].split(":")[0] for r in rows if r["status"] == "succeeded"}
    assert stages == {"instruction", "response", "judge"}
    assert sum(1 for r in rows if r["status"] == "succeeded") == 15

    table = ds.dataset(out / "dataset", format="parquet").to_table()
    assert table.num_rows == 24
    assert len(set(table["prompt_id"].to_pylist())) == 24
    for row in table.to_pylist():
        # each stage read the previous stage's text through its template
        judge_chat = json.loads(row["judge.messages"])
        assert row["instruction"] in judge_chat[-1]["content"]
        assert row["response"] in judge_chat[-1]["content"]
        assert json.loads(row["response.messages"])[-1]["content"] == row["instruction"]
        assert row["completion"] == row["judge"]

    # resume: nothing regenerated
    again = synthgen_run(config=cfg_path)
    assert again["shards_generated"] == 0
