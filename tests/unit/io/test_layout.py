"""The run layout: every path of a run and of the dataset, named in one module.

The default stage's paths are the ones every run has written so far (byte for byte), so
runs written before the layout existed still resume; other stages get their own subtree."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthgen.config import OutputConfig, RunConfig
from synthgen.cost.ledger import Ledger
from synthgen.io.attempts import AttemptName, commit_markers
from synthgen.io.layout import (
    DATASET_DIR,
    DEDUP_INDEX_DIR,
    MANIFEST,
    DatasetLayout,
    RunLayout,
    safe_key,
)
from synthgen.io.store import Store
from synthgen.stages import publish
from synthgen.stages.dedup import index as dedup_index
from synthgen.stages.dedup import stage as dedup_stage
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests.helpers import fake_config


def test_default_stage_paths_are_the_ones_runs_already_have(tmp_path: Path) -> None:
    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    run = RunLayout(store, "r1")
    stage = run.stage()
    base = f"{tmp_path}/out/runs/r1"
    assert run.root == base
    assert run.url() == base  # local: no protocol
    assert run.plan_index == f"{base}/plan/plan.json"
    assert run.plan_prompts("shard-00003") == f"{base}/plan/prompts/shard-00003.parquet"
    assert run.rejects == f"{base}/rejects.jsonl"
    assert run.lease == f"{base}/_lease.json"
    assert run.budget == f"{base}/budget.json"
    assert run.dedup_drops == f"{base}/dedup/drops.parquet"
    assert run.worker("tcp://10.0.0.1:3/x") == f"{base}/workers/tcp_10.0.0.1_3_x.parquet"
    assert (run.report_png, run.report_md) == (f"{base}/report.png", f"{base}/report.md")
    assert stage.shard("shard-00003") == f"{base}/shards/shard-00003.parquet"
    assert stage.commit("shard-00003") == f"{base}/_commits/shard-00003.json"
    assert stage.attempt("shard-00003", 2, "ab12") == f"{base}/attempts/shard-00003.2.ab12.json"
    assert stage.ledger_attempt("s 1", 2, "0123456789abcdef") == (
        f"{base}/ledger/s_1-attempt-2-0123456789ab.parquet"
    )
    assert stage.ledger_verification("s1", 2, "c1") == f"{base}/ledger/s1-verify-a2-c1.parquet"
    assert stage.verify_record("s1", 2) == f"{base}/verify/s1.a2.json"
    assert stage.flagged == f"{base}/verify/flagged.json"
    assert stage.quarantined("s1", 2, "parquet") == f"{base}/quarantine/s1.a2.parquet"
    assert dedup_stage.drops_path(store, "r1") == run.dedup_drops
    # path arithmetic only: nothing was created
    assert not (tmp_path / "out").exists()


def test_dataset_paths_are_defined_once(tmp_path: Path) -> None:
    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    dataset = DatasetLayout(store)
    assert dataset.dir == f"{tmp_path}/out/dataset"
    assert dataset.card == f"{tmp_path}/out/dataset/README.md"
    assert dataset.data_dir == f"{tmp_path}/out/dataset/data"
    assert dataset.data_name("train", 3, 40, "abc") == "data/train-00003-of-00040-abc.parquet"
    # nothing but the card and the data inside the dataset folder: no data glob reaches the
    # dedup index or the manifests
    assert dataset.dedup_index == f"{tmp_path}/out/dedup_index"
    run = RunLayout(store, "r")
    assert run.publish_manifest("abc") == f"{tmp_path}/out/runs/r/publish/abc/{MANIFEST}"
    assert run.dedup_drops_shard("s1") == f"{tmp_path}/out/runs/r/dedup/drops/s1.parquet"
    assert run.dataset.card == dataset.card
    assert dataset.dir.endswith("/" + DATASET_DIR)
    assert dedup_index.INDEX_DIR == DEDUP_INDEX_DIR
    # the stages name no dataset paths of their own: they use the layout
    for module in (publish, dedup_stage):
        assert not hasattr(module, "DATASET_DIR") and not hasattr(module, "MANIFEST")


def test_other_stages_get_their_own_shards_commits_and_ledger(tmp_path: Path) -> None:
    store = Store(OutputConfig(uri=str(tmp_path / "out")))
    run = RunLayout(store, "r1")
    judge = run.stage("judge")
    base = f"{tmp_path}/out/runs/r1/stages/judge"
    assert judge.commit("shard-00000") == f"{base}/_commits/shard-00000.json"
    assert judge.shard("shard-00000") == f"{base}/shards/shard-00000.parquet"
    assert judge.attempts_dir == f"{base}/attempts"
    assert (
        judge.ledger_attempt("shard-00000", 1, "a")
        == f"{base}/ledger/shard-00000-attempt-1-a.parquet"
    )
    assert judge.commit("shard-00000") != run.stage().commit("shard-00000")
    assert run.stage("generate").commit("x") == run.stage().commit("x")
    for bad in ("", "../x", "Judge", "a/b"):
        with pytest.raises(ValueError, match="stage name"):
            run.stage(bad)


def test_object_store_locations_carry_the_protocol() -> None:
    store = Store(OutputConfig(uri="memory://bucket/pre"))
    run = RunLayout(store, "r9")
    assert run.root == "/bucket/pre/runs/r9"
    # fsspec's memory filesystem spells its root with a leading slash
    assert run.url() == "memory:///bucket/pre/runs/r9" == store.url("runs", "r9")
    assert run.url(run.lease) == "memory:///bucket/pre/runs/r9/_lease.json"
    assert run.dataset.url() == "memory:///bucket/pre/dataset" == store.url("dataset")


def test_at_root_names_the_run_by_its_directory(tmp_path: Path) -> None:
    store = Store(OutputConfig(uri=str(tmp_path / "out" / "runs" / "r7")))
    run = RunLayout.at_root(store)
    assert run.run_id == "r7"
    assert run.root == str(tmp_path / "out" / "runs" / "r7")
    assert run.stage().ledger_dir == f"{run.root}/ledger"


def test_safe_key() -> None:
    assert safe_key("tcp://h:1") == "tcp_h_1"
    assert safe_key("///") == "_"


def test_every_file_a_shard_writes_is_named_by_the_layout(tmp_path: Path) -> None:
    """Plan one run and generate one shard; the files on disk are exactly the layout's."""
    cfg = RunConfig.model_validate(fake_config(str(tmp_path / "out"), shards__size=4))
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    sid = plan.shards[0].shard_id
    result = run_shard(ShardTask(cfg.model_dump(mode="json"), sid))
    assert result.status == "done"

    run = RunLayout(store, cfg.run_id or "")
    stage = run.stage()
    attempts = store.ls(stage.attempts_dir)
    assert len(attempts) == 1
    parsed = AttemptName.parse(attempts[0])
    assert parsed is not None and (parsed.shard_id, parsed.attempt) == (sid, 1)
    ledger = Ledger(run)
    (row,) = ledger.rows(sid).to_pylist()
    (worker,) = ledger.workers().to_pylist()
    expected = {
        run.plan_index,
        *(run.plan_prompts(s.shard_id) for s in plan.shards),
        stage.shard(sid),
        stage.commit(sid),
        f"{stage.attempts_dir}/{attempts[0]}",
        stage.ledger_attempt(sid, 1, row["attempt_id"]),
        run.worker(worker["worker_id"]),
    }
    written = {str(p) for p in Path(run.root).rglob("*") if p.is_file()}
    assert written == expected
    assert list(commit_markers(store, run.run_id)) == [sid]
