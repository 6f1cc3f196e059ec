"""vLLM engine: config -> LLM/SamplingParams kwargs and RequestOutput -> Completion, with a
stand-in for vLLM's classes (tests/vllm_standin.py); one real test needs vllm + CUDA."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from synthgen.config import ModelConfig, SamplingConfig, VllmOptions
from synthgen.engines.base import GenRequest, InferenceEngine
from synthgen.engines.devices import DeviceInfo
from synthgen.engines.presets import load_presets, resolve_vllm_settings
from synthgen.engines.vllm import (
    VllmEngine,
    fit_prompt,
    import_vllm,
    llm_kwargs,
    sampling_kwargs,
    to_completion,
)
from synthgen.errors import EngineError, MissingDependencyError
from tests import vllm_standin

RTX4090 = DeviceInfo("cuda", "NVIDIA GeForce RTX 4090", 1, 23.6, (8, 9))
T4 = DeviceInfo("cuda", "Tesla T4", 1, 14.6, (7, 5))
CPU = DeviceInfo("cpu", "AMD EPYC", 2)


def model_cfg(**kw: object) -> ModelConfig:
    vllm = kw.pop("vllm", {})
    return ModelConfig(engine="vllm", path="org/some-model", vllm=VllmOptions(**vllm), **kw)


def engine(cfg: ModelConfig | None = None, device: DeviceInfo = RTX4090) -> VllmEngine:
    return VllmEngine(cfg or model_cfg(), device=device, vllm_module=vllm_standin.module())


def reqs(n: int, words: int = 3) -> list[GenRequest]:
    return [
        GenRequest(f"p{i}", [{"role": "user", "content": " ".join(["w"] * words) + f" {i}"}], 7 + i)
        for i in range(n)
    ]


# --------------------------------------------------------------------------- config -> kwargs
def test_llm_kwargs_from_preset_and_pins() -> None:
    cfg = model_cfg(vllm={"max_num_seqs": 7}, max_model_len=2048)
    settings = resolve_vllm_settings(cfg, RTX4090, load_presets())
    kw = llm_kwargs(settings, cfg)
    assert kw["model"] == "org/some-model"
    assert kw["dtype"] == "bfloat16"  # cc 8.9
    assert kw["gpu_memory_utilization"] == 0.90  # rtx-4090 preset
    assert kw["max_num_seqs"] == 7  # pinned wins over the preset's 192
    assert kw["max_model_len"] == 2048  # pinned wins over the preset's 4096
    assert kw["tensor_parallel_size"] == 1 and kw["seed"] == 0
    assert "quantization" not in kw  # no variant needed: size unknown for a hub id
    assert set(kw) <= vllm_standin.LLM_ARGS


def test_llm_kwargs_extra_wins_and_fp16_on_old_gpu() -> None:
    cfg = model_cfg(vllm={"extra": {"enable_prefix_caching": True, "max_num_seqs": 3}})
    kw = llm_kwargs(resolve_vllm_settings(cfg, T4, load_presets()), cfg)
    assert kw["dtype"] == "float16"  # cc 7.5 has no bf16
    assert kw["enable_prefix_caching"] is True and kw["max_num_seqs"] == 3
    assert kw["max_model_len"] == 2048  # generic preset


def test_sampling_kwargs_per_prompt_seed() -> None:
    s = SamplingConfig(temperature=0.5, top_p=0.9, top_k=40, max_new_tokens=33, seed=1)
    kw = sampling_kwargs(s, seed=99)
    assert kw == {
        "n": 1,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "max_tokens": 33,
        "seed": 99,
    }
    assert "top_k" not in sampling_kwargs(SamplingConfig(), seed=1)
    vllm_standin.SamplingParams(**kw)  # the names exist on SamplingParams


# --------------------------------------------------------------------------- length checks
def test_fit_prompt_reject_and_truncate() -> None:
    ids = list(range(40))
    assert fit_prompt(ids, 50, 10, "reject").rejected is False
    rej = fit_prompt(ids, 30, 10, "reject")
    assert rej.rejected and rej.note is not None and "prompt_too_long" in rej.note
    tr = fit_prompt(ids, 30, 10, "truncate")  # budget 20: head 12 + the last 8
    assert not tr.rejected and tr.original_tokens == 40
    assert tr.token_ids == list(range(12)) + list(range(32, 40))
    assert tr.note is not None and tr.note.startswith("prompt_truncated")
    # too little room to keep head and generation prompt: rejected even under truncate
    assert fit_prompt(ids, 26, 10, "truncate").rejected


# --------------------------------------------------------------------------- output mapping
def test_to_completion_maps_request_output() -> None:
    req = GenRequest("a", [{"role": "user", "content": "x"}], 1)
    fit = fit_prompt([1, 2, 3], 100, 10, "reject")
    out = vllm_standin.RequestOutput(
        "0", [1, 2, 3, 4], [vllm_standin.CompletionOutput(0, "hi there", [5, 6], "length")]
    )
    c = to_completion(req, out, fit)
    assert (c.prompt_id, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) == (
        "a",
        "hi there",
        4,
        2,
        "length",
    )
    assert c.error is None
    aborted = vllm_standin.RequestOutput(
        "0", [1], [vllm_standin.CompletionOutput(0, "", [], "abort")]
    )
    a = to_completion(req, aborted, fit)
    assert a.finish_reason == "rejected" and a.error is not None and "abort" in a.error


# --------------------------------------------------------------------------- engine
def test_engine_one_generate_call_per_shard_with_seeds() -> None:
    eng = engine()
    assert isinstance(eng, InferenceEngine)
    out = eng.generate(reqs(5), SamplingConfig(max_new_tokens=8))
    llm = vllm_standin.LLM.instances[-1]
    assert len(llm.calls) == 1  # the whole shard in one call
    prompts, params = llm.calls[0]
    assert [p.seed for p in params] == [7, 8, 9, 10, 11]
    assert all(p.max_tokens == 8 and p.n == 1 for p in params)
    assert [c.prompt_id for c in out] == ["p0", "p1", "p2", "p3", "p4"]
    # chat template applied: <user> + 4 words + <assistant>
    assert all(len(p["prompt_token_ids"]) == 6 for p in prompts)
    assert all(c.prompt_tokens == 6 and 0 < c.completion_tokens <= 8 for c in out)
    assert {c.finish_reason for c in out} <= {"stop", "length"}
    assert eng.info.engine == "vllm" and eng.info.extra["preset"] == "rtx-4090"
    assert eng.info.device == "NVIDIA GeForce RTX 4090"


def test_engine_over_long_prompt_rejected_not_raised() -> None:
    eng = engine(model_cfg(max_model_len=40))
    batch = reqs(2) + [GenRequest("long", [{"role": "user", "content": "w " * 100}], 1)]
    out = eng.generate(batch, SamplingConfig(max_new_tokens=8))
    assert [c.finish_reason != "rejected" for c in out] == [True, True, False]
    assert out[2].error is not None and "102 prompt tokens > 32 allowed" in out[2].error
    assert out[2].prompt_tokens == 102 and out[2].completion_tokens == 0
    assert len(vllm_standin.LLM.instances[-1].calls[0][0]) == 2  # never sent to vLLM
    assert eng.stats == {"prompts": 3, "rejected": 1, "truncated": 0}


def test_engine_over_long_prompt_truncated() -> None:
    eng = engine(model_cfg(max_model_len=40, long_prompts="truncate"))
    out = eng.generate(
        [GenRequest("long", [{"role": "user", "content": "w " * 100}], 1)],
        SamplingConfig(max_new_tokens=8),
    )
    assert out[0].finish_reason in {"stop", "length"} and out[0].prompt_tokens == 32
    assert out[0].error is not None and out[0].error.startswith("prompt_truncated")
    assert eng.stats["truncated"] == 1


def test_engine_all_rejected_makes_no_call() -> None:
    eng = engine(model_cfg(max_model_len=16))
    out = eng.generate(reqs(2, words=30), SamplingConfig(max_new_tokens=8))
    assert all(c.finish_reason == "rejected" for c in out)
    assert vllm_standin.LLM.instances[-1].calls == []


def test_engine_needs_cuda() -> None:
    with pytest.raises(EngineError, match="needs a CUDA GPU.*AMD EPYC"):
        engine(device=CPU)


def test_tensor_parallel_needs_enough_gpus() -> None:
    with pytest.raises(EngineError, match="tensor_parallel_size=2 but this worker sees 1"):
        engine(model_cfg(vllm={"tensor_parallel_size": 2}))


def test_engine_needs_model_path() -> None:
    with pytest.raises(ValueError, match="model.path"):
        VllmEngine(ModelConfig(engine="vllm"), device=RTX4090, vllm_module=vllm_standin.module())


def test_load_failure_names_model_and_device() -> None:
    cfg = model_cfg(vllm={"extra": {"no_such_arg": 1}})
    with pytest.raises(EngineError, match="org/some-model on NVIDIA GeForce RTX 4090"):
        engine(cfg)


def test_missing_vllm_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'synthgen\[gpu\]'"):
        import_vllm()
    with pytest.raises(ImportError):  # also the builtin
        VllmEngine(model_cfg(), device=RTX4090)


# --------------------------------------------------------------------------- real vLLM
def _real_vllm_skip_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'synthgen[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device visible (torch.cuda.is_available() is False)"
    if not os.environ.get("SYNTHGEN_VLLM_TEST_MODEL"):
        return "SYNTHGEN_VLLM_TEST_MODEL (a local model directory) is not set; no downloads"
    return None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_real_vllm_skip_reason() is not None, reason=str(_real_vllm_skip_reason()))
def test_real_vllm_generates() -> None:
    path = os.environ["SYNTHGEN_VLLM_TEST_MODEL"]
    eng = VllmEngine(
        ModelConfig(engine="vllm", path=path, max_model_len=512, vllm=VllmOptions(max_num_seqs=8))
    )
    try:
        out = eng.generate(reqs(3), SamplingConfig(max_new_tokens=16, temperature=0.0))
        assert len(out) == 3
        assert all(c.completion_tokens > 0 and c.completion_tokens <= 16 for c in out)
        assert all(c.finish_reason in {"stop", "length"} for c in out)
    finally:
        eng.close()
