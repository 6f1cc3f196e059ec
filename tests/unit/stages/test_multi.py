"""StageStep: one configured generation stage on one shard, with a stub engine that
implements the engine API (n samples per request, request-major, guided)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest

from synthgen.config import config_from_dict
from synthgen.engines.base import EngineInfo, GenRequest, prompt_seed
from synthgen.errors import EngineError
from synthgen.stages.columns import stage_schema
from synthgen.stages.multi import StageStep, parse_output, stage_sampling
from synthgen.stages.plan import plan_table
from synthgen.stages.prompts import PromptRecord


@dataclass
class StubCompletion:
    prompt_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    error: str | None = None
    sample_index: int = 0


Reply = Callable[[GenRequest, int], Any]


class StubEngine:
    """Reply(request, sample) -> text, or (text, finish_reason, error)."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.info = EngineInfo("stub", "stub-model", "cpu")
        self.reply = reply or (lambda r, i: f"{r.messages[-1]['content']}#{i}")
        self.calls: list[tuple[list[GenRequest], Any, Any]] = []

    def generate(self, requests, sampling, guided=None):
        self.calls.append((list(requests), sampling, guided))
        out = []
        for r in requests:
            for i in range(sampling.n):
                got = self.reply(r, i)
                text, finish, error = got if isinstance(got, tuple) else (got, "stop", None)
                out.append(StubCompletion(r.prompt_id, text, 2, 3, finish, error, i))
        return out


SOURCE = {"type": "template", "templates": ["{topic}"], "topics": ["x"]}
JUDGE = {
    "type": "object",
    "properties": {
        "score": {"type": "integer"},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
        "label": {"type": "string"},
        "extra": {"type": "object"},
    },
}


def _cfg(stages, **top):
    return config_from_dict({"prompts": SOURCE, "stages": stages, **top})


def _plan(*topics: str) -> pa.Table:
    return plan_table(
        [PromptRecord(f"p-{t}", [{"role": "user", "content": t}], {"topic": t}) for t in topics]
    )


def _run(cfg, index, rows, engine=None):
    engine = engine or StubEngine()
    step = StageStep(cfg, cfg.stages[index], "shard-0", engine, "w1")
    out, stats = step(rows)
    return out, stats, step, engine


THREE = [{"name": "q", "prompt": "About {{ topic }}", "sampling": {"n": 3, "seed": 7}}]


def test_n_samples_expand_with_sample_index_and_stable_seeds():
    cfg = _cfg(THREE)
    out, stats, step, engine = _run(cfg, 0, _plan("a", "b"))
    assert out.schema == stage_schema(cfg, 0)
    assert out.num_rows == 6 and stats.rows_in == 2 and stats.rows_out == 6
    assert out.column("prompt_id").to_pylist() == ["p-a"] * 3 + ["p-b"] * 3
    assert out.column("sample_index").to_pylist() == [0, 1, 2, 0, 1, 2]
    assert out.column("q").to_pylist()[:3] == ["About a#0", "About a#1", "About a#2"]
    seeds = out.column("seed").to_pylist()
    want_a = prompt_seed(7, "p-a/0/q")
    assert seeds[:3] == [want_a] * 3  # the request's seed; the samples are its draws
    assert seeds[3] == prompt_seed(7, "p-b/0/q") != want_a
    assert out.column("q.seed").to_pylist() == seeds
    # the stage's sampling is what the engine got and what the rows record
    [(requests, sampling, guided)] = engine.calls
    assert sampling.n == 3 and sampling.seed == 7 and guided is None
    assert json.loads(out.column("sampling")[0].as_py())["n"] == 3
    assert step.engine_seconds >= 0 and step.completion_tokens == 18 and step.prompt_tokens == 12


def test_a_row_gets_the_same_request_alone_as_in_a_batch():
    cfg = _cfg(THREE)
    _, _, _, batch = _run(cfg, 0, _plan("a", "b", "c"))
    _, _, _, alone = _run(cfg, 0, _plan("b"))
    assert alone.calls[0][0] == [batch.calls[0][0][1]]


