"""Multi-stage runs through the real flow on a real Dask LocalCluster (fake engine)."""

from __future__ import annotations

import json
import os
import signal

import pyarrow.dataset as ds
import pytest

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.cost.ledger import run_ledger
from synthgen.cost.report import format_text, load_summary
from synthgen.io.attempts import commit_markers
from synthgen.io.store import Store
from tests.crash_helpers import run_cli, start_cli, start_dask, wait_for
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

    # the manifest and the cost report split rows, tokens and drops per stage
    manifest = json.loads((out / "dataset" / "_manifest.json").read_text())
    per_stage = manifest["totals"]["per_stage"]
    assert list(per_stage) == ["instruction", "response", "judge"] or set(per_stage) == {
        "instruction",
        "response",
        "judge",
    }
    assert all(v["rows"] == 24 and v["completion_tokens"] > 0 for v in per_stage.values())
    cost_stages = {r["stage"]: r for r in manifest["cost"]["per_stage"]}
    assert set(cost_stages) == {"instruction", "response", "judge"}
    assert all(r["shards"] == 5 for r in cost_stages.values())
    report = load_summary(str(out / "runs" / cfg.run_id))
    assert "per stage" in format_text(report)

    # resume: nothing regenerated
    again = synthgen_run(config=cfg_path)
    assert again["shards_generated"] == 0


@pytest.mark.slow
def test_killed_in_its_second_stage_a_three_stage_run_resumes_to_the_same_dataset(
    tmp_path, prefect_api
):
    procs = start_dask(tmp_path)
    try:

        def config(out):
            return fake_config(
                str(out),
                shards__size=3,
                cluster__address=procs.address,
                model__fake__seconds_per_shard=0.8,
                stages=STAGES,
            )

        ref = tmp_path / "ref"
        code, _, text = run_cli(write_config(tmp_path / "ref.yaml", config(ref)), tmp_path, "ref")
        assert code == 0, text[-3000:]

        out = tmp_path / "out"
        data = config(out)
        cfg = config_from_dict(data)
        store = Store(cfg.output)
        cfg_path = write_config(tmp_path / "c.yaml", data)
        cli = start_cli(cfg_path, tmp_path / "killed.json", tmp_path / "killed.log")
        # killed once the second stage has committed shards and the third has not finished
        wait_for(
            lambda: len(commit_markers(store, cfg.run_id, "response")) >= 2,
            180,
            "two committed shards of the second stage",
        )
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=10)
        assert len(commit_markers(store, cfg.run_id, "judge")) < 8
        assert not (out / "dataset" / "_manifest.json").exists()

        code, summary, text = run_cli(cfg_path, tmp_path, "rerun")
        assert code == 0, text[-3000:]
        assert summary["status"] == "complete"
        for name in ("instruction", "response", "judge"):
            assert len(commit_markers(store, cfg.run_id, name)) == 8, name
    finally:
        procs.stop()

    cols = ["prompt_id", "instruction", "response", "judge"]
    got = ds.dataset(out / "dataset", format="parquet").to_table().select(cols).to_pylist()
    want = ds.dataset(ref / "dataset", format="parquet").to_table().select(cols).to_pylist()
    assert len({r["prompt_id"] for r in got}) == len(got) == 24
    assert sorted(got, key=lambda r: r["prompt_id"]) == sorted(want, key=lambda r: r["prompt_id"])
