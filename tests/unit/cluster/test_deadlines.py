"""Shard deadlines (synthgen.cluster.deadlines): from the engine before any commit, from the
run's measured tokens/s per worker after; the attempt watch asks per attempt and worker."""

from __future__ import annotations

import pytest

from synthgen.cluster.deadlines import LOAD_ALLOWANCE_S, PRIOR_TOKENS_PER_S, DeadlinePolicy
from synthgen.config import config_from_dict
from synthgen.io.attempts import AttemptWatch
from synthgen.io.store import Store
from tests.helpers import fake_config


def _policy(tmp_path, prompts=None, **kw):
    cfg = config_from_dict(fake_config(str(tmp_path / "o"), **kw))
    return DeadlinePolicy(cfg, prompts or {"shard-00000": 10, "shard-00001": 20})


def _done(worker, tokens, wall):
    return {"status": "done", "worker": worker, "completion_tokens": tokens, "wall_seconds": wall}


def test_the_fake_engine_is_its_own_prior_and_the_floor_holds(tmp_path) -> None:
    p = _policy(
        tmp_path,
        model__fake__seconds_per_token=0.01,
        model__fake__seconds_per_shard=2.0,
        model__fake__tokens_per_completion=8,
        sampling__max_new_tokens=16,
        sampling__n=2,
        cluster__deadline_floor_s=5,
    )
    # 20 prompts x 2 samples x 8 tokens x 0.01 s + 2 s
    assert p.expected_s("shard-00001", "w1") == pytest.approx(5.2)
    assert p.deadline_s("shard-00001", "w1") == pytest.approx(3 * 5.2)  # fake: no load
    assert p.deadline_s("shard-00000", "w1") == pytest.approx(max(5, 3 * (1.6 + 2.0)))
    assert _policy(tmp_path).deadline_s("shard-00000", "w1") == 60.0  # no simulated time


def test_measured_tokens_per_s_per_worker_replace_the_prior(tmp_path) -> None:
    p = _policy(
        tmp_path,
        model__engine="transformers",
        sampling__max_new_tokens=100,
        cluster__deadline_floor_s=1,
    )
    # before any commit: max_new_tokens per prompt at the conservative CPU prior, plus load
    prior = PRIOR_TOKENS_PER_S[("transformers", "cpu")]
    assert p.expected_s("shard-00000", "w1") == pytest.approx(10 * 100 / prior)
    load = LOAD_ALLOWANCE_S["transformers"]
    assert p.deadline_s("shard-00000", "w1") == pytest.approx(3 * 1000 / prior + load)
    # w1 commits shard 0: 10 prompts gave 400 tokens in 4 s (100 tokens/s, 40 per prompt)
    p.observe("shard-00000", _done("w1", 400, 4.0))
    assert p.expected_s("shard-00001", "w1") == pytest.approx(20 * 40 / 100)
    assert p.deadline_s("shard-00001", "w1") == pytest.approx(3 * 8.0)  # warm: no load
    # a worker not yet measured: the slowest measured rate, and its engine may be loading
    p.observe("shard-00001", _done("w2", 400, 8.0))  # w2: 50 tokens/s
    assert p.tokens_per_s("generate", "w3") == pytest.approx(50)
    per_prompt = 800 / 30  # both commits: 800 tokens from 30 plan prompts
    assert p.deadline_s("shard-00001", "w3") == pytest.approx(3 * 20 * per_prompt / 50 + load)
    assert p.describe()["tokens_per_s"] == {"w1": 100.0, "w2": 50.0}
    # failed or superseded attempts measure nothing
    p.observe("shard-00001", {**_done("w1", 1, 100.0), "status": "superseded"})
    assert p.tokens_per_s("generate", "w1") == pytest.approx(100)


def test_a_fixed_shard_timeout_wins_and_load_allowance_is_configurable(tmp_path) -> None:
    assert _policy(tmp_path, cluster__shard_timeout_s=7).deadline_s("shard-00000", "w") == 7
    p = _policy(tmp_path, model__engine="vllm", cluster__deadline_load_s=30)
    assert p.load_allowance_s("shard-00000", "w") == 30


def test_attempt_watch_asks_the_deadline_of_each_attempt_with_its_worker(tmp_path) -> None:
    store = Store(config_from_dict(fake_config(str(tmp_path / "o"))).output)
    now = [100.0]
    asked = []

    def deadline(shard: str, worker: str) -> float:
        asked.append((shard, worker))
        return 5.0 if worker == "fast" else 50.0

    watch = AttemptWatch(store, "r", deadline, clock=lambda: now[0])
    store.write_json(store.run_path("r", "attempts", "shard-00000.1.abcd.json"), {"worker": "fast"})
    store.write_json(store.run_path("r", "attempts", "shard-00001.1.abcd.json"), {"worker": "slow"})
    watch.poll()
    assert watch.worker("shard-00000") == "fast" and watch.worker("shard-00001") == "slow"
    now[0] = 106.0
    assert watch.overdue("shard-00000") == 1
    assert watch.overdue("shard-00001") is None
    assert ("shard-00001", "slow") in asked
