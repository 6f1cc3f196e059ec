"""Template variables (jinja2 AST) and rendering a stage's chat per row."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from synthgen.config import config_from_dict
from synthgen.config.templating import template_vars
from synthgen.errors import ConfigError
from synthgen.stages.plan import plan_table
from synthgen.stages.prompts import PromptRecord
from synthgen.stages.template import (
    StageTemplates,
    StageText,
    check_prompt_fields,
    render_messages,
)

SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}, "count": {}}}


def test_template_vars_sees_names_and_field_chains():
    tv = template_vars(
        "{{ judge.score }} {{ judge['count'] }} {{ instruction.strip() }} {{ topic | upper }}"
        "{% for w in words %}{{ w.x }}{% endfor %}{% set z = 1 %}{{ z }}"
    )
    assert tv.names == {"judge", "instruction", "topic", "words"}
    assert tv.fields == {"judge": frozenset({"score", "count"})}


def _cfg(stages, prompts=None):
    return config_from_dict(
        {
            "prompts": prompts
            or {"type": "template", "templates": ["{topic}"], "topics": ["tides"]},
            "stages": stages,
        }
    )


def test_first_stage_renders_from_plan_rows():
    cfg = _cfg(
        [{"name": "q", "system": "Be brief about {{ topic }}.", "prompt": "Ask: {{ prompt }}"}]
    )
    plan = plan_table(
        [PromptRecord("p1", [{"role": "user", "content": "tides"}], {"topic": "tides"})]
    )
    assert render_messages(cfg, cfg.stages[0], plan) == [
        [
            {"role": "system", "content": "Be brief about tides."},
            {"role": "user", "content": "Ask: tides"},
        ]
    ]


def test_earlier_stage_is_text_with_parsed_fields():
    cfg = _cfg(
        [
            {
                "name": "judge",
                "prompt": "{{ topic }}",
                "guided": {"json_schema": SCHEMA},
                "parse": "json",
            },
            {
                "name": "out",
                "prompt": "{{ judge }}|{{ judge.score }}|{{ judge.count.n }}|{{ judge|length }}"
                "|{{ judge['score'] + 1 }}",
            },
        ]
    )
    rows = pa.table(
        {
            "prompt_id": ["p1"],
            "source_prompt": ["tides"],
            "meta": [json.dumps({"topic": "tides"})],
            "judge": ['{"score": 8}'],
            "judge.score": pa.array([8], pa.int64()),
            # a JSON-kind field (no type in the schema): decoded for the template;
            # `count` is the field, not str.count
            "judge.count": pa.array(['{"n": 2}'], pa.string()),
        }
    )
    schema = rows.schema.set(
        5, pa.field("judge.count", pa.string(), metadata={b"synthgen.kind": b"json"})
    )
    rows = rows.cast(schema)
    [chat] = StageTemplates(cfg, cfg.stages[1]).render_rows(rows)
    assert chat == [{"role": "user", "content": '{"score": 8}|8|2|12|9'}]


def test_stage_text_is_a_str():
    t = StageText("hello", {"score": 3})
    assert t == "hello" and t.upper() == "HELLO" and t.fields == {"score": 3}


def test_missing_value_and_sandbox_errors_name_stage_and_prompt():
    cfg = _cfg(
        [{"name": "q", "prompt": "{{ level }}"}],
        prompts={"type": "jsonl", "path": "unused.jsonl"},
    )
    plan = plan_table([PromptRecord("p7", [{"role": "user", "content": "x"}], {"other": 1})])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(q\): prompt p7: cannot render.*level"):
        render_messages(cfg, cfg.stages[0], plan)
    cfg = _cfg([{"name": "q", "prompt": "{{ prompt.__class__.__mro__ }}"}])
    with pytest.raises(ConfigError, match=r"stages\[0\] \(q\): prompt p7: cannot render"):
        render_messages(cfg, cfg.stages[0], plan)


def test_plan_time_check_of_data_sources():
    cfg = _cfg(
        [
            {"name": "q", "prompt": "About {{ subject }}"},
            {"name": "a", "prompt": "{{ q }}", "keep_if": "level > 1"},
        ],
        prompts={"type": "jsonl", "path": "p.jsonl"},
    )
    good = PromptRecord("p1", [{"role": "user", "content": "x"}], {"subject": "s", "level": 2}, 1)
    check_prompt_fields(cfg, good, "p.jsonl")
    bad = PromptRecord("p1", [{"role": "user", "content": "x"}], {"topic": "s"}, 3)
    with pytest.raises(
        ConfigError,
        match=r"stages\[0\] \(q\): prompt uses \{\{ subject \}\}, which is neither a prompt "
        r"field nor an earlier stage \(known: prompt, topic\) \(checked against the first "
        r"prompt record, p.jsonl:3",
    ):
        check_prompt_fields(cfg, bad, "p.jsonl")
    only_subject = PromptRecord("p1", [], {"subject": "s"}, 1)
    with pytest.raises(ConfigError, match=r"stages\[1\] \(a\): keep_if 'level > 1' reads `level`"):
        check_prompt_fields(cfg, only_subject)
