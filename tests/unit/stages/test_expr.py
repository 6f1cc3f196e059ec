"""keep_if: the grammar's errors and evaluation over Arrow rows (nulls included)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from synthgen.errors import ConfigError
from synthgen.stages.expr import compile_expr

WHERE = "stages[2] (judge): keep_if"


def _eval(text: str, table: pa.Table) -> list[bool]:
    return compile_expr(text, WHERE).evaluate(table)


def _rows() -> pa.Table:
    return pa.table(
        {
            "judge.score": pa.array([8, None, 3, 7], pa.int64()),
            "judge.ok": pa.array([True, False, None, True]),
            "judge": ["great", "meh", None, "fine"],
            "sample_index": pa.array([0, 1, 2, 3], pa.int32()),
            "meta": [json.dumps({"level": i}) for i in range(4)],
        }
    )


def test_names_are_the_columns_read():
    expr = compile_expr("judge.score >= 7 and not judge.ok or sample_index in [1, 2]", WHERE)
    assert expr.names == {"judge.score", "judge.ok", "sample_index"}


def test_null_in_a_comparison_is_false():
    t = _rows()
    assert _eval("judge.score >= 7", t) == [True, False, False, True]
    assert _eval("judge.score < 7", t) == [False, False, True, False]
    assert _eval("judge.score != 3", t) == [True, False, False, True]
    # the literal None tests for null
    assert _eval("judge.score == None", t) == [False, True, False, False]
    assert _eval("judge.score != None", t) == [True, False, True, True]
    # arithmetic with a null is null; a null result is not kept
    assert _eval("judge.score * 2 - 1", t) == [True, False, True, True]
    assert _eval("(judge.score + 1) // 2 == 4", t) == [True, False, False, True]
    assert _eval("judge.score / (sample_index - 2) > 0", t) == [False, False, False, True]
    assert _eval("judge.ok", t) == [True, False, False, True]
    assert _eval("-judge.score < -5 and judge.score % 2 == 0", t) == [True, False, False, False]


def test_membership_logic_and_chains():
    t = _rows()
    assert _eval("judge in ('great', 'fine')", t) == [True, False, False, True]
    assert _eval("judge not in ['great']", t) == [False, True, False, True]
    assert _eval("'ea' in judge", t) == [True, False, False, False]
    assert _eval("3 <= judge.score < 8", t) == [False, False, True, True]
    assert _eval("judge.ok or sample_index == 2", t) == [True, False, True, True]
    assert _eval("not (judge.score > 5)", t) == [False, True, True, False]


def test_prompt_metadata_keys_are_read_from_meta():
    assert _eval("level >= 2", _rows()) == [False, False, True, True]


def test_json_kind_columns_are_decoded():
    field = pa.field("judge.tags", pa.string(), metadata={b"synthgen.kind": b"json"})
    t = pa.table([pa.array(['["a", "b"]', '["c"]', None])], schema=pa.schema([field]))
    assert _eval("judge.tags == ['a', 'b']", t) == [True, False, False]


def test_evaluation_errors_are_clear():
    with pytest.raises(
        ConfigError, match=r"stages\[2\] \(judge\): keep_if 'grade > 1': no column `grade`"
    ):
        _eval("grade > 1", pa.table({"x": [1]}))
    with pytest.raises(ConfigError, match=r"keep_if 'judge > 3': '>' not supported.*row 0"):
        _eval("judge > 3", _rows())


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("open('x')", "a function call `open('x')`"),
        ("judge[0] == 'g'", "a subscript `judge[0]`"),
        ("judge.__class__", "the dunder name `judge.__class__`"),
        ("__import__", "the dunder name `__import__`"),
        ("lambda: 1", "a lambda `lambda: 1`"),
        ("[c for c in judge]", "a comprehension"),
        ("'x'.join", "attribute access on something that is not a column name"),
        ("{1: 2}", "a dict literal"),
        ("judge if judge else 1", "a conditional expression"),
        ("(x := 1)", "an assignment"),
        ("x ** 2", "the operator"),
        ("x is None", "the comparison"),
        ("b'x' == judge", "the literal"),
    ],
)
def test_outside_the_grammar(text, part):
    with pytest.raises(ConfigError) as exc:
        compile_expr(text, WHERE)
    assert str(exc.value).startswith(f"{WHERE} {text!r}: ")
    assert part in str(exc.value)


def test_not_an_expression():
    with pytest.raises(ConfigError, match=r"keep_if 'x = 1': not an expression"):
        compile_expr("x = 1", WHERE)
