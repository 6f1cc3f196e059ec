"""Guided output: the one validator, vLLM's structured-output parameters, the fake engine's
instances of a constraint and its validate-and-resample path, and verification of a guided
stage with the fake engine's scoring (honest passes, cheaters are caught)."""

from __future__ import annotations

import json

import pytest

from synthgen.config import ModelConfig, SamplingConfig, VerifyConfig
from synthgen.config.stages import GuidedConfig
from synthgen.engines.base import GenRequest, ScoreRequest
from synthgen.engines.cache import get_engine
from synthgen.engines.fake import FakeEngine
from synthgen.engines.guided import SCHEMA_INVALID, validate, vllm_params
from synthgen.engines.vllm import choice_grammar
from synthgen.verify import judge
from tests import vllm_standin
from tests.support.cheats import CheatingEngine
from tests.support.fakeguided import install_invalid_guided, remove

SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "reason": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"enum": ["short", "long"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "p": {"type": "number", "minimum": 0, "maximum": 1},
        "detail": {
            "type": "object",
            "properties": {"by": {"type": ["string", "null"]}},
            "required": ["by"],
        },
    },
    "required": ["score", "reason", "detail"],
}
JSON = GuidedConfig(json_schema=SCHEMA)
REGEX = GuidedConfig(regex=r"(yes|no): [0-9]{2,3} [A-Z][a-z]+\.")
CHOICE = GuidedConfig(choice=["A", "B", "C"])
SAMPLING = SamplingConfig(max_new_tokens=64, seed=3)
REQS = [
    GenRequest(f"p{i}", [{"role": "user", "content": f"question {i}"}], 100 + i) for i in range(8)
]


def test_validate_json_regex_choice() -> None:
    ok, value, err = validate('{"score": 3, "reason": "x", "detail": {"by": null}}', JSON)
    assert ok and value["score"] == 3 and err is None
    ok, value, err = validate('{"score": 11, "reason": "x", "detail": {"by": null}}', JSON)
    assert not ok and value["score"] == 11 and "score" in (err or "")
    assert validate("{not json", JSON)[:2] == (False, None)
    assert validate("yes: 42 Blue.", REGEX) == (True, "yes: 42 Blue.", None)
    assert not validate("yes: 42 Blue. and more", REGEX)[0]  # the whole output must match
    assert validate("B", CHOICE)[0] and not validate("b", CHOICE)[0]


def test_vllm_structured_outputs_params() -> None:
    mod = vllm_standin.module()
    assert vllm_params(mod, JSON)["structured_outputs"].json == SCHEMA
    assert vllm_params(mod, REGEX)["structured_outputs"].regex == REGEX.regex
    assert vllm_params(mod, CHOICE)["structured_outputs"].choice == ["A", "B", "C"]
    assert choice_grammar(['a"b', "c\n"]) == 'root ::= "a\\"b" | "c\\n"'


@pytest.mark.parametrize("guided", [JSON, REGEX, CHOICE], ids=["json", "regex", "choice"])
def test_fake_engine_guided_outputs_satisfy_the_constraint(guided: GuidedConfig) -> None:
    eng = FakeEngine(ModelConfig(engine="fake"))
    out = eng.generate(REQS, SAMPLING.model_copy(update={"n": 2}), guided)
    assert len(out) == 16
    for c in out:
        assert validate(c.text, guided)[0] and c.error is None and c.attempts == 1, c.text
    assert len({c.text for c in out}) >= 2  # built from each sample's own seed
    assert out == eng.generate(REQS, SAMPLING.model_copy(update={"n": 2}), guided)
    if guided is JSON:
        assert {type(json.loads(c.text)["score"]) for c in out} == {int}


def test_fake_engine_unsupported_regex_fails_honestly() -> None:
    eng = FakeEngine(ModelConfig(engine="fake"))
    (c,) = eng.generate(REQS[:1], SAMPLING, GuidedConfig(regex=r"[^x]{3}", max_attempts=2))
    assert c.error and c.error.startswith(SCHEMA_INVALID) and c.attempts == 2


def test_fake_engine_resamples_invalid_attempts_through_the_test_hook() -> None:
    cfg = ModelConfig(engine="fake", path="guided-hook")
    try:
        install_invalid_guided(1)  # the first try of each sample is word salad
        eng = get_engine(cfg)
        out = eng.generate(REQS, SAMPLING, JSON)
        assert all(validate(c.text, JSON)[0] and c.attempts == 2 for c in out)
        install_invalid_guided(3)  # every try of the 3 allowed fails
        eng = get_engine(cfg)
        out = eng.generate(REQS, SAMPLING, JSON)
        assert all(c.error and c.error.startswith(SCHEMA_INVALID) for c in out)
        assert all(c.attempts == 3 and c.finish_reason in {"stop", "length"} for c in out)
    finally:
        remove()


def _verdict(scorer, gen, guided):
    comps = gen.generate(REQS, SAMPLING, guided)
    scores = scorer.score(
        [ScoreRequest(c.prompt_id, r.messages, c.text) for r, c in zip(REQS, comps, strict=True)],
        SAMPLING,
        top_k=10,
        guided=guided,
    )
    return judge(scores, VerifyConfig(min_tokens=1))


@pytest.mark.parametrize("guided", [JSON, REGEX], ids=["json", "regex"])
def test_fake_verification_of_a_guided_stage(guided: GuidedConfig) -> None:
    eng = FakeEngine(ModelConfig(engine="fake"))
    assert _verdict(eng, eng, guided).status == "pass"
    # without the constraint, the fake engine's own scoring would flag its honest outputs
    comps = eng.generate(REQS, SAMPLING, guided)
    plain = eng.score([ScoreRequest(c.prompt_id, [], c.text) for c in comps], SAMPLING)
    assert judge(plain, VerifyConfig(min_tokens=1)).status == "fail"
    for strategy in ("pool", "shuffle", "partial"):
        verdict = _verdict(eng, CheatingEngine(eng, strategy, seed=1), guided)
        assert verdict.status == "fail", (strategy, verdict.as_dict())
