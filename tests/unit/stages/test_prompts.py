import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthgen.config import (
    BuiltinSource,
    InputConfig,
    JsonlSource,
    ParquetSource,
    TemplateSource,
)
from synthgen.errors import PromptError
from synthgen.stages.prompts import load_builtin, load_jsonl, load_parquet, load_template

STRICT = InputConfig()


def jsonl(tmp_path, lines, name="p.jsonl"):
    p = tmp_path / name
    if isinstance(lines, bytes):
        p.write_bytes(lines)
    else:
        p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return JsonlSource(type="jsonl", path=str(p))


def test_jsonl_prompt_messages_ids_and_meta(tmp_path):
    src = jsonl(
        tmp_path,
        [
            json.dumps({"id": "a1", "prompt": "Hello there", "topic": "greeting"}),
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Why is the sky blue?"},
                    ]
                }
            ),
            "",
            json.dumps({"prompt": "No id here"}),
        ],
    )
    ps = load_jsonl(src, STRICT)
    assert [r.prompt_id for r in ps.records][0] == "a1"
    assert ps.records[0].meta == {"topic": "greeting"}
    assert ps.records[1].messages[0]["role"] == "system"
    assert ps.records[1].text == "Why is the sky blue?"
    assert ps.records[2].line == 4
    # ids without an explicit id are content hashes: stable across loads
    again = load_jsonl(src, STRICT)
    assert [r.prompt_id for r in again.records] == [r.prompt_id for r in ps.records]


def test_identical_prompts_without_ids_get_distinct_stable_ids(tmp_path):
    src = jsonl(tmp_path, [json.dumps({"prompt": "same"})] * 3)
    ids = [r.prompt_id for r in load_jsonl(src, STRICT).records]
    assert len(set(ids)) == 3
    assert ids == [r.prompt_id for r in load_jsonl(src, STRICT).records]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "ok"', "malformed JSON"),
        ('{"text": "no prompt key"}', "no `prompt` or `messages`"),
        ('{"prompt": "   "}', "empty prompt"),
        ('{"messages": []}', "non-empty list"),
        ('["a list"]', "JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    src = jsonl(tmp_path, [json.dumps({"prompt": "fine"}), line])
    with pytest.raises(PromptError, match=rf"p\.jsonl:2: .*{message}"):
        load_jsonl(src, STRICT)


def test_non_utf8_bytes_name_the_line(tmp_path):
    src = jsonl(tmp_path, b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(PromptError, match=r"p\.jsonl:2: not UTF-8"):
        load_jsonl(src, STRICT)


def test_over_long_prompt_is_rejected(tmp_path):
    src = jsonl(tmp_path, [json.dumps({"prompt": "x" * 50})])
    with pytest.raises(PromptError, match=r"p\.jsonl:1: prompt too long: 50 characters"):
        load_jsonl(src, InputConfig(max_prompt_chars=10))


def test_duplicate_ids_name_both_lines(tmp_path):
    src = jsonl(
        tmp_path,
        [
            json.dumps({"id": "x", "prompt": "a"}),
            json.dumps({"id": "y", "prompt": "b"}),
            json.dumps({"id": "x", "prompt": "c"}),
        ],
    )
    with pytest.raises(PromptError, match=r"p\.jsonl:3: duplicate prompt id 'x' .*line 1"):
        load_jsonl(src, STRICT)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(PromptError, match="no prompts"):
        load_jsonl(jsonl(tmp_path, []), STRICT)
    with pytest.raises(PromptError, match="prompt file not found"):
        load_jsonl(JsonlSource(type="jsonl", path=str(tmp_path / "missing.jsonl")), STRICT)


def test_bad_records_are_quarantined_within_tolerance(tmp_path):
    lines = [json.dumps({"prompt": f"p{i}"}) for i in range(19)] + ["{broken"]
    ps = load_jsonl(jsonl(tmp_path, lines), InputConfig(max_bad_fraction=0.1))
    assert len(ps.records) == 19
    assert [(r.line, r.reason.split(":")[0]) for r in ps.rejects] == [(20, "malformed JSON")]


def test_bad_records_above_tolerance_stop_loading(tmp_path):
    lines = [json.dumps({"prompt": "ok"}), "{broken", "{broken"]
    with pytest.raises(PromptError, match=r"2 of 3 records are bad .*first at line 2"):
        load_jsonl(jsonl(tmp_path, lines), InputConfig(max_bad_fraction=0.5))


def test_parquet_source_with_named_columns(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {"question": ["What is 1+1?", "Name a bird."], "qid": ["q1", "q2"], "level": [1, 2]}
        ),
        p,
    )
    ps = load_parquet(
        ParquetSource(type="parquet", path=str(p), column="question", id_column="qid"), STRICT
    )
    assert [r.prompt_id for r in ps.records] == ["q1", "q2"]
    assert ps.records[1].text == "Name a bird."
    assert ps.records[1].meta == {"level": 2}


def test_parquet_missing_column_is_named(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"q": ["x"]}), p)
    with pytest.raises(PromptError, match=r"no column 'prompt' \(columns: q\)"):
        load_parquet(ParquetSource(type="parquet", path=str(p)), STRICT)


def test_template_source_is_seeded_and_stable():
    src = TemplateSource(
        type="template",
        templates=["Write about {topic} for {audience} in a {style} style."],
        topics=["rivers", "stars", "bread", "trains"],
        audiences=["children", "experts"],
        styles=["playful", "formal"],
        count=5,
        seed=3,
    )
    a = load_template(src, STRICT)
    b = load_template(src, STRICT)
    assert len(a.records) == 5
    assert [r.prompt_id for r in a.records] == [r.prompt_id for r in b.records]
    assert all(r.meta["topic"] in src.topics for r in a.records)
    other = load_template(src.model_copy(update={"seed": 4}), STRICT)
    assert [r.prompt_id for r in other.records] != [r.prompt_id for r in a.records]
    full = load_template(src.model_copy(update={"count": None}), STRICT)
    assert len(full.records) == 16


def test_template_unknown_placeholder_is_named():
    src = TemplateSource(type="template", templates=["About {subject}"], topics=["x"])
    with pytest.raises(PromptError, match=r"prompts\.templates\[0\]: unknown placeholder"):
        load_template(src, STRICT)


def test_builtin_set():
    ps = load_builtin(BuiltinSource(type="builtin"), STRICT)
    assert len(ps.records) == 24
    assert len({r.prompt_id for r in ps.records}) == 24
    assert len(load_builtin(BuiltinSource(type="builtin", limit=5), STRICT).records) == 5
