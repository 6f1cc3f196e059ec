"""Load-time checks of multi-stage configs: stage names, template variables, keep_if,
select and output.format; the single-step run unchanged."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from synthgen.config import config_from_dict, load_config
from synthgen.config.multistage import compared_stage, known_prompt_fields, parsed_fields
from synthgen.config.templating import TemplateError, template_vars
from synthgen.errors import ConfigError
from tests.helpers import fake_config

SOURCE = {"type": "template", "templates": ["{topic}"], "topics": ["tides", "bees"]}
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "why": {"type": "string"}},
    "required": ["score"],
}


def _stages() -> list[dict[str, Any]]:
    return [
        {"name": "instruction", "prompt": "Write one question about {{ topic }}."},
        {
            "name": "response",
            "system": "You are a patient teacher.",
            "prompt": "{{ instruction }}",
            "sampling": {"n": 4},
        },
        {
            "name": "judge",
            "prompt": "Rate. Question: {{ instruction }} Answer: {{ response }}",
            "guided": {"json_schema": JUDGE_SCHEMA},
            "parse": "json",
            "keep_if": "judge.score >= 7",
        },
    ]


def _cfg(stages=None, prompts=None, **top: Any):
    data = {
        "prompts": prompts or SOURCE,
        "stages": _stages() if stages is None else stages,
        "select": {"strategy": "pairs", "by": "judge.score"},
        "output": {"format": "dpo"},
    }
    data.update(top)
    return config_from_dict(data)


def _bad(match: str, edit=None, **kw: Any) -> None:
    stages = _stages()
    if edit:
        edit(stages)
    with pytest.raises(ConfigError, match=match):
        _cfg(stages, **kw)


def test_the_design_example_loads():
    cfg = _cfg()
    assert [s.name for s in cfg.stages] == ["instruction", "response", "judge"]
    assert compared_stage(cfg) == "response"
    assert parsed_fields(cfg, cfg.stages[2]) == {"score": "int64", "why": "string"}
    assert parsed_fields(cfg, cfg.stages[1]) == {}


def test_single_step_run_is_unchanged(tmp_path):
    plain = config_from_dict(fake_config(str(tmp_path)))
    assert plain.stages == [] and plain.select.strategy == "all"
    sft = config_from_dict(fake_config(str(tmp_path), output__format="sft"))
    assert sft.output.format == "sft"
    # the run id of a single-step config does not depend on the multi-stage checks
    assert plain.run_id == config_from_dict(fake_config(str(tmp_path))).run_id


def test_unknown_variable_names_stage_and_variable():
    def edit(s):
        s[2]["prompt"] = "Rate {{ answer }}"

    _bad(
        r"stages\[2\] \(judge\): prompt uses \{\{ answer \}\}, which is neither a prompt field "
        r"nor an earlier stage \(known: prompt, audience, style, template, topic, instruction, "
        r"response\)",
        edit,
    )


def test_system_template_is_checked_too():
    def edit(s):
        s[1]["system"] = "You teach {{ subject }}."

    _bad(r"stages\[1\] \(response\): system uses \{\{ subject \}\}", edit)


def test_later_stage_and_self_references_are_rejected():
    def later(s):
        s[0]["prompt"] = "{{ response }}"

    _bad(
        r"stages\[0\] \(instruction\): prompt uses \{\{ response \}\}, which is a later stage "
        r"\(stages\[1\]\)",
        later,
    )

    def itself(s):
        s[1]["prompt"] = "{{ response }}"

    _bad(
        r"stages\[1\] \(response\): prompt uses \{\{ response \}\}, which is this stage itself",
        itself,
    )


def test_field_references_need_parse_and_a_listed_property():
    def not_parsed(s):
        s[2]["prompt"] = "{{ instruction.topic }}"

    _bad(
        r"stages\[2\] \(judge\): prompt \{\{ instruction.topic \}\} reads field `topic` of stage "
        r"`instruction`, which has no `parse: json`",
        not_parsed,
    )

    def unlisted(s):
        s.append({"name": "final", "prompt": "{{ judge['grade'] }}"})

    _bad(
        r"stages\[3\] \(final\): .*json_schema of stage `judge` has no property `grade` "
        r"\(properties: score, why\)",
        unlisted,
    )

    def listed(s):
        s.append({"name": "final", "prompt": "{{ judge.why }} {{ instruction.strip() }}"})

    stages = _stages()
    listed(stages)
    assert _cfg(stages).stages[3].name == "final"


def test_data_sources_accept_unknown_names_at_load_but_not_later_stages(tmp_path):
    jsonl = {"type": "jsonl", "path": str(tmp_path / "p.jsonl")}
    stages = _stages()
    stages[0]["prompt"] = "About {{ subject }} for {{ level }}"
    assert known_prompt_fields(_cfg(stages, prompts=jsonl)) is None
    stages[0]["prompt"] = "{{ judge }}"
    with pytest.raises(ConfigError, match=r"stages\[0\] \(instruction\).*later stage"):
        _cfg(stages, prompts=jsonl)


def test_builtin_source_fields_come_from_the_bundled_file():
    cfg = config_from_dict({"prompts": {"type": "builtin"}})
    assert known_prompt_fields(cfg) == frozenset({"category"})
    stages = [{"name": "a", "prompt": "{{ prompt }} ({{ category }})"}]
    assert config_from_dict({"stages": stages}).stages[0].name == "a"
    with pytest.raises(ConfigError, match=r"stages\[0\] \(a\): prompt uses \{\{ topic \}\}"):
        config_from_dict({"stages": [{"name": "a", "prompt": "{{ topic }}"}]})


def test_template_syntax_error_names_the_stage():
    def edit(s):
        s[0]["prompt"] = "{{ topic "

    _bad(r"stages\[0\] \(instruction\): prompt: invalid template \(line 1\)", edit)
    with pytest.raises(TemplateError):
        template_vars("{% for %}")


@pytest.mark.parametrize(
    ("expr", "what"),
    [
        ("len(judge) > 3", "a function call `len(judge)`"),
        ("judge.score.__class__ == 1", "the dunder name `judge.score.__class__`"),
        ("judge[0] == 'x'", "a subscript `judge[0]`"),
        ("(lambda: 1)() == 1", "a function call"),
        ("lambda: 1", "a lambda"),
        ("[x for x in judge] == []", "a comprehension"),
        ("'abc'.upper == 1", "attribute access on something that is not a column name"),
        ("judge.score is None", "the comparison (use == None / != None)"),
        ("judge.score ** 2 > 3", "the operator"),
    ],
)
def test_keep_if_outside_the_grammar_is_rejected(expr, what):
    def edit(s):
        s[2]["keep_if"] = expr

    _bad(r"stages\[2\] \(judge\): keep_if .*: " + re.escape(what) + r".* is not allowed", edit)


def test_keep_if_names_are_checked():
    def unknown(s):
        s[2]["keep_if"] = "judge.score > 3 and grade > 1"

    _bad(
        r"stages\[2\] \(judge\): keep_if .* reads `grade`, which is neither a column nor a "
        r"prompt field",
        unknown,
    )

    def later(s):
        s[1]["keep_if"] = "judge.score > 3"

    _bad(
        r"stages\[1\] \(response\): keep_if .* reads `judge.score` of stage judge, which is a "
        r"later stage \(stages\[2\]\)",
        later,
    )

    def fine(s):
        s[1]["keep_if"] = "response.finish_reason == 'stop' and sample_index < 3 and topic != ''"

    stages = _stages()
    fine(stages)
    assert _cfg(stages).stages[1].keep_if


def test_stage_names():
    def dup(s):
        s[2]["name"] = "response"

    _bad(r"stages\[2\] \(response\): name already used by stages\[1\]", dup)
    for name in ("prompt", "sample_index", "completion", "chosen"):

        def reserved(s, name=name):
            s.append({"name": name, "prompt": "x"})

        _bad(rf"stages\[3\] \({name}\): `{name}` is a column every record has", reserved)

    def generate(s):
        s[0]["name"] = "generate"
        s[1]["prompt"] = "{{ generate }}"
        s[2]["prompt"] = "{{ generate }}"

    _bad(
        r"stages\[0\] \(generate\): `generate` is the name of the single-step run's stage", generate
    )

    def meta(s):
        s.append({"name": "topic", "prompt": "x"})

    _bad(r"stages\[3\] \(topic\): `topic` is also a field of the prompt records", meta)

    def provenance(s):
        s[2]["guided"]["json_schema"] = {"type": "object", "properties": {"model": {}}}
        s[2]["keep_if"] = None

    _bad(
        r"stages\[2\] \(judge\): guided.json_schema property `model` would be the column "
        r"judge.model",
        provenance,
    )


def test_select_checks():
    with pytest.raises(ConfigError, match="select.stage: 'nope' is not a stage"):
        _cfg(select={"strategy": "pairs", "by": "judge.score", "stage": "nope"})
    with pytest.raises(ConfigError, match="select.stage: 'judge' has sampling.n = 1"):
        _cfg(select={"strategy": "pairs", "by": "judge.score", "stage": "judge"})
    with pytest.raises(ConfigError, match="select.by: 'response' is not a parsed column"):
        _cfg(select={"strategy": "best", "by": "response"}, output={"format": "raw"})
    with pytest.raises(ConfigError, match="select.by: 'judge.grade'.*no property `grade`"):
        _cfg(select={"strategy": "best", "by": "judge.grade"}, output={"format": "raw"})
    with pytest.raises(ConfigError, match="select.by: 'judge.why' is a string"):
        _cfg(select={"strategy": "best", "by": "judge.why"}, output={"format": "raw"})
    with pytest.raises(ConfigError, match="output.format: dpo needs select.strategy: pairs"):
        _cfg(select={"strategy": "best", "by": "judge.score"})
    stages = _stages()
    del stages[1]["sampling"]
    with pytest.raises(ConfigError, match="no stage has sampling.n > 1"):
        _cfg(stages)
    # a score from a stage before the compared one would be shared by every sample
    stages = copy.deepcopy(_stages())
    stages[0].update(guided={"json_schema": JUDGE_SCHEMA}, parse="json")
    stages[1]["prompt"] = "{{ instruction.why }}"
    with pytest.raises(ConfigError, match="select.by: 'instruction.score' comes from stages"):
        _cfg(stages, select={"strategy": "pairs", "by": "instruction.score"})
    # the run's sampling.n makes every stage sample: the last one is compared by default
    cfg = _cfg(sampling={"n": 2}, select={"strategy": "all"}, output={"format": "raw"})
    assert compared_stage(cfg) == "judge"


def test_select_and_dpo_need_stages(tmp_path):
    with pytest.raises(ConfigError, match="output.format: dpo needs chosen / rejected pairs"):
        config_from_dict(fake_config(str(tmp_path), output__format="dpo"))
    with pytest.raises(ConfigError, match="select: strategy 'best' .* needs `stages`"):
        config_from_dict(fake_config(str(tmp_path), select={"strategy": "best", "by": "x.y"}))


def test_parsed_field_kinds_and_schemaless_fields():
    stages = [
        {
            "name": "judge",
            "prompt": "{{ prompt }}",
            "guided": {
                "json_schema": {
                    "type": "object",
                    "properties": {
                        "i": {"type": "integer"},
                        "f": {"type": "number"},
                        "b": {"type": "boolean"},
                        "s": {"type": "string"},
                        "o": {"type": "object"},
                        "maybe": {"type": ["integer", "null"]},
                        "any": {},
                    },
                }
            },
            "parse": "json",
        },
        {"name": "free", "prompt": "{{ judge.i }}", "parse": "json", "keep_if": "free.ok"},
        {"name": "last", "prompt": "{{ free.label }}"},
    ]
    cfg = _cfg(stages, select={"strategy": "all"}, output={"format": "raw"})
    assert parsed_fields(cfg, cfg.stages[0]) == {
        "i": "int64",
        "f": "float64",
        "b": "bool",
        "s": "string",
        "o": "json",
        "maybe": "int64",
        "any": "json",
    }
    # no schema: one JSON column per field the config reads, the same for every shard
    assert parsed_fields(cfg, cfg.stages[1]) == {"label": "json", "ok": "json"}


def test_errors_through_a_file_name_the_file_and_stage(tmp_path):
    stages = _stages()
    stages[2]["prompt"] = "{{ answer }}"
    path = tmp_path / "ms.yaml"
    path.write_text(yaml.safe_dump({"prompts": SOURCE, "stages": stages}))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert f"{path}: stages[2] (judge): prompt uses {{{{ answer }}}}" in msg
    assert "<root>" not in msg and "Value error" not in msg


def test_verification_of_a_multi_stage_run_loads() -> None:
    from synthgen.config import config_from_dict

    cfg = config_from_dict(
        {"stages": [{"name": "a", "prompt": "{{ prompt }}"}], "verify": {"enabled": True}}
    )
    assert cfg.verify.enabled and [s.name for s in cfg.stages] == ["a"]


def test_completion_ids_is_a_reserved_stage_name() -> None:
    import pytest

    from synthgen.config import config_from_dict
    from synthgen.errors import ConfigError

    with pytest.raises(ConfigError, match="stages\\[0\\] \\(completion_ids\\): .* column"):
        config_from_dict({"stages": [{"name": "completion_ids", "prompt": "{{ prompt }}"}]})


def test_an_untyped_enum_field_is_typed_by_its_values() -> None:
    from synthgen.config import config_from_dict
    from synthgen.config.multistage import parsed_fields

    cfg = config_from_dict(
        {
            "stages": [
                {
                    "name": "x",
                    "prompt": "{{ prompt }}",
                    "parse": "json",
                    "guided": {
                        "json_schema": {
                            "type": "object",
                            "properties": {
                                "label": {"enum": ["a", "b"]},
                                "level": {"enum": [1, 2]},
                                "mixed": {"enum": [1, "b"]},
                            },
                        }
                    },
                }
            ]
        }
    )
    kinds = parsed_fields(cfg, cfg.stages[0])
    assert kinds == {"label": "string", "level": "int64", "mixed": "json"}


def test_clean_stage_must_name_a_stage_and_sets_what_is_deduplicated() -> None:
    import pytest

    from synthgen.config import config_from_dict
    from synthgen.config.multistage import clean_stage, descendants_span
    from synthgen.errors import ConfigError

    stages = [
        {"name": "q", "prompt": "{{ prompt }}"},
        {"name": "a", "prompt": "{{ q }}", "sampling": {"n": 3}},
        {"name": "j", "prompt": "{{ a }}", "sampling": {"n": 2}},
    ]
    cfg = config_from_dict({"stages": stages, "clean": {"stage": "a"}})
    assert clean_stage(cfg) == "a" and descendants_span(cfg, "a") == 2
    assert descendants_span(cfg, "q") == 6 and descendants_span(cfg, "j") == 1
    assert clean_stage(config_from_dict({"stages": stages})) == "j"
    with pytest.raises(ConfigError, match="clean.stage: 'zz' is not a stage"):
        config_from_dict({"stages": stages, "clean": {"stage": "zz"}})
