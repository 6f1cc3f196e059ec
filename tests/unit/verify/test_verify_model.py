"""Verification with the bundled SmolLM2 model on CPU (issue 8): scoring separates honest
completions from every cheating strategy, and the flow catches a cheating worker end to end."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from synthgen.cluster.client import workers_info
from synthgen.config import ModelConfig, RunConfig, SamplingConfig
from synthgen.engines.base import GenRequest, ScoreRequest, prompt_seed
from synthgen.stages.prompts import load_prompts
from tests.helpers import local_cluster, verdict_of, write_config
from tests.support.cheats import STRATEGIES, CheatingEngine, install_cheat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    from synthgen.engines.transformers import TransformersEngine

    eng = TransformersEngine(ModelConfig(batch_size=8, cpu_threads=1))
    yield eng
    eng.close()


def _requests(n: int, base_seed: int) -> list[GenRequest]:
    prompts = load_prompts(RunConfig()).records[:n]
    return [
        GenRequest(p.prompt_id, p.messages, prompt_seed(base_seed, p.prompt_id)) for p in prompts
    ]


def test_honest_completions_score_like_an_honest_sampler(engine):
    sampling = SamplingConfig(max_new_tokens=16)
    verdict, scores = verdict_of(engine, engine, _requests(3, 11), sampling)
    assert verdict.status == "pass", verdict.reasons
    assert verdict.stats is not None and abs(verdict.stats.z) < 4
    assert all(s.tokens > 0 and s.outside_fraction is not None for s in scores)
    assert verdict.stats.topk_fraction > 0.85
    # the score is the same whether a record is scored alone or in a batch
    alone = engine.score([ScoreRequest(scores[0].prompt_id, _requests(1, 11)[0].messages, "Hi")])
    batch = engine.score(
        [
            ScoreRequest(r.prompt_id, r.messages, "Hi")
            for r in _requests(3, 11)  # different prompt lengths: left padding
        ]
    )
    assert alone[0].mean_logprob == pytest.approx(batch[0].mean_logprob, abs=1e-3)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_cheating_strategy_fails_the_check(engine, strategy):
    # enough prompts and tokens that even a cheater whose completions stop early gives the
    # judge verify.min_tokens to decide on
    sampling = SamplingConfig(max_new_tokens=24)
    cheater = CheatingEngine(engine, strategy, seed=1)
    verdict, _ = verdict_of(engine, cheater, _requests(4, 12), sampling)
    assert verdict.status == "fail", (strategy, verdict.as_dict())
    assert verdict.stats is not None and verdict.stats.z is not None and verdict.stats.z < -5


def test_flow_with_bundled_model_catches_a_shuffling_worker(tmp_path, prefect_api):
    from flows.run import synthgen_run

    with local_cluster(2) as (cluster, client):
        cheater = sorted(workers_info(client))[0]
        client.run(install_cheat, "shuffle", workers=[cheater])
        out = tmp_path / "out"
        cfg = {
            "name": "vm",
            "prompts": {"type": "builtin", "limit": 8},
            "shards": {"size": 2},
            "model": {"engine": "transformers", "batch_size": 4, "cpu_threads": 1},
            "sampling": {"max_new_tokens": 12},
            "cluster": {"address": cluster.scheduler_address},
            "output": {"uri": str(out)},
            "verify": {"enabled": True},
            "clean": {"enabled": False},  # 12-token completions would fail quality filters
        }
        res = synthgen_run(config=write_config(tmp_path / "c.yaml", cfg))

    run_dir = out / "runs" / res["run_id"]
    attempts = [json.loads(p.read_text()) for p in (run_dir / "attempts").glob("*.json")]
    assert any(a["worker"] == cheater for a in attempts), "the cheater got no shard"
    assert res["status"] == "complete"
    v = res["verification"]
    assert v["flagged_workers"] == [cheater]
    assert v["quarantined"] and all(q["generator"] == cheater for q in v["quarantined"])
    table = ds.dataset(out / "dataset" / "data", format="parquet").to_table()
    assert table.num_rows == 8 and cheater not in set(table["worker"].to_pylist())
    assert set(table["model"].to_pylist()) == {"SmolLM2-135M-Instruct"}
    assert v["verify_seconds"] > 0 and v["generate_engine_seconds"] > 0
