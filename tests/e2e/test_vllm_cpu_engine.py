"""The real vLLM engine (its CPU build) on the bundled model, in-process, one load for the
session (tests/conftest.py `vllm_cpu_engine`): seeded completions independent of
batch-mates, and verification through vLLM's `prompt_logprobs` that passes honest
completions and catches every cheating strategy."""

from __future__ import annotations

import pytest

from synthgen.config import RunConfig, SamplingConfig, VerifyConfig
from synthgen.config.stages import GuidedConfig
from synthgen.engines.base import GenRequest, ScoreRequest, ScoringEngine, prompt_seed, sample_seed
from synthgen.engines.guided import SCHEMA_INVALID, validate
from synthgen.stages.prompts import load_prompts
from synthgen.verify import judge
from tests.helpers import verdict_of
from tests.support.cheats import STRATEGIES, CheatingEngine

pytestmark = pytest.mark.slow


def _requests(n: int, base_seed: int) -> list[GenRequest]:
    prompts = load_prompts(RunConfig()).records[:n]
    return [
        GenRequest(p.prompt_id, p.messages, prompt_seed(base_seed, p.prompt_id)) for p in prompts
    ]


def test_engine_runs_on_vllms_cpu_platform(vllm_cpu_engine) -> None:
    eng = vllm_cpu_engine
    assert eng.device.kind == "cpu" and eng.info.device.startswith("cpu: ")
    assert eng.info.model == "SmolLM2-135M-Instruct" and eng.info.engine == "vllm"
    assert eng.info.extra["preset"] == "cpu" and eng.info.extra["in_process"] is True
    assert (
        eng.llm_kwargs["dtype"] == "float32" and eng.llm_kwargs["enable_chunked_prefill"] is False
    )
    assert eng.info.load_seconds > 0 and eng.max_model_len == 2048


def test_a_prompts_completion_does_not_depend_on_its_batch_mates(vllm_cpu_engine) -> None:
    eng = vllm_cpu_engine
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=24)
    batch = _requests(16, 5)
    together = eng.generate(batch, sampling)
    for i in (0, 15):
        (alone,) = eng.generate([batch[i]], sampling)
        assert alone.text == together[i].text, batch[i].prompt_id
        assert alone.completion_tokens == together[i].completion_tokens
    # and with other batch-mates in another order
    again = eng.generate([batch[15], *_requests(4, 5)], sampling)
    assert again[0].text == together[15].text
    # a different seed gives a different text for most prompts (the seed is used)
    other = eng.generate(_requests(4, 6), sampling)
    assert sum(a.text != b.text for a, b in zip(other, together[:4], strict=True)) >= 3


def test_honest_vllm_completions_pass_verification(vllm_cpu_engine) -> None:
    eng = vllm_cpu_engine
    assert isinstance(eng, ScoringEngine)
    sampling = SamplingConfig(max_new_tokens=16)
    verdict, scores = verdict_of(eng, eng, _requests(4, 11), sampling)
    assert verdict.status == "pass", verdict.reasons
    assert verdict.stats is not None and abs(verdict.stats.z) < 4
    assert all(s.tokens > 0 and s.outside_fraction is not None for s in scores)
    assert verdict.stats.topk_fraction > 0.85
    # a record's score does not depend on the records scored with it
    reqs = _requests(3, 11)
    alone = eng.score([ScoreRequest(reqs[0].prompt_id, reqs[0].messages, "Hi there")])
    batch = eng.score([ScoreRequest(r.prompt_id, r.messages, "Hi there") for r in reqs])
    assert alone[0].mean_logprob == pytest.approx(batch[0].mean_logprob, abs=1e-3)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_vllm_scoring_catches_every_cheating_strategy(vllm_cpu_engine, strategy) -> None:
    sampling = SamplingConfig(max_new_tokens=24)
    cheater = CheatingEngine(vllm_cpu_engine, strategy, seed=1)
    verdict, _ = verdict_of(vllm_cpu_engine, cheater, _requests(4, 12), sampling)
    assert verdict.status == "fail", (strategy, verdict.as_dict())
    assert verdict.stats is not None and verdict.stats.z is not None and verdict.stats.z < -5


# ------------------------------------------------------------------ n samples, guided output
GUIDED = [
    GuidedConfig(
        json_schema={
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        }
    ),
    GuidedConfig(regex=r"[A-Z][a-z ,]{10,60}\."),
    GuidedConfig(choice=["red", "green", "blue"]),
]


