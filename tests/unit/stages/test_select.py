"""select: best and pairs per prompt (ties, null scores, min_margin), deterministic."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synthgen.config import config_from_dict
from synthgen.config.stages import SelectConfig
from synthgen.errors import ConfigError
from synthgen.stages.select import group_span, select_rows


def _table(rows: list[tuple[str, int, float | None]], drops=None) -> pa.Table:
    return pa.table(
        {
            "prompt_id": [r[0] for r in rows],
            "sample_index": pa.array([r[1] for r in rows], pa.int32()),
            "response": [f"{r[0]}-{r[1]}" for r in rows],
            "judge.score": pa.array([r[2] for r in rows], pa.int64()),
            "drop_reason": pa.array(drops or [None] * len(rows), pa.string()),
        }
    )


def _best(t: pa.Table, **kw) -> list[str | None]:
    out = select_rows(t, SelectConfig(strategy="best", by="judge.score", **kw), "response")
    return out.column("drop_reason").to_pylist()


def _pairs(t: pa.Table, span=None, **kw) -> pa.Table:
    return select_rows(t, SelectConfig(strategy="pairs", by="judge.score", **kw), "response", span)


def test_all_keeps_every_row():
    t = _table([("a", 0, 1), ("a", 1, 2)])
    assert select_rows(t, SelectConfig(), "response").equals(t)


def test_best_keeps_the_highest_ties_to_the_lowest_sample_index():
    t = _table([("a", 2, 9), ("a", 0, 5), ("a", 1, 9), ("b", 0, 1), ("b", 1, 4)])
    assert _best(t) == ["not_best", "not_best", None, "not_best", None]


def test_best_null_scores_never_win_and_flagged_rows_pass_through():
    t = _table(
        [("a", 0, None), ("a", 1, 2), ("b", 0, None), ("c", 0, 9), ("c", 1, 1)],
        drops=[None, None, None, "keep_if", None],
    )
    # b has no score at all: nothing wins; c's 9 was already dropped: 1 wins
    assert _best(t) == ["not_best", None, "not_best", "keep_if", None]


def test_pairs_one_row_per_prompt():
    t = _table([("a", 0, 5), ("a", 1, 9), ("a", 2, 2), ("a", 3, 9), ("b", 0, 3), ("b", 1, 7)])
    out = _pairs(t)
    assert out.column_names[-6:] == [
        "chosen", "rejected", "chosen_score", "rejected_score",
        "chosen_sample_index", "rejected_sample_index",
    ]  # fmt: skip
    rows = out.to_pylist()
    assert [(r["prompt_id"], r["sample_index"], r["drop_reason"]) for r in rows] == [
        ("a", 1, None),
        ("b", 1, None),
    ]
    a, b = rows
    assert (a["chosen"], a["rejected"], a["chosen_score"], a["rejected_score"]) == (
        "a-1", "a-2", 9.0, 2.0,
    )  # fmt: skip
    assert (a["chosen_sample_index"], a["rejected_sample_index"]) == (1, 2)
    assert (b["chosen"], b["rejected"]) == ("b-1", "b-0")
    assert out.schema.field("chosen_score").type == pa.float64()


def test_pairs_low_margin_cases():
    t = _table(
        [
            ("one", 0, 5),  # a single sample
            ("eq", 0, 4), ("eq", 1, 4),  # equal scores never pair
            ("null", 0, 6), ("null", 1, None),  # one scored sample
            ("m2", 0, 5), ("m2", 1, 7),  # margin 2 == min_margin
            ("m3", 0, 4), ("m3", 1, 7),  # margin 3 > min_margin
        ]
    )  # fmt: skip
    out = _pairs(t, min_margin=2.0)
    got = [
        (r["prompt_id"], r["sample_index"], r["drop_reason"], r["chosen"]) for r in out.to_pylist()
    ]
    assert got == [
        ("one", 0, "low_margin", None),
        ("eq", 0, "low_margin", None),
        ("eq", 1, "low_margin", None),
        ("null", 0, "low_margin", None),
        ("null", 1, "low_margin", None),
        ("m2", 0, "low_margin", None),
        ("m2", 1, "low_margin", None),
        ("m3", 1, None, "m3-1"),
    ]


def test_pairs_null_scores_never_chosen_nor_rejected():
    t = _table([("a", 0, None), ("a", 1, 3), ("a", 2, 8), ("a", 3, None)])
    [row] = _pairs(t).to_pylist()
    assert (row["chosen_sample_index"], row["rejected_sample_index"]) == (2, 1)


def test_pairs_are_deterministic_whatever_the_row_order():
    rows = [("a", 0, 5), ("a", 1, 9), ("a", 2, 9), ("a", 3, 1), ("a", 4, 1), ("b", 0, 2)]
    first = _pairs(_table(rows))
    again = _pairs(_table(list(reversed(rows))))
    key = ["prompt_id", "chosen_sample_index", "rejected_sample_index", "drop_reason"]
    assert sorted(map(str, first.select(key).to_pylist())) == sorted(
        map(str, again.select(key).to_pylist())
    )
    a = [r for r in first.to_pylist() if r["prompt_id"] == "a"][0]
    assert (a["chosen_sample_index"], a["rejected_sample_index"]) == (1, 3)


def test_span_groups_samples_of_one_upstream_row():
    # instruction n=2, response n=2: sample_index 0,1 answer question 0; 2,3 question 1
    t = _table([("a", 0, 1), ("a", 1, 9), ("a", 2, 8), ("a", 3, 2)])
    out = _pairs(t, span=2).to_pylist()
    assert [(r["chosen"], r["rejected"]) for r in out] == [("a-1", "a-0"), ("a-2", "a-3")]
    assert len(_pairs(t).to_pylist()) == 1  # grouped by prompt only
    cfg = config_from_dict(
        {
            "prompts": {"type": "template", "templates": ["{topic}"], "topics": ["x"]},
            "stages": [
                {"name": "q", "prompt": "{{ topic }}", "sampling": {"n": 2}},
                {"name": "response", "prompt": "{{ q }}", "sampling": {"n": 3}},
                {"name": "judge", "prompt": "{{ response }}", "parse": "json"},
            ],
            "select": {"strategy": "pairs", "by": "judge.score"},
        }
    )
    assert group_span(cfg) == 3 and group_span(cfg, "q") == 6


def test_missing_column_is_named():
    t = _table([("a", 0, 1)]).drop_columns(["response"])
    with pytest.raises(ConfigError, match="select: the rows have no column 'response'"):
        _pairs(t)
