"""vLLM on CPU: `sampling.n` samples in one request (one prefill, vLLM seeds sample i
`seed + i`) vs n separate requests with those seeds, same prompts, same engine, in one
invocation. Results: benchmarks/RESULTS-vllm.md ("n samples per prompt").

    .venv/bin/python benchmarks/bench_vllm_n.py [--prompts 16] [--new 64] [--n 4] [--rounds 2]

Each round runs both ways (the order alternates); prints completion tokens/s of each, the
ratio, and whether the two ways gave the same texts (they should: same seeds).
"""

from __future__ import annotations

import argparse
import json
import time

from _common import machine

from synthgen.config import ModelConfig, RunConfig, SamplingConfig, VllmOptions
from synthgen.engines.base import GenRequest, prompt_seed, sample_seed
from synthgen.engines.vllm import VllmEngine
from synthgen.stages.prompts import load_prompts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    eng = VllmEngine(
        ModelConfig(engine="vllm", device="cpu", vllm=VllmOptions(multiprocessing=False))
    )
    records = load_prompts(RunConfig()).records
    records = (records * (1 + args.prompts // len(records)))[: args.prompts]
    reqs = [
        GenRequest(f"{p.prompt_id}-{k}", p.messages, prompt_seed(1, f"{p.prompt_id}-{k}"))
        for k, p in enumerate(records)
    ]
    sampling = SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=args.new)
    many = sampling.model_copy(update={"n": args.n})
    separate = [
        GenRequest(r.prompt_id, r.messages, sample_seed(r.seed, i))
        for r in reqs
        for i in range(args.n)
    ]
    eng.generate(reqs[:2], sampling)  # warm-up
    rows = []
    for rnd in range(args.rounds):
        order = ["n", "separate"] if rnd % 2 == 0 else ["separate", "n"]
        res = {}
        for way in order:
            t0 = time.perf_counter()
            out = eng.generate(reqs, many) if way == "n" else eng.generate(separate, sampling)
            secs = time.perf_counter() - t0
            toks = sum(c.completion_tokens for c in out)
            res[way] = (secs, toks, [c.text for c in out])
        same = res["n"][2] == res["separate"][2]
        tps_n = res["n"][1] / res["n"][0]
        tps_s = res["separate"][1] / res["separate"][0]
        rows.append(
            {
                "round": rnd,
                "n_tok_s": round(tps_n, 1),
                "separate_tok_s": round(tps_s, 1),
                "ratio": round(tps_n / tps_s, 3),
                "tokens": [res["n"][1], res["separate"][1]],
                "same_texts": same,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": machine(), "args": vars(args)}))


if __name__ == "__main__":
    main()