def test_n_samples_share_one_request_and_match_separate_seeded_requests(vllm_cpu_engine) -> None:
    eng = vllm_cpu_engine
    reqs = _requests(3, 21)
    one = SamplingConfig(max_new_tokens=12, temperature=1.0)
    three = eng.generate(reqs, one.model_copy(update={"n": 3}))
    assert [(c.prompt_id, c.sample_index) for c in three] == [
        (r.prompt_id, i) for r in reqs for i in range(3)
    ]
    assert all(len({c.text for c in three[3 * k : 3 * k + 3]}) >= 2 for k in range(3)), three
    assert len({c.text for c in three}) >= 8
    # vLLM seeds sample i of a seeded request seed + i (honoured on CPU): the same texts as
    # three separate requests with those seeds, and as the request alone
    separate = [
        GenRequest(r.prompt_id, r.messages, sample_seed(r.seed, i)) for r in reqs for i in range(3)
    ]
    alone = eng.generate(separate, one)
    assert [c.text for c in alone] == [c.text for c in three]
    again = eng.generate(reqs[1:2], one.model_copy(update={"n": 3}))
    assert [c.text for c in again] == [c.text for c in three[3:6]]
    assert [c.prompt_tokens > 0 for c in three] == [True, False, False] * 3


@pytest.mark.parametrize("guided", GUIDED, ids=["json", "regex", "choice"])
def test_guided_outputs_validate_and_honest_guided_shards_pass_verification(
    vllm_cpu_engine, guided
) -> None:
    eng = vllm_cpu_engine
    reqs = _requests(4, 7)
    sampling = SamplingConfig(max_new_tokens=40, n=2)
    out = eng.generate(reqs, sampling, guided)
    assert len(out) == 8
    for c in out:  # complete outputs satisfy the constraint; a cut one is marked
        if c.finish_reason == "stop":
            assert validate(c.text, guided)[0] and c.error is None, (c.text, c.error)
        elif not validate(c.text, guided)[0]:
            assert c.error and c.error.startswith(SCHEMA_INVALID)
    assert sum(c.finish_reason == "stop" for c in out) >= 4
    if guided.choice is not None:
        return  # one token each: too short to judge (inconclusive)
    by_id = {r.prompt_id: r for r in reqs}
    score = [
        ScoreRequest(c.prompt_id, by_id[c.prompt_id].messages, c.text, c.token_ids) for c in out
    ]
    honest = judge(eng.score(score, sampling, top_k=10, guided=guided), VerifyConfig())
    assert honest.status == "pass", honest.as_dict()
    # under the unconstrained baseline the same honest shard fails: the constraint matters
    plain = judge(eng.score(score, sampling, top_k=10), VerifyConfig())
    assert plain.status == "fail"
    # a hotter sampler under the same constraint is still caught
    hot = CheatingEngine(eng, "hot").generate(reqs, sampling, guided)
    cheat = [
        ScoreRequest(c.prompt_id, by_id[c.prompt_id].messages, c.text, c.token_ids) for c in hot
    ]
    verdict = judge(eng.score(cheat, sampling, top_k=10, guided=guided), VerifyConfig())
    assert verdict.status == "fail" and verdict.stats.z < -10, verdict.as_dict()


def test_a_guided_stage_unit_passes_its_stage_baseline_and_fails_without_it(
    vllm_cpu_engine, tmp_path
) -> None:
    """A multi-stage run's guided unit on vLLM, as `verify_shard` scores it: the stage's
    rows keep their sampled token ids, the baseline carries the stage's constraint and the
    prompts rendered from the plan; honest -> pass. The same rows scored without the
    constraint would flag the honest worker (issue 14)."""
    from synthgen.io.store import Store
    from synthgen.stages.multi import StageStep
    from synthgen.stages.plan import read_shard_rows, write_plan
    from synthgen.verify.baseline import score_requests, stage_baseline

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    cfg = RunConfig.model_validate(
        {
            "prompts": {"type": "builtin", "limit": 2},
            "shards": {"size": 2},
            "model": {"engine": "vllm", "device": "cpu", "vllm": {"multiprocessing": False}},
            "output": {"uri": str(tmp_path / "out")},
            "stages": [
                {
                    "name": "person",
                    "prompt": "Invent a person for this topic, as JSON: {{ prompt }}",
                    "guided": {"json_schema": schema},
                    "parse": "json",
                    "sampling": {"n": 2, "max_new_tokens": 32, "seed": 3},
                }
            ],
        }
    )
    store = Store(cfg.output)
    shard = write_plan(cfg, store).shards[0].shard_id
    step = StageStep(cfg, cfg.stages[0], shard, vllm_cpu_engine, "w")
    table = step.process(read_shard_rows(store, cfg.run_id or "", shard))
    assert table.num_rows == 4
    assert all(ids for ids in table.column("completion_ids").to_pylist())  # kept for scoring
    base = stage_baseline(cfg, store, "person", shard, table)
    assert base.guided is not None and not base.problems
    reqs = score_requests(table, base)
    assert all(r.completion_ids for r in reqs)
    honest = judge(
        vllm_cpu_engine.score(reqs, base.sampling, top_k=10, guided=base.guided), VerifyConfig()
    )
    assert honest.status == "pass", honest.as_dict()
    unconstrained = judge(vllm_cpu_engine.score(reqs, base.sampling, top_k=10), VerifyConfig())
    assert unconstrained.status == "fail", unconstrained.as_dict()
