"""The vLLM engine inside the real shard pipeline (plan -> run_shard -> Parquet + ledger),
with a stand-in for vLLM's classes and a simulated RTX 4090, so the GPU path is exercised
end to end on CPU: engine cache, per-prompt seeds, one generate call per shard, records,
over-long prompt rejected and counted, GPU price matched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synthgen.config import config_from_dict
from synthgen.engines import cache, prompt_seed
from synthgen.engines.devices import DeviceInfo
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from tests import vllm_standin

RTX4090 = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 1, 23.6, (8, 9))


@pytest.fixture
def gpu_world(monkeypatch: pytest.MonkeyPatch):
    fake_vllm = vllm_standin.module()
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setattr("synthgen.engines.vllm.detect_vllm_device", lambda prefer="auto": RTX4090)
    cache.clear()
    yield fake_vllm
    cache.clear()


def test_run_shard_with_vllm_engine(gpu_world: object, tmp_path: Path) -> None:
    src = tmp_path / "prompts.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Explain topic number {i} briefly."} for i in range(5)]
    lines.append({"id": "huge", "prompt": "word " * 300})
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = config_from_dict(
        {
            "name": "gpu-e2e",
            "prompts": {"type": "jsonl", "path": str(src)},
            "shards": {"size": 3},
            "model": {"engine": "vllm", "path": "org/model-7b", "max_model_len": 128},
            "sampling": {"max_new_tokens": 16, "seed": 5},
            "output": {"uri": str(tmp_path / "out")},
        }
    )
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    assert [len(s) for s in plan.shards] == [3, 3]

    results = [run_shard(ShardTask(cfg.model_dump(mode="json"), s.shard_id)) for s in plan.shards]

    llm = vllm_standin.LLM.instances[-1]
    assert len(vllm_standin.LLM.instances) == 1  # loaded once per process, reused
    assert len(llm.calls) == 2  # one generate call per shard
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["max_num_seqs"] == 192
    sent_seeds = [p.seed for _, params in llm.calls for p in params]
    assert sent_seeds == [prompt_seed(5, f"q{i}") for i in range(5)]  # 'huge' never sent

    first, second = results
    assert (first.rows, first.rejected, second.rows, second.rejected) == (3, 0, 3, 1)
    assert second.drop_counts.get("rejected_prompt") == 1  # + whatever the filters drop
    assert first.device == "NVIDIA GeForce RTX 4090" and first.device_type == "RTX 4090"
    assert first.price_per_hour == cfg.cost.prices["RTX 4090"]
    assert first.completion_tokens > 0 and first.engine_seconds >= 0

    table = pq.read_table(second.file).to_pylist()
    huge = next(r for r in table if r["prompt_id"] == "huge")
    assert huge["finish_reason"] == "rejected" and huge["drop_reason"] == "rejected_prompt"
    assert "prompt_too_long" in huge["error"] and huge["completion_tokens"] == 0
    ok = [r for r in table if r["prompt_id"] != "huge"]
    assert all(r["engine"] == "vllm" and r["model"] == "org/model-7b" for r in ok)
    assert all(r["finish_reason"] in {"stop", "length"} and r["error"] is None for r in ok)