def test_later_stage_flattens_sample_index_and_carries_columns():
    cfg = _cfg(
        [
            {"name": "q", "prompt": "About {{ topic }}", "sampling": {"n": 2}},
            {"name": "a", "system": "Teach.", "prompt": "{{ q }}!", "sampling": {"n": 3}},
        ]
    )
    first, _, _, _ = _run(cfg, 0, _plan("t"))
    out, _, _, engine = _run(cfg, 1, first)
    assert out.schema == stage_schema(cfg, 1)
    assert out.column("sample_index").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert out.column("q").to_pylist() == ["About t#0"] * 3 + ["About t#1"] * 3
    assert out.column("a").to_pylist()[3] == "About t#1!#0"
    assert out.column("q.seed").to_pylist()[0] == prompt_seed(cfg.sampling.seed, "p-t/0/q")
    seeds = [r.seed for r in engine.calls[0][0]]
    assert seeds == [prompt_seed(cfg.sampling.seed, f"p-t/{i}/a") for i in (0, 1)]
    # this stage's own record columns describe its generation
    assert json.loads(out.column("messages")[0].as_py()) == [
        {"role": "system", "content": "Teach."},
        {"role": "user", "content": "About t#0!"},
    ]
    assert out.column("prompt")[0].as_py() == "About t#0!"
    assert out.column("source_prompt").to_pylist() == ["t"] * 6
    assert out.column("a.model").to_pylist() == ["stub-model"] * 6
    assert json.loads(out.column("meta")[0].as_py()) == {"topic": "t"}


def test_drop_flagged_upstream_rows_are_not_fed_forward():
    cfg = _cfg([{"name": "q", "prompt": "{{ topic }}"}, {"name": "a", "prompt": "{{ q }}"}])
    first, _, _, _ = _run(cfg, 0, _plan("a", "b", "c"))
    flagged = first.set_column(
        first.schema.get_field_index("drop_reason"),
        first.schema.field("drop_reason"),
        pa.array([None, "keep_if", None], pa.string()),
    )
    out, stats, _, engine = _run(cfg, 1, flagged)
    assert [r.prompt_id for r in engine.calls[0][0]] == ["p-a", "p-c"]
    assert out.column("prompt_id").to_pylist() == ["p-a", "p-c"]
    assert stats.rows_in == 3 and stats.rows_out == 2


def test_no_kept_rows_gives_an_empty_table_without_calling_the_engine():
    cfg = _cfg([{"name": "q", "prompt": "{{ topic }}"}, {"name": "a", "prompt": "{{ q }}"}])
    first, _, _, _ = _run(cfg, 0, _plan("a"))
    dropped = first.set_column(
        first.schema.get_field_index("drop_reason"),
        first.schema.field("drop_reason"),
        pa.array(["schema_invalid"], pa.string()),
    )
    out, _, _, engine = _run(cfg, 1, dropped)
    assert out.num_rows == 0 and out.schema == stage_schema(cfg, 1) and engine.calls == []


def _judge_cfg(keep_if=None, parse="json"):
    return _cfg(
        [
            {
                "name": "judge",
                "prompt": "{{ topic }}",
                "guided": {"json_schema": JUDGE},
                "parse": parse,
                "keep_if": keep_if,
            }
        ]
    )


