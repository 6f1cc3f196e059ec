"""The stage contract: rows in, rows out; the base counts rows, time and drop reasons."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synthgen.config import config_from_dict
from synthgen.engines.fake import FakeEngine
from synthgen.stages.base import Stage, StageStats, merged_drops, run_stages
from synthgen.stages.clean import CleanStage, clean_shard
from synthgen.stages.generate import GenerateStage
from synthgen.stages.pipeline import run_stage_list
from synthgen.stages.plan import PlanStage, PromptsStage, plan_table
from synthgen.stages.publish import PublishStage, RunDedupMarks
from synthgen.stages.sharding import make_shards
from tests.helpers import fake_config


class FlagShort(Stage):
    name = "flag_short"

    def process(self, rows: pa.Table) -> pa.Table:
        texts = rows.column("text").to_pylist()
        old = rows.column("drop_reason").to_pylist()
        new = [o or ("too_short" if len(t) < 3 else None) for t, o in zip(texts, old, strict=True)]
        return rows.set_column(1, "drop_reason", pa.array(new, pa.string()))


class RemoveFlagged(Stage):
    name = "remove"

    def process(self, rows: pa.Table) -> pa.Table:
        return rows.filter(pa.compute.is_null(rows["drop_reason"]))


class RemoveX(Stage):
    name = "remove_x"

    def process(self, rows: pa.Table) -> pa.Table:
        return rows.filter(pa.compute.not_equal(rows["text"], "x-removed"))

    def removed_reason(self, rows_in: pa.Table, rows_out: pa.Table) -> str | None:
        return "x_rule"


def _rows(texts: list[str], reasons: list[str | None] | None = None) -> pa.Table:
    return pa.table(
        {"text": texts, "drop_reason": pa.array(reasons or [None] * len(texts), pa.string())}
    )


def test_the_base_counts_reasons_the_stage_set_and_not_earlier_ones() -> None:
    rows = _rows(["ok fine", "no", "hi", "earlier"], [None, None, None, "dup"])
    out, stats = FlagShort()(rows)
    assert out.column("drop_reason").to_pylist() == [None, "too_short", "too_short", "dup"]
    assert (stats.stage, stats.rows_in, stats.rows_out) == ("flag_short", 4, 4)
    assert stats.drops == {"too_short": 2}  # "dup" was an earlier stage's decision
    assert stats.seconds >= 0


def test_removed_rows_count_only_with_a_reason() -> None:
    rows = _rows(["a", "x-removed", "b"], [None, None, "dup"])
    out, stats = RemoveFlagged()(rows)
    assert out.num_rows == 2 and stats.drops == {}  # flagged earlier: counted there
    out, stats = RemoveX()(rows)
    assert out.num_rows == 2 and stats.drops == {"x_rule": 1}


def test_run_stages_chains_and_merges_and_refuses_run_scope_stages() -> None:
    rows = _rows(["ok fine", "no", "x-removed"])
    out, stats = run_stages([FlagShort(), RemoveX()], rows)
    assert [s.stage for s in stats] == ["flag_short", "remove_x"]
    assert out.num_rows == 2
    assert merged_drops(stats) == {"too_short": 1, "x_rule": 1}
    assert merged_drops([StageStats("a", drops={"r": 1}), StageStats("b", drops={"r": 2})]) == {
        "r": 3
    }
    cfg = config_from_dict(fake_config("/tmp/unused"))
    with pytest.raises(ValueError, match="works on the whole run"):
        run_stages([PlanStage(cfg)], rows)
    with pytest.raises(NotImplementedError):
        Stage().process(rows)


def test_generate_then_clean_counts_equal_the_clean_step_alone(tmp_path) -> None:
    cfg = config_from_dict(
        fake_config(str(tmp_path), clean={"enabled": True}, model__max_model_len=64)
    )
    source = PromptsStage(cfg)
    prompts, pstats = source(plan_table([]))
    assert pstats.rows_out == prompts.num_rows == 24
    # one over-long prompt: the engine refuses it, the generate stage flags it
    long = prompts.slice(0, 3).to_pylist()
    long[0]["messages"] = '[{"role": "user", "content": "' + "word " * 80 + '"}]'
    rows = pa.Table.from_pylist(long, schema=prompts.schema)
    generate = GenerateStage(cfg, "shard-00000", FakeEngine(cfg.model), "w1")
    out, stats = run_stages([generate, CleanStage(cfg.clean)], rows)
    assert [s.stage for s in stats] == ["generate", "clean"]
    assert stats[0].drops == {"rejected_prompt": 1}
    assert len(generate.completions) == 3
    _, expected = clean_shard(generate(rows)[0], cfg.clean)
    assert merged_drops(stats) == expected
    assert sum(expected.values()) >= 1


def test_plan_stage_cuts_the_same_shards_as_make_shards(tmp_path) -> None:
    cfg = config_from_dict(fake_config(str(tmp_path), shards__size=5))
    source = PromptsStage(cfg)
    rows, _ = source(plan_table([]))
    planner = PlanStage(cfg)
    out, stats = planner(rows)
    assert out.equals(rows) and stats.drops == {}
    assert planner.shards == make_shards(source.prompt_set.records, 5)


def test_publish_keeps_unflagged_rows_after_run_wide_marks() -> None:
    from synthgen.io.schema import DATASET_COLUMNS, RECORD_SCHEMA

    base = {name: None for name in RECORD_SCHEMA.names}
    rows = pa.Table.from_pylist(
        [
            {**base, "prompt_id": "a", "completion": "one", "completion_tokens": 1},
            {**base, "prompt_id": "b", "completion": "two", "completion_tokens": 1},
            {**base, "prompt_id": "c", "completion": "three", "drop_reason": "too_few_words"},
        ],
        schema=RECORD_SCHEMA,
    )
    marked, mstats = RunDedupMarks({"b": "near_duplicate_cross"})(rows)
    assert mstats.drops == {"near_duplicate_cross": 1}
    kept, pstats = PublishStage()(marked)
    assert kept.column("prompt_id").to_pylist() == ["a"]
    assert kept.column_names == list(DATASET_COLUMNS)
    assert pstats.drops == {}  # every removed row was flagged (and counted) earlier


def test_the_run_stage_list_follows_the_config(tmp_path) -> None:
    cfg = config_from_dict(fake_config(str(tmp_path)))  # clean disabled
    steps = {s.name: s for s in run_stage_list(cfg)}
    assert list(steps) == ["prompts", "plan", "generate", "clean", "dedup", "publish"]
    assert not steps["clean"].enabled and not steps["dedup"].enabled
    assert steps["generate"].scope == "shard" and steps["generate"].where == "worker"
    on = config_from_dict(fake_config(str(tmp_path), clean={"enabled": True}))
    assert all(s.enabled for s in run_stage_list(on))
