"""Engine efficiency: the full pipeline (Prefect flow + Dask LocalCluster + Parquet commit)
vs a bare transformers `generate` loop over the same prompts, model, batch size and
sampling, in the same invocation. Target: pipeline / bare >= 0.9.

Three measurements per round:
- `bare`: stock transformers sampling (`do_sample=True`, temperature, top-p) in this process;
- `bare+sampler`: the same loop with synthgen's per-prompt seeded sampler instead, so that
  `pipeline / bare+sampler` is the cost of the pipeline itself (cluster, Prefect, Parquet,
  model load in the worker), with the sampler's speed-up taken out;
- `pipeline`: `flows.run.execute` on a LocalCluster with one worker; tokens/s over the
  generate phase, which includes the worker's one-time model load (import + weights).

    .venv/bin/python benchmarks/bench_engine.py [--prompts 64] [--batch 32] [--new 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from _common import machine

from synthgen.config import config_from_dict
from synthgen.stages.prompts import load_prompts


def bare_loop(cfg, records, synthgen_sampler: bool = False) -> tuple[int, float]:
    """Plain transformers: chat template, left-padded batches, model.generate sampling
    (stock, or with synthgen's seeded sampler as the only logits processor)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    from synthgen.engines.transformers import _SeededSampler, bundled_model, dequantised_dir

    directory = dequantised_dir(*bundled_model())
    tok = AutoTokenizer.from_pretrained(directory)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    s = cfg.sampling
    torch.manual_seed(s.seed)
    tokens = 0
    started = time.perf_counter()
    for i in range(0, len(records), cfg.model.batch_size):
        batch = records[i : i + cfg.model.batch_size]
        texts = [
            tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            for r in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        if synthgen_sampler:
            seeds = [s.seed + i + k for k in range(len(batch))]
            sampling = {
                "do_sample": False,
                "temperature": None,
                "top_p": None,
                "top_k": None,
                "logits_processor": LogitsProcessorList([_SeededSampler(seeds, s)]),
            }
        else:
            sampling = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p}
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=s.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                **sampling,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        for row in new.tolist():
            eos = next((k for k, t in enumerate(row) if t == tok.eos_token_id), None)
            tokens += len(row) if eos is None else eos + 1
    return tokens, time.perf_counter() - started


def pipeline(cfg_dict) -> tuple[int, float, float, float]:
    """(completion tokens, generate-phase seconds, whole-call seconds, engine seconds)."""
    from flows.run import execute
    from synthgen.config import config_from_dict

    cfg = config_from_dict(cfg_dict)
    t0 = time.perf_counter()
    summary = execute(cfg)
    engine = sum(w["engine_seconds"] for w in summary["workers"])
    return (
        summary["completion_tokens"],
        summary["generate_seconds"],
        time.perf_counter() - t0,
        engine,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from flows.prefect_env import prefect_api

    with prefect_api(), tempfile.TemporaryDirectory() as tmp:
        base = {
            "name": "bench-engine",
            "prompts": {
                "type": "template",
                "templates": ["Write a short paragraph about {topic} for {audience}."],
                "topics": [f"topic number {i}" for i in range(args.prompts)],
                "audiences": ["children"],
            },
            "shards": {"size": args.batch},
            "model": {"engine": "transformers", "batch_size": args.batch},
            "sampling": {"max_new_tokens": args.new, "temperature": 0.7, "top_p": 0.95},
            "cluster": {"n_workers": 1, "threads_per_worker": 1},
        }
        cfg = config_from_dict(base)
        records = load_prompts(cfg).records
        rows = []
        for r in range(args.rounds):
            b_tok, b_sec = bare_loop(cfg, records)
            s_tok, s_sec = bare_loop(cfg, records, synthgen_sampler=True)
            d = json.loads(json.dumps(base))
            d["output"] = {"uri": f"{tmp}/out{r}"}
            p_tok, p_sec, p_wall, p_engine = pipeline(d)
            bare, same, pipe = b_tok / b_sec, s_tok / s_sec, p_tok / p_sec
            rows.append((bare, same, pipe))
            print(
                f"round {r}: bare {b_tok} tok in {b_sec:.1f}s = {bare:.1f} tok/s | "
                f"bare+sampler {s_tok} tok in {s_sec:.1f}s = {same:.1f} tok/s | "
                f"pipeline {p_tok} tok in {p_sec:.1f}s generate phase = {pipe:.1f} tok/s "
                f"(engine calls {p_engine:.1f}s = {p_tok / p_engine:.1f} tok/s; whole call incl. "
                f"plan/cluster start/publish {p_wall:.1f}s = {p_tok / p_wall:.1f} tok/s) | "
                f"pipeline/bare {pipe / bare:.3f}, pipeline/bare+sampler {pipe / same:.3f}",
                flush=True,
            )
    bare = sum(r[0] for r in rows) / len(rows)
    same = sum(r[1] for r in rows) / len(rows)
    pipe = sum(r[2] for r in rows) / len(rows)
    print(f"\nmachine: {machine()}")
    print(f"prompts={args.prompts} batch={args.batch} max_new_tokens={args.new}")
    print(
        f"mean bare {bare:.1f} tok/s, bare+sampler {same:.1f} tok/s, pipeline {pipe:.1f} tok/s; "
        f"pipeline/bare {pipe / bare:.3f}, pipeline/bare+sampler {pipe / same:.3f}"
    )


if __name__ == "__main__":
    main()
