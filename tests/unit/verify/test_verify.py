"""Verification library (issue 8): sampling, statistics, verdicts, fake scoring, quarantine."""

from __future__ import annotations

import math

import pytest

from synthgen.config import RunConfig, SamplingConfig, VerifyConfig, config_from_dict
from synthgen.engines import cache
from synthgen.engines.base import Score, ScoreRequest, ScoringEngine
from synthgen.engines.fake import FakeEngine
from synthgen.errors import ConfigError
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.verify import aggregate, choose_sample, judge, sample_size
from synthgen.verify.calibrate import calibrate
from synthgen.verify.check import VerifyTask, distrust_shard, verify_path, verify_shard
from tests.support.cheats import CheatingEngine, committed_shard, install_cheat, remove_cheat


# ------------------------------------------------------------------ sampling
def test_sample_size_uses_rate_minimum_and_caps():
    cfg = VerifyConfig(sample_rate=0.02, min_per_shard=3)
    assert sample_size(10, cfg) == 3  # the minimum wins on small shards
    assert sample_size(1000, cfg) == 20  # 2 %
    assert sample_size(2, cfg) == 2  # never more than the shard has
    assert sample_size(0, cfg) == 0
    assert sample_size(1000, VerifyConfig(max_per_shard=5)) == 5


def test_choose_sample_is_seeded_sorted_and_unique():
    cfg = VerifyConfig(sample_rate=0.1, min_per_shard=3)
    a = choose_sample(100, cfg, seed=7)
    assert a == choose_sample(100, cfg, seed=7)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= i < 100 for i in a)
    others = {tuple(choose_sample(100, cfg, seed=s)) for s in range(20)}
    assert len(others) > 15  # a different secret picks different records


def test_verify_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="verify.sample_rate"):
        config_from_dict({"verify": {"sample_rate": 1.5}})
    with pytest.raises(ConfigError, match="verify.bogus: unknown key"):
        config_from_dict({"verify": {"bogus": 1}})
    cfg = config_from_dict({}, ["verify.enabled=true", "verify.min_z=-6"])
    assert cfg.verify.enabled and cfg.verify.min_z == -6 and cfg.verify.sample_rate == 0.02


# ------------------------------------------------------------------ statistics
def _score(pid: str, obs: float, exp: float, std: float, n: int, topk: float = 0.97) -> Score:
    return Score(pid, obs, topk, n, exp, std, 0.0)


def test_aggregate_z_combines_records_token_weighted():
    # record 1: sum diff = (-1.0 - -0.9) * 10 = -1, var = (0.05*10)^2 = 0.25
    # record 2: sum diff = (-0.8 - -0.9) * 20 = +2, var = (0.02*20)^2 = 0.16
    agg = aggregate([_score("a", -1.0, -0.9, 0.05, 10), _score("b", -0.8, -0.9, 0.02, 20)])
    assert agg.tokens == 30
    assert agg.mean_logprob == pytest.approx((-10 - 16) / 30)
    assert agg.expected_logprob == pytest.approx(-0.9)
    assert agg.z == pytest.approx(1.0 / math.sqrt(0.41))


def test_judge_passes_honest_and_fails_low_z_or_low_topk():
    cfg = VerifyConfig(min_z=-5, min_topk_fraction=0.8)
    honest = [_score(f"p{i}", -0.9, -0.9, 0.03, 30) for i in range(3)]
    v = judge(honest, cfg)
    assert v.status == "pass" and v.passed and not v.reasons

    cheat = [_score(f"p{i}", -2.5, -0.9, 0.03, 30, topk=0.6) for i in range(3)]
    v = judge(cheat, cfg)
    assert v.status == "fail" and not v.passed
    assert any("z-score" in r for r in v.reasons) and any("top-10" in r for r in v.reasons)

    # an engine without expectations (vLLM top-logprobs only) still gets the top-k test
    bare = [Score("x", -2.0, 0.5, 40)]
    v = judge(bare, cfg)
    assert v.status == "fail" and v.stats is not None and v.stats.z is None


def test_judge_inconclusive_on_too_few_tokens_and_absolute_floor():
    cfg = VerifyConfig(min_tokens=8, min_mean_logprob=-3.0)
    assert judge([_score("a", -9.0, -1.0, 0.1, 3)], cfg).status == "inconclusive"
    assert judge([], cfg).status == "inconclusive"
    v = judge([Score("a", -4.0, 0.99, 20)], cfg)
    assert v.status == "fail" and "min_mean_logprob" in v.reasons[0]


