"""clean_shard: hash/signature columns, filter and in-shard dedup reasons, counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from synthgen.config import CleanConfig, config_from_dict
from synthgen.errors import ConfigError
from synthgen.io.schema import RECORD_SCHEMA
from synthgen.stages.clean import clean_shard
from synthgen.stages.dedup.normalize import text_hash
from tests._cleanutil import mutate, records, text


def _shard() -> pa.Table:
    base = text(1)
    rows = [
        ("p05", base),
        ("p02", "  " + base.upper() + " "),  # exact duplicate after normalisation
        ("p03", mutate(base, 1, 7)),  # near duplicate
        ("p04", text(2)),
        ("p01", "As an AI language model, I cannot help with that request of the user."),
        ("p06", "Too short."),
        ("p07", text(3)),
        ("p08", "x"),
    ]
    finish = ["stop"] * 6 + ["length", "rejected"]
    return records(rows, finish=finish)


def test_clean_shard_marks_reasons_and_counts() -> None:
    out, counts = clean_shard(_shard(), CleanConfig())
    assert out.schema == RECORD_SCHEMA
    reasons = dict(zip(out["prompt_id"].to_pylist(), out["drop_reason"].to_pylist(), strict=True))
    assert reasons == {
        "p05": "exact_duplicate",
        "p02": None,
        "p03": "near_duplicate",
        "p04": None,
        "p01": "refusal",
        "p06": "too_few_words",
        "p07": "truncated",
        "p08": "rejected_prompt",
    }
    assert counts == {
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "refusal": 1,
        "rejected_prompt": 1,
        "too_few_words": 1,
        "truncated": 1,
    }
    assert out.num_rows - sum(counts.values()) == 2
    hashes = out["text_hash"].to_pylist()
    assert hashes[0] == hashes[1] == text_hash(text(1))
    sig = out["minhash"].to_pylist()
    assert all(len(s) == 128 for s in sig)
    assert sig[0] == sig[1]


def test_clean_shard_is_deterministic_under_reordering() -> None:
    t = _shard()
    a, _ = clean_shard(t, CleanConfig())
    b, _ = clean_shard(t.take(np.arange(t.num_rows)[::-1]), CleanConfig())
    ra = dict(zip(a["prompt_id"].to_pylist(), a["drop_reason"].to_pylist(), strict=True))
    rb = dict(zip(b["prompt_id"].to_pylist(), b["drop_reason"].to_pylist(), strict=True))
    assert ra == rb


def test_clean_disabled_keeps_all_but_rejected() -> None:
    out, counts = clean_shard(_shard(), CleanConfig(enabled=False))
    assert counts == {"rejected_prompt": 1}
    assert out["minhash"].null_count == out.num_rows
    assert out["text_hash"].null_count == 0


def test_switches_turn_parts_off() -> None:
    cfg = CleanConfig(near={"enabled": False}, filters={"truncated": {"enabled": False}})
    out, counts = clean_shard(_shard(), cfg)
    assert "near_duplicate" not in counts and "truncated" not in counts
    assert counts["exact_duplicate"] == 1


def test_missing_column_names_the_shard() -> None:
    t = pa.table({"shard_id": ["shard-00007"], "prompt_id": ["a"], "completion": ["x"]})
    with pytest.raises(ValueError, match="shard-00007.*finish_reason"):
        clean_shard(t, CleanConfig())


def test_clean_config_from_yaml_keys_and_errors() -> None:
    cfg = config_from_dict(
        {"clean": {"near": {"num_perm": 64, "threshold": 0.7, "shingle": "char"}}},
        overrides=["clean.filters.word_count.min_words=3"],
    )
    assert cfg.clean.near.num_perm == 64
    b, r = cfg.clean.near.lsh_params()
    assert b * r <= 64
    assert cfg.clean.filters.word_count.min_words == 3
    with pytest.raises(ConfigError, match="clean.near.threshold"):
        config_from_dict({"clean": {"near": {"threshold": 1.5}}})
    with pytest.raises(ConfigError, match="clean.filters.bogus: unknown key"):
        config_from_dict({"clean": {"filters": {"bogus": {}}}})
    with pytest.raises(ConfigError, match="bands"):
        config_from_dict({"clean": {"near": {"num_perm": 32, "bands": 64}}})


def test_empty_shard() -> None:
    out, counts = clean_shard(records([]), CleanConfig())
    assert out.num_rows == 0 and counts == {}
    assert out.schema == RECORD_SCHEMA


def test_all_rows_dropped_by_filters_leave_no_duplicates() -> None:
    rows = [
        ("p1", "As an AI language model I cannot help."),
        ("p2", "As an AI language model I cannot help."),
    ]
    out, counts = clean_shard(records(rows), CleanConfig())
    assert counts == {"refusal": 2}  # filtered rows never form duplicate clusters
