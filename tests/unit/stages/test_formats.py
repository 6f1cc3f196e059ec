"""The published formats and splits as pure functions over hand-built Arrow tables, the card's
features against `datasets`, and a few rows through TRL's data helpers."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from synthgen.config import config_from_dict
from synthgen.errors import ConfigError
from synthgen.stages.card import feature_yaml, front_matter, size_category
from synthgen.stages.formats import (
    MESSAGES,
    sft_stage,
    split_of,
    split_rows,
    to_dpo,
    to_raw,
    to_sft,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def _record_rows() -> pa.Table:
    """Kept rows of a single-step run (the record columns)."""
    return pa.table({
        "run_id": ["r", "r"], "shard_id": ["s0", "s0"], "prompt_id": ["p1", "p2"],
        "prompt": ["Name a colour.", "Say hi."], "messages": [json.dumps(CHAT), None],
        "completion": ["Blue.", "Hi!"], "finish_reason": ["stop", "stop"],
        "model": ["m", "m"], "seed": pa.array([1, 2], pa.int64()),
        "prompt_tokens": pa.array([5, 3], pa.int32()),
        "completion_tokens": pa.array([2, 2], pa.int32()),
        "minhash": pa.array([[1], [2]], pa.list_(pa.uint32())), "drop_reason": [None, None],
        "error": [None, None],
    })  # fmt: skip


def _pairs_rows() -> pa.Table:
    """What `select: pairs` hands to publish, compared stage `answer`."""
    return pa.table({
        "run_id": ["r"], "shard_id": ["s0"], "prompt_id": ["p1"],
        "answer.messages": [json.dumps(CHAT)], "answer.model": ["m"],
        "chosen": ["Blue."], "rejected": ["I cannot."],
        "chosen_score": [9.0], "rejected_score": [2.0],
    })  # fmt: skip


def test_sft_is_the_request_chat_plus_the_generated_turn() -> None:
    out = to_sft(_record_rows())
    assert out.schema.field("messages").type == MESSAGES
    first, second = out.column("messages").to_pylist()
    assert first == [*CHAT, {"role": "assistant", "content": "Blue."}]
    # no chat recorded: the plain prompt is the user turn
    assert second == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ]
    assert {"prompt_id", "model", "seed", "run_id", "finish_reason"} <= set(out.column_names)
    assert "minhash" not in out.column_names and "completion" not in out.column_names


def test_sft_of_one_stage_of_a_multi_stage_run_uses_that_stages_columns() -> None:
    t = pa.table({
        "run_id": ["r"], "prompt_id": ["p1"], "instruction": ["Write a haiku."],
        "instruction.messages": [json.dumps([{"role": "user", "content": "Make a task."}])],
        "answer": ["Leaves fall."], "answer.messages": [json.dumps(CHAT)],
        "answer.model": ["big"], "answer.seed": pa.array([7], pa.int64()), "model": ["other"],
    })  # fmt: skip
    out = to_sft(t, "answer")
    assert out.column("messages").to_pylist()[0][-1] == {
        "role": "assistant",
        "content": "Leaves fall.",
    }
    assert out.column("messages").to_pylist()[0][:2] == CHAT
    assert out.column("model").to_pylist() == ["big"] and out.column("seed").to_pylist() == [7]
    with pytest.raises(ConfigError, match="'judge'"):
        to_sft(t, "judge")


def test_dpo_is_trls_conversational_preference_format() -> None:
    out = to_dpo(_pairs_rows(), "answer")
    row = out.to_pylist()[0]
    assert row["prompt"] == CHAT
    assert row["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert row["rejected"] == [{"role": "assistant", "content": "I cannot."}]
    assert row["chosen_score"] == 9.0 and row["rejected_score"] == 2.0 and row["model"] == "m"
    for col in ("prompt", "chosen", "rejected"):
        assert out.schema.field(col).type == MESSAGES
    with pytest.raises(ConfigError, match="chosen"):
        to_dpo(_pairs_rows().drop_columns(["chosen"]), "answer")


def test_raw_drops_only_the_clean_stage_internals() -> None:
    out = to_raw(_record_rows())
    assert set(_record_rows().column_names) - set(out.column_names) == {
        "minhash",
        "drop_reason",
        "error",
    }


def test_splits_are_deterministic_by_prompt_id_and_near_their_fractions() -> None:
    splits = {"test": 0.1, "validation": 0.05}
    ids = [f"prompt-{i:06d}" for i in range(20_000)]
    got = Counter(split_of(p, splits) for p in ids)
    assert abs(got["test"] / len(ids) - 0.1) < 0.01
    assert abs(got["validation"] / len(ids) - 0.05) < 0.01
    assert got["train"] == len(ids) - got["test"] - got["validation"]
    assert [split_of(p, splits) for p in ids[:50]] == [split_of(p, splits) for p in ids[:50]]
    t = pa.table({"prompt_id": ids[:200], "x": list(range(200))})
    parts = split_rows(t, splits)
    assert list(parts) == ["train", "test", "validation"]
    assert sum(p.num_rows for p in parts.values()) == 200
    for name, part in parts.items():
        assert all(split_of(p, splits) == name for p in part.column("prompt_id").to_pylist())
    assert list(split_rows(t, {})) == ["train"]


def test_split_and_format_settings_are_checked_at_load() -> None:
    for bad in ({"train": 0.1}, {"test": 0.0}, {"a": 0.6, "b": 0.5}, {"Bad": 0.1}):
        with pytest.raises(ValueError, match="output.splits"):
            config_from_dict({"output": {"splits": bad}})
    with pytest.raises(ValueError, match="select.strategy: pairs"):
        config_from_dict({"output": {"format": "dpo"}})
    with pytest.raises(ValueError, match="output.stage"):
        config_from_dict({"output": {"stage": "judge"}})
    assert sft_stage(config_from_dict({})) == "generate"


def test_card_features_are_what_datasets_writes() -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is a test dependency")
    for table in (to_raw(_record_rows()), to_sft(_record_rows()), to_dpo(_pairs_rows(), "answer")):
        ours = [feature_yaml(f.name, f.type) for f in table.schema]
        theirs = datasets.Features.from_arrow_schema(table.schema)._to_yaml_list()
        assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))


def test_size_categories_and_front_matter() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 2_500_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1M<n<10M"
    ]  # fmt: skip
    assert front_matter("---\na: 1\nb: [x]\n---\n\n# t\n") == {"a": 1, "b": ["x"]}
    assert front_matter("# no front matter\n") == {}


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("trl", reason="trl is a test dependency (installs with CPU torch)")
    from transformers import AutoTokenizer

    from synthgen.engines.transformers import bundled_model

    try:
        directory, gguf = bundled_model()
    except Exception as exc:  # the bundled model is installed by scripts/setup.sh
        pytest.skip(f"bundled model unavailable: {exc}")
    return AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf)


def test_trl_reads_the_sft_and_dpo_rows(tokenizer) -> None:
    from trl import apply_chat_template, is_conversational, maybe_apply_chat_template

    for row in to_sft(_record_rows()).to_pylist():
        example = {"messages": row["messages"]}
        assert is_conversational(example)
        text = apply_chat_template(example, tokenizer)["text"]
        assert row["messages"][-1]["content"] in text
        assert row["messages"][-2]["content"] in text
    row = to_dpo(_pairs_rows(), "answer").to_pylist()[0]
    example = {k: row[k] for k in ("prompt", "chosen", "rejected")}
    assert is_conversational(example)
    out = maybe_apply_chat_template(example, tokenizer)
    assert "Name a colour." in out["prompt"] and "Blue." not in out["prompt"]
    assert out["chosen"].startswith("Blue.") and out["rejected"].startswith("I cannot.")
