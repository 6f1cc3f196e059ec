"""One short, prepared check on a CUDA machine: device detection, the transformers engine on
CUDA (dtype, seeded sampler, determinism, scoring), the sampler's cost per decoding step
against the per-row sampler it replaced and against transformers' own, throughput of the
engine and of the shard pipeline (`gpu_throughput.measure`) at a few batch sizes, and peak
GPU memory.

The model is SmolLM2-135M-Instruct's architecture and tokenizer with random weights: the
bundled weights (98 MB GGUF, 270 MB in bf16) are larger than what can be carried to the
device machine. Text quality is therefore meaningless here; tokens/s, memory and the engine
mechanics are those of the real architecture (random weights rarely emit EOS, so every row
runs to max_new_tokens).

    python3 benchmarks/gpu_device_check.py --model-files DIR [--out report.json]

DIR holds config.json and the tokenizer files of the model (what `dequantised_dir` wrote
under ~/.cache/synthgen/models/, without the weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def random_model(files: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    for f in files.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, target / f.name)
    config = AutoConfig.from_pretrained(target)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)


def old_per_row_sampler(scores: Any, generators: list[Any], temperature: float, top_p: float):
    """The sampler before this change: full sort, probabilities to the CPU, one multinomial
    per row with that row's generator."""
    import torch

    logits = scores.float() / temperature
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum - sorted_logits.softmax(dim=-1) > top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(dim=-1).cpu()
    return torch.stack(
        [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)]
    ).to(scores.device)


def time_ms(fn: Any, n: int = 50) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n * 1000


def sampler_row(batch: int, vocab: int, device: str) -> dict[str, Any]:
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from synthgen.config import SamplingConfig
    from synthgen.engines.sampling import draw

    s = SamplingConfig(temperature=0.7, top_p=0.95)
    scores = torch.randn(batch, vocab, device=device) * 4
    ids = torch.zeros(batch, 4, dtype=torch.long, device=device)
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]

    def new() -> Any:
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens])
        return draw(scores, s, u)

    def hf() -> Any:
        warped = TopPLogitsWarper(0.95)(ids, TemperatureLogitsWarper(0.7)(ids, scores))
        return torch.multinomial(warped.softmax(-1), 1)

    def old() -> Any:
        return old_per_row_sampler(scores, gens, 0.7, 0.95)

    return {
        "batch": batch,
        "synthgen_ms": round(time_ms(new), 3),
        "old_per_row_ms": round(time_ms(old, 10), 3),
        "transformers_topp_ms": round(time_ms(hf), 3),
    }


def engine_checks(model_dir: Path, device: str) -> dict[str, Any]:
    import torch

    from synthgen.config import ModelConfig, SamplingConfig
    from synthgen.engines.base import GenRequest, ScoreRequest
    from synthgen.engines.transformers import TransformersEngine

    eng = TransformersEngine(ModelConfig(path=str(model_dir), device=device, batch_size=8))
    s = SamplingConfig(max_new_tokens=24, temperature=0.7, top_p=0.95)
    reqs = [
        GenRequest(f"p{i}", [{"role": "user", "content": f"Tell me about topic {i}."}], 100 + i)
        for i in range(8)
    ]
    a = eng.generate(reqs, s)
    b = eng.generate(reqs, s)
    alone = eng.generate(reqs[3:4], s)
    greedy = SamplingConfig(max_new_tokens=24, temperature=0.0)
    g_batch = eng.generate(reqs, greedy)
    g_alone = eng.generate(reqs[3:4], greedy)
    scores = eng.score(
        [ScoreRequest(r.prompt_id, r.messages, c.text) for r, c in zip(reqs, a, strict=True)],
        s,
    )
    return {
        "engine_info": {
            "device": eng.info.device,
            "model": eng.info.model,
            "extra": eng.info.extra,
            "load_seconds": round(eng.info.load_seconds, 2),
        },
        "completion_tokens": [c.completion_tokens for c in a],
        "same_seed_same_text": [x.text for x in a] == [x.text for x in b],
        "sampled_row_alone_equals_in_batch": alone[0].text == a[3].text,
        "greedy_row_alone_equals_in_batch": g_alone[0].text == g_batch[3].text,
        "score_tokens": [sc.tokens for sc in scores],
        "score_mean_logprob": [round(sc.mean_logprob, 3) for sc in scores],
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-files", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--smoke-cpu", action="store_true", help="check the script here, tiny sizes")
    args = ap.parse_args()
    device = "cpu" if args.smoke_cpu else "cuda"

    import torch

    from synthgen.engines.devices import detect_device

    report: dict[str, Any] = {}

    def save() -> None:
        text = json.dumps(report, indent=2, default=str)
        print(text, flush=True)
        if args.out:
            args.out.write_text(text)

    dev = detect_device("auto")
    report["detect_device"] = dev.as_dict()
    report["cuda_available"] = torch.cuda.is_available()
    if dev.kind != "cuda" and not args.smoke_cpu:
        save()
        raise SystemExit("no CUDA device detected")
    with tempfile.TemporaryDirectory() as d:
        model_dir = Path(d) / "smollm2-135m-random"
        model_dir.mkdir()
        random_model(args.model_files, model_dir)
        peak = torch.cuda.max_memory_allocated if device == "cuda" else (lambda: 0)
        reset = torch.cuda.reset_peak_memory_stats if device == "cuda" else (lambda: None)
        report["engine"] = engine_checks(model_dir, device)
        save()
        sizes = (4,) if args.smoke_cpu else (32, 128, 256)
        report["sampler_ms_per_step"] = [sampler_row(b, 49152, device) for b in sizes]
        save()
        from gpu_throughput import make_config, measure, write_prompts

        tmp = Path(d)
        rows = []
        for batch in [int(b) for b in args.batches.split(",")]:
            from synthgen.engines import cache

            cache.clear()
            reset()
            ns = argparse.Namespace(
                device=device,
                batch_size=batch,
                shard_size=batch,
                max_new_tokens=args.max_new_tokens,
                transformers_model=str(model_dir),
                vllm_model=None,
            )
            run_dir = tmp / f"b{batch}"
            run_dir.mkdir()
            write_prompts(run_dir / "prompts.jsonl", args.prompts)
            row = measure(make_config(ns, "transformers", run_dir))
            row["batch"] = batch
            row["peak_gpu_memory_gib"] = round(peak() / 2**30, 2)
            rows.append(row)
            report["throughput"] = rows
            save()


if __name__ == "__main__":
    main()