def test_calibrate_suggests_thresholds_below_every_honest_shard():
    honest = [aggregate([_score("a", -0.9 + d, -0.9, 0.05, 20)]) for d in (-0.1, 0.0, 0.05)]
    cal = calibrate(honest)
    assert cal.shards == 3 and cal.min_z_seen == pytest.approx(-2.0)
    assert cal.suggested_min_z <= -4.0 and cal.suggested_min_z <= cal.min_z_seen
    assert cal.suggested_min_topk_fraction < cal.min_topk_seen
    with pytest.raises(ValueError, match="no honest"):
        calibrate([])


def test_token_stats_expectation_and_support():
    torch = pytest.importorskip("torch")
    from synthgen.engines.tokenstats import token_stats

    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.49, 0.01]]))
    targets = torch.tensor([0, 2])
    st = token_stats(logits, targets, top_k=2, sampling=SamplingConfig(temperature=1.0, top_p=0.8))
    assert st.tokens == 2 and st.in_topk == 1  # token 2 is third at position 2
    assert st.sum_logprob == pytest.approx(math.log(0.6) + math.log(0.01), rel=1e-5)
    # top_p=0.8 keeps {0,1} at both positions: q = (2/3, 1/3) and (0.5/0.99, 0.49/0.99)
    e1 = (0.6 * math.log(0.6) + 0.3 * math.log(0.3)) / 0.9
    e2 = (0.5 * math.log(0.5) + 0.49 * math.log(0.49)) / 0.99
    assert st.sum_expected == pytest.approx(e1 + e2, rel=1e-4)
    assert st.outside == 1  # token 2 could not be sampled at position 2
    greedy = token_stats(logits, targets, top_k=1, sampling=SamplingConfig(temperature=0))
    assert greedy.sum_variance == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="2 logit rows for 1 target"):
        token_stats(logits, targets[:1], top_k=1)


# ------------------------------------------------------------------ fake engine scoring
def test_fake_engine_scores_its_own_text_as_honest_and_foreign_text_as_impossible():
    from synthgen.config import ModelConfig
    from synthgen.engines.base import GenRequest

    engine = FakeEngine(ModelConfig(engine="fake"))
    assert isinstance(engine, ScoringEngine)
    msgs = [{"role": "user", "content": "hi"}]
    comps = engine.generate([GenRequest(f"p{i}", msgs, i) for i in range(3)], SamplingConfig())
    honest = engine.score([ScoreRequest(c.prompt_id, msgs, c.text) for c in comps])
    assert judge(honest, VerifyConfig()).status == "pass"
    assert all(s.topk_fraction == 1.0 and s.tokens == 16 for s in honest)
    foreign = engine.score([ScoreRequest("x", msgs, "Completely unrelated words here " * 4)])
    v = judge(foreign, VerifyConfig())
    assert v.status == "fail" and v.stats is not None and v.stats.z is not None
    assert v.stats.z < -1000


# ------------------------------------------------------------------ worker-side check
def _committed_shard(tmp_path, cheat: str | None = None) -> tuple[RunConfig, Store, str]:
    return committed_shard(str(tmp_path / "out"), cheat)


def test_verify_shard_passes_honest_shard_and_writes_a_priced_record(tmp_path):
    cfg, store, sid = _committed_shard(tmp_path)
    res = verify_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 1))
    assert res.status == "pass" and res.sampled == 3 and res.records == 6
    assert res.generator and res.verifier and res.device
    assert res.verify_seconds >= 0 and res.price_per_hour > 0
    record = store.read_json(verify_path(store, cfg.run_id, sid, 1))
    assert record["verdict"]["passed"] is True and record["sample_seed"] == 3
    assert len(record["scores"]) == 3 and record["generation_engine_seconds"] is not None
    assert store.exists(RunLayout(store, cfg.run_id).stage().commit(sid))  # still committed
    # a check for an attempt that is no longer the committed one is stale
    assert verify_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 2)).status == "stale"


