"""Multi-stage runs through the real flow on a real Dask LocalCluster (fake engine)."""

from __future__ import annotations

import json
import os
import signal

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from flows.run import synthgen_run
from synthgen.config import config_from_dict
from synthgen.cost.ledger import run_ledger
from synthgen.cost.report import format_text, load_summary
from synthgen.io.attempts import commit_markers
from synthgen.io.store import Store
from synthgen.stages.publish import read_manifest
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

    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
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
    manifest = read_manifest(store)
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

        def config(out, seconds_per_shard=0.8):
            return fake_config(
                str(out),
                shards__size=3,
                cluster__address=procs.address,
                model__fake__seconds_per_shard=seconds_per_shard,
                stages=STAGES,
            )

        # the reference needs no kill window: no simulated work (the fake engine's texts
        # depend on the prompts' seeds only, not on its sleep), ~10 s less
        ref = tmp_path / "ref"
        ref_cfg = write_config(tmp_path / "ref.yaml", config(ref, seconds_per_shard=0.0))
        code, _, text = run_cli(ref_cfg, tmp_path, "ref")
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
        assert not (out / "dataset" / "README.md").exists()

        code, summary, text = run_cli(cfg_path, tmp_path, "rerun")
        assert code == 0, text[-3000:]
        assert summary["status"] == "complete"
        for name in ("instruction", "response", "judge"):
            assert len(commit_markers(store, cfg.run_id, name)) == 8, name
    finally:
        procs.stop()

    cols = ["prompt_id", "instruction", "response", "judge"]
    got = ds.dataset(out / "dataset" / "data", format="parquet").to_table().select(cols).to_pylist()
    want = (
        ds.dataset(ref / "dataset" / "data", format="parquet").to_table().select(cols).to_pylist()
    )
    assert len({r["prompt_id"] for r in got}) == len(got) == 24
    assert sorted(got, key=lambda r: r["prompt_id"]) == sorted(want, key=lambda r: r["prompt_id"])


PREFERENCE = [
    {"name": "instruction", "prompt": "Write one question about: {{ prompt }}"},
    {"name": "response", "prompt": "{{ instruction }}", "sampling": {"n": 4}},
    {
        "name": "judge",
        "prompt": "Q: {{ instruction }}\nA: {{ response }}\nScore it.",
        "guided": {
            "json_schema": {
                "type": "object",
                "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
                "required": ["score"],
            }
        },
        "parse": "json",
        "keep_if": "judge.score >= 2",
    },
]


def test_preference_pairs_from_n_samples_and_a_guided_judge(tmp_path, prefect_api):
    out = tmp_path / "out"
    raw = fake_config(
        str(out),
        prompts={"type": "builtin", "limit": 12},
        stages=PREFERENCE,
        select={"strategy": "pairs", "by": "judge.score"},
    )
    res = synthgen_run(config=write_config(tmp_path / "c.yaml", raw))
    assert res["status"] == "complete"
    cfg = config_from_dict(raw)
    store = Store(cfg.output)
    judged = pa.concat_tables(
        store.read_table(m["file"]) for m in commit_markers(store, cfg.run_id, "judge").values()
    )
    # n=4: four rows per prompt reached the judge, each with its own sample_index
    assert judged.num_rows == 48
    per_prompt: dict[str, set[int]] = {}
    for r in judged.select(["prompt_id", "sample_index"]).to_pylist():
        per_prompt.setdefault(r["prompt_id"], set()).add(r["sample_index"])
    assert all(v == {0, 1, 2, 3} for v in per_prompt.values())
    assert judged.schema.field("judge.score").type == pa.int64()
    low = [r for r in judged.to_pylist() if r["judge.score"] < 2]
    assert all(r["drop_reason"] == "keep_if" for r in low)

    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    rows = table.to_pylist()
    assert rows and len({r["prompt_id"] for r in rows}) == len(rows)  # one pair per prompt
    for r in rows:
        assert r["chosen"] != r["rejected"]
        assert r["chosen_score"] > r["rejected_score"]
        samples = {
            j["sample_index"]: j
            for j in judged.to_pylist()
            if j["prompt_id"] == r["prompt_id"] and j["drop_reason"] is None
        }
        assert samples[r["chosen_sample_index"]]["response"] == r["chosen"]
        assert samples[r["rejected_sample_index"]]["response"] == r["rejected"]
        best = max(s["judge.score"] for s in samples.values())
        assert r["chosen_score"] == best
    manifest = read_manifest(store)
    assert manifest["rows"] == len(rows)
