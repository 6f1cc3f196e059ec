"""Tokens/s of the bare engine vs the full shard pipeline on the same device, and the ratio.

The same prompts, seeds and shard sizes go through (1) the engine alone: one
`engine.generate` call per shard-sized chunk, and (2) the pipeline: plan written to storage,
then `synthgen.stages.generate.run_shard` per shard (read plan, generate, build records, write the
Parquet shard, ledger row and commit marker). Both reuse the same loaded engine (the
per-process cache), so load time is excluded from both; the ratio is what the pipeline
keeps of the engine's throughput. Runs the transformers engine on CUDA, and vLLM when it is
installed and `--vllm-model` names a local model directory.

    python benchmarks/gpu_throughput.py                         # transformers on cuda (+ vllm)
    python benchmarks/gpu_throughput.py --device cpu --prompts 16 --max-new-tokens 16  # smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from synthgen.config import RunConfig, config_from_dict
from synthgen.engines import GenRequest, get_engine, prompt_seed
from synthgen.engines.devices import detect_device
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import read_shard_prompts, write_plan

TOPICS = [
    "photosynthesis", "the water cycle", "binary search", "compound interest", "volcanoes",
    "the printing press", "vaccines", "black holes", "supply and demand", "plate tectonics",
    "neural networks", "the Roman Empire", "recycling", "tides", "prime numbers", "jazz",
]  # fmt: skip


def write_prompts(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            fh.write(json.dumps({"id": f"b{i:05d}", "prompt": f"Explain {topic} ({i})."}) + "\n")


def make_config(args: argparse.Namespace, engine: str, tmp: Path) -> RunConfig:
    model: dict[str, Any] = {"engine": engine, "device": args.device}
    if engine == "transformers":
        model["batch_size"] = args.batch_size
        if args.transformers_model:
            model["path"] = args.transformers_model
    else:
        model["path"] = args.vllm_model
    return config_from_dict(
        {
            "name": f"bench-{engine}",
            "prompts": {"type": "jsonl", "path": str(tmp / "prompts.jsonl")},
            "shards": {"size": args.shard_size},
            "model": model,
            "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": 0.7, "seed": 1},
            "output": {"uri": str(tmp / f"out-{engine}")},
        }
    )


def measure(cfg: RunConfig) -> dict[str, Any]:
    store = Store(cfg.output)
    plan = write_plan(cfg, store)
    run_id = cfg.run_id or ""
    t0 = time.perf_counter()
    engine = get_engine(cfg.model)  # loaded once, reused by both measurements
    load_s = time.perf_counter() - t0
    chunks = [read_shard_prompts(store, run_id, s.shard_id) for s in plan.shards]
    warm = [GenRequest(p.prompt_id, p.messages, 0) for p in chunks[0][:2]]
    engine.generate(warm, cfg.sampling)  # warm-up (CUDA kernels, allocator)

    t0 = time.perf_counter()
    bare_tokens = 0
    for prompts in chunks:
        reqs = [
            GenRequest(p.prompt_id, p.messages, prompt_seed(cfg.sampling.seed, p.prompt_id))
            for p in prompts
        ]
        bare_tokens += sum(c.completion_tokens for c in engine.generate(reqs, cfg.sampling))
    bare_s = time.perf_counter() - t0

    config = cfg.model_dump(mode="json")
    t0 = time.perf_counter()
    results = [run_shard(ShardTask(config, s.shard_id)) for s in plan.shards]
    pipe_s = time.perf_counter() - t0
    pipe_tokens = sum(r.completion_tokens for r in results)
    bare_tps, pipe_tps = bare_tokens / bare_s, pipe_tokens / pipe_s
    return {
        "engine": cfg.model.engine,
        "model": engine.info.model,
        "device": engine.info.device,
        "load_s": round(load_s, 2),
        "shards": len(plan.shards),
        "prompts": plan.prompts,
        "bare_tokens": bare_tokens,
        "bare_s": round(bare_s, 2),
        "bare_tokens_per_s": round(bare_tps, 1),
        "pipeline_tokens": pipe_tokens,
        "pipeline_s": round(pipe_s, 2),
        "pipeline_tokens_per_s": round(pipe_tps, 1),
        "pipeline_over_bare": round(pipe_tps / bare_tps, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="transformers batch size")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--transformers-model", default=None, help="local HF dir; unset = bundled")
    ap.add_argument("--vllm-model", default=None, help="local model dir for the vLLM run")
    ap.add_argument("--engines", default="transformers,vllm")
    args = ap.parse_args()

    dev = detect_device(args.device)
    if args.device == "cuda" and dev.kind != "cuda":
        raise SystemExit("no CUDA device visible: nothing to measure (use --device cpu to smoke)")
    print(f"device: {dev.label} memory={dev.memory_gb} cc={dev.compute_capability}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_prompts(tmp / "prompts.jsonl", args.prompts)
        for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
            if engine == "vllm":
                if importlib.util.find_spec("vllm") is None:
                    print("vllm: skipped (not installed: pip install 'synthgen[gpu]')")
                    continue
                if not args.vllm_model or args.device != "cuda":
                    print("vllm: skipped (needs --vllm-model DIR and --device cuda)")
                    continue
            row = measure(make_config(args, engine, tmp))
            rows.append(row)
            print(json.dumps(row))
    print("\n| engine | device | prompts | bare tok/s | pipeline tok/s | pipeline/bare |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['engine']} | {r['device']} | {r['prompts']} | {r['bare_tokens_per_s']} | "
            f"{r['pipeline_tokens_per_s']} | {r['pipeline_over_bare']} |"
        )


if __name__ == "__main__":
    main()