def test_verify_shard_quarantines_a_cheating_shard(tmp_path):
    cfg, store, sid = _committed_shard(tmp_path, cheat="pool")
    run_id = cfg.run_id or ""
    res = verify_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 1))
    assert res.status == "fail" and res.reasons
    assert not store.exists(RunLayout(store, run_id).stage().commit(sid))  # no longer committed
    assert not store.exists(RunLayout(store, run_id).stage().shard(sid))  # out of shards/
    names = store.ls(store.run_path(run_id, "quarantine"))
    assert names == [f"{sid}.a1.json", f"{sid}.a1.parquet"]
    audit = store.read_json(store.run_path(run_id, "quarantine", f"{sid}.a1.json"))
    assert audit["verdict"]["status"] == "fail" and audit["marker"]["result"]["attempt"] == 1
    quarantined = store.read_table(store.run_path(run_id, "quarantine", f"{sid}.a1.parquet"))
    assert quarantined.num_rows == 6
    # regenerating is an ordinary new attempt that then passes
    run_shard(ShardTask(cfg.model_dump(mode="json"), sid))
    again = verify_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 2))
    assert again.status == "pass" and again.attempt == 2


def test_verify_refuses_a_shard_file_that_does_not_match_its_marker(tmp_path):
    cfg, store, sid = _committed_shard(tmp_path)
    path = RunLayout(store, cfg.run_id or "").stage().shard(sid)
    store.write_bytes(path, store.read_bytes(path) + b"tampered")
    res = verify_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 1))
    # never scored: the shard is withdrawn (regenerated), its worker is not blamed
    assert res.status == "withdrawn" and "does not match its commit marker" in res.reasons[0]
    assert not store.exists(RunLayout(store, cfg.run_id or "").stage().commit(sid))


def test_distrust_quarantines_without_scoring(tmp_path):
    cfg, store, sid = _committed_shard(tmp_path)
    res = distrust_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 1), "flagged worker w")
    assert res.status == "distrusted" and res.reasons == ["flagged worker w"]
    assert not store.exists(RunLayout(store, cfg.run_id or "").stage().commit(sid))
    again = distrust_shard(VerifyTask(cfg.model_dump(mode="json"), sid, 1), "again")
    assert again.status == "stale"


def test_cheating_engine_strategies_on_the_fake_engine():
    from synthgen.config import ModelConfig
    from synthgen.engines.base import GenRequest

    inner = FakeEngine(ModelConfig(engine="fake"))
    msgs = [{"role": "user", "content": "hi"}]
    reqs = [GenRequest(f"p{i}", msgs, i) for i in range(4)]
    honest = [c.text for c in inner.generate(reqs, SamplingConfig())]
    replay = [c.text for c in CheatingEngine(inner, "replay").generate(reqs, SamplingConfig())]
    assert replay == honest[1:] + honest[:1]
    shuffled = CheatingEngine(inner, "shuffle").generate(reqs, SamplingConfig())
    assert [sorted(c.text.split()) for c in shuffled] != [h.split() for h in honest]
    with pytest.raises(ValueError, match="cheat strategy 'nope'"):
        CheatingEngine(inner, "nope")
    with pytest.raises(ValueError, match="needs a transformers or vLLM engine"):
        CheatingEngine(inner, "small").generate(reqs, SamplingConfig())


def test_install_cheat_wraps_newly_built_engines_until_removed():
    from synthgen.config import ModelConfig

    cfg = ModelConfig(engine="fake", path="wrap-test")
    try:
        install_cheat("pool")
        assert isinstance(cache.get_engine(cfg), CheatingEngine)
    finally:
        remove_cheat()
    assert isinstance(cache.get_engine(cfg), FakeEngine)


def test_one_fabricated_record_fails_the_shard_through_its_own_z():
    # shard z is diluted by two honest records: (-7 + 0 + 0) / sqrt(3) = -4.0 > min_z -6 ...
    scores = [_score("bad", -1.7, -1.0, 0.1, 10)] + [
        _score(f"ok{i}", -1.0, -1.0, 0.1, 10) for i in range(2)
    ]
    agg = aggregate(scores)
    assert agg.z == pytest.approx(-7 / math.sqrt(3))
    assert agg.record_z == pytest.approx([-7.0, 0.0, 0.0]) and agg.min_record_z == pytest.approx(-7)
    assert judge(scores, VerifyConfig(min_record_z=None)).status == "pass"
    # ... but the fabricated record's own z (-7) is below min_record_z (-6)
    v = judge(scores, VerifyConfig())
    assert v.status == "fail" and "min_record_z" in v.reasons[0]