def test_parse_json_typed_columns():
    reply = {
        "p-a": {"score": 8, "ratio": 1, "ok": True, "label": "x", "extra": {"k": [1]}},
        "p-b": {"score": 3.0, "ratio": 0.5},
    }
    engine = StubEngine(lambda r, i: json.dumps(reply[r.prompt_id]))
    cfg = _judge_cfg()
    out, _, _, engine = _run(cfg, 0, _plan("a", "b"), engine)
    assert engine.calls[0][2] == cfg.stages[0].guided
    types = {f.name: f.type for f in out.schema if f.name.startswith("judge.")}
    assert types["judge.score"] == pa.int64() and types["judge.ratio"] == pa.float64()
    assert types["judge.ok"] == pa.bool_() and types["judge.label"] == pa.string()
    assert types["judge.extra"] == pa.string()
    rows = out.to_pylist()
    assert [r["judge.score"] for r in rows] == [8, 3]
    assert [r["judge.ratio"] for r in rows] == [1.0, 0.5]
    assert [r["judge.ok"] for r in rows] == [True, None]
    assert json.loads(rows[0]["judge.extra"]) == {"k": [1]} and rows[1]["judge.extra"] is None
    assert [r["drop_reason"] for r in rows] == [None, None]


def test_schema_invalid_flags():
    replies = {
        "p-a": ("{}", "stop", "schema_invalid: 3 attempts failed"),  # the engine gave up
        "p-b": '{"score": "high"}',  # wrong type
        "p-c": '{"score": 4',  # cut off
        "p-d": "[1, 2]",  # not an object
        "p-e": '{"score": 6}',
    }
    engine = StubEngine(lambda r, i: replies[r.prompt_id])
    out, stats, _, _ = _run(_judge_cfg(), 0, _plan("a", "b", "c", "d", "e"), engine)
    drops = out.column("drop_reason").to_pylist()
    assert drops == ["schema_invalid"] * 4 + [None]
    errors = out.column("error").to_pylist()
    assert errors[0] == "schema_invalid: 3 attempts failed"
    assert (
        "field 'score'" in errors[1]
        and "not JSON" in errors[2]
        and "not a JSON object" in errors[3]
    )
    assert out.column("judge.score").to_pylist() == [None] * 4 + [6]
    assert stats.drops == {"schema_invalid": 4}


def test_keep_if_flags_and_rejected_prompts():
    scores = {"p-a": 9, "p-b": 2, "p-c": None}

    def reply(r, i):
        if r.prompt_id == "p-d":
            return ("", "rejected", "prompt too long")
        return json.dumps({"score": scores[r.prompt_id]})

    out, stats, _, _ = _run(
        _judge_cfg(keep_if="judge.score >= 7"), 0, _plan("a", "b", "c", "d"), StubEngine(reply)
    )
    assert out.column("drop_reason").to_pylist() == [None, "keep_if", "keep_if", "rejected_prompt"]
    assert stats.drops == {"keep_if": 2, "rejected_prompt": 1}


def test_engine_contract_violations_are_named():
    class Short(StubEngine):
        def generate(self, requests, sampling, guided=None):
            return super().generate(requests, sampling, guided)[:-1]

    with pytest.raises(
        EngineError, match=r"stages\[0\] \(q\): shard shard-0: the engine returned 5"
    ):
        _run(_cfg(THREE), 0, _plan("a", "b"), Short())


def test_stage_sampling_takes_the_run_values_under_the_stage_keys():
    cfg = _cfg(
        [{"name": "q", "prompt": "{{ topic }}", "sampling": {"n": 4, "temperature": 0.1}}],
        sampling={"top_p": 0.5, "temperature": 0.9, "max_new_tokens": 33},
    )
    s = stage_sampling(cfg, cfg.stages[0])
    assert (s.n, s.temperature, s.top_p, s.max_new_tokens, s.seed) == (4, 0.1, 0.5, 33, 1234)
    # a round trip through the dict a worker gets keeps the same sampling
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert stage_sampling(again, again.stages[0]) == s


def test_parse_output_types():
    fields = {"i": "int64", "f": "float64", "j": "json"}
    assert parse_output('{"i": 2.0, "f": 1, "j": [1]}', fields) == {"i": 2, "f": 1.0, "j": "[1]"}
    with pytest.raises(ValueError, match="field 'i'"):
        parse_output('{"i": true}', fields)
    with pytest.raises(ValueError, match="field 'i'"):
        parse_output('{"i": 2.5}', fields)
