"""Verification benchmark (issue 8): false alarms, detection per cheating strategy, cost.

With the bundled SmolLM2-135M-Instruct on CPU through the transformers engine:

- honest shards: N shards, each with its own base seed and its own random prompts; each is
  judged on the records a spot check would sample (`--per-shard`, the default
  `verify.min_per_shard`). A failed honest shard is a false alarm.
- cheating shards: M shards per strategy (`tests/support/cheats.py`), judged the same way.
- cost: engine seconds to score vs. to generate the same records, and from those the
  verification cost of a shard of `--shard-size` records at `verify.sample_rate`.
- calibration: thresholds `synthgen.verify.calibrate` suggests from the honest shards.

Only the sampled records of a shard matter for its verdict, so only those are generated.
Requests of many shards share a batch (each carries its own seed: batching does not change
a completion). Run from the repository root:

    python benchmarks/bench_verify.py --honest 60 --cheat 20
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from _common import machine

from synthgen.config import ModelConfig, RunConfig, SamplingConfig, VerifyConfig
from synthgen.engines.base import GenRequest, ScoreRequest, prompt_seed
from synthgen.stages.prompts import load_prompts
from synthgen.verify import judge, sample_size
from synthgen.verify.calibrate import calibrate
from tests.support.cheats import STRATEGIES, CheatingEngine


def make_shards(n: int, per_shard: int, prompts: list, salt: int) -> list[list[GenRequest]]:
    shards = []
    for i in range(n):
        rng = random.Random(salt * 100_003 + i)
        base = salt * 1_000_003 + i  # each shard: its own base seed
        picked = rng.sample(prompts, per_shard)
        shards.append(
            [GenRequest(p.prompt_id, p.messages, prompt_seed(base, p.prompt_id)) for p in picked]
        )
    return shards


def run_shards(engine, scorer, shards, sampling, vcfg, batch: int):
    """Generate every shard's records (batched across shards), score, judge per shard."""
    flat = [r for s in shards for r in s]
    t0 = time.perf_counter()
    comps = []
    for i in range(0, len(flat), batch):
        comps += engine.generate(flat[i : i + batch], sampling)
    gen_s = time.perf_counter() - t0
    reqs = [ScoreRequest(r.prompt_id, r.messages, c.text) for r, c in zip(flat, comps, strict=True)]
    t0 = time.perf_counter()
    scores = []
    for i in range(0, len(reqs), batch):
        scores += scorer.score(reqs[i : i + batch], sampling, top_k=vcfg.top_k)
    score_s = time.perf_counter() - t0
    verdicts, k = [], 0
    for s in shards:
        verdicts.append(judge(scores[k : k + len(s)], vcfg))
        k += len(s)
    gen_tokens = sum(c.completion_tokens for c in comps)
    return verdicts, gen_s, score_s, len(flat), gen_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--honest", type=int, default=60, help="honest shards")
    ap.add_argument("--cheat", type=int, default=20, help="shards per cheating strategy")
    ap.add_argument("--per-shard", type=int, default=3, help="records sampled per shard")
    ap.add_argument("--new", type=int, default=32, help="max_new_tokens")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--shard-size", type=int, default=200, help="records per shard (cost)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from synthgen.engines.transformers import TransformersEngine

    vcfg = VerifyConfig(min_per_shard=args.per_shard)
    sampling = SamplingConfig(max_new_tokens=args.new)  # the defaults: T=0.7, top_p=0.95
    engine = TransformersEngine(ModelConfig(batch_size=args.batch, cpu_threads=args.threads))
    prompts = load_prompts(RunConfig()).records
    print(f"machine: {machine()}; model {engine.info.model}; {len(prompts)} prompts")
    print(
        f"sampling T={sampling.temperature} top_p={sampling.top_p} max_new_tokens={args.new}; "
        f"{args.per_shard} records judged per shard; min_z={vcfg.min_z} "
        f"min_record_z={vcfg.min_record_z} "
        f"min_topk_fraction={vcfg.min_topk_fraction} top_k={vcfg.top_k}"
    )
    out: dict = {"args": vars(args), "machine": machine()}

    if args.honest > 0:
        honest, gen_s, score_s, n, toks = run_shards(
            engine,
            engine,
            make_shards(args.honest, args.per_shard, prompts, 1),
            sampling,
            vcfg,
            args.batch,
        )
        aggs = [v.stats for v in honest if v.stats is not None]
        zs = [a.z for a in aggs if a.z is not None]
        rzs = [z for a in aggs for z in (a.record_z or [])]
        false_alarms = sum(1 for v in honest if v.status == "fail")
        cal = calibrate(aggs)
        print(
            f"\nhonest: {len(honest)} shards, false alarms {false_alarms} "
            f"({100 * false_alarms / len(honest):.1f} %), inconclusive "
            f"{sum(v.status == 'inconclusive' for v in honest)}"
        )
        print(
            f"  z: mean {statistics.mean(zs):+.2f} sd {statistics.pstdev(zs):.2f} "
            f"min {min(zs):+.2f} max {max(zs):+.2f}; top-k fraction min "
            f"{min(a.topk_fraction for a in aggs):.3f} mean "
            f"{statistics.mean(a.topk_fraction for a in aggs):.3f}"
        )
        print(
            f"  per-record z ({len(rzs)} records): mean {statistics.mean(rzs):+.2f} sd "
            f"{statistics.pstdev(rzs):.2f} min {min(rzs):+.2f}"
        )
        print(
            f"  calibration suggests min_z <= {cal.suggested_min_z:.1f}, "
            f"min_record_z <= {cal.suggested_min_record_z:.1f}, "
            f"min_topk_fraction <= {cal.suggested_min_topk_fraction:.2f}"
        )
        per_rec_gen, per_rec_score = gen_s / n, score_s / n
        k = sample_size(args.shard_size, VerifyConfig())
        frac = (k * per_rec_score) / (args.shard_size * per_rec_gen)
        print(
            f"cost: generate {gen_s:.1f}s for {n} records ({toks} tokens), score {score_s:.1f}s "
            f"-> scoring a record costs {100 * per_rec_score / per_rec_gen:.1f} % of generating it; "
            f"a {args.shard_size}-record shard at sample_rate 0.02 scores {k} records = "
            f"{100 * frac:.2f} % of its generation engine seconds"
        )
        out["honest"] = {
            "shards": len(honest),
            "false_alarms": false_alarms,
            "z": zs,
            "record_z": rzs,
            "topk": [a.topk_fraction for a in aggs],
            "calibration": cal.__dict__,
            "generate_seconds": gen_s,
            "score_seconds": score_s,
            "records": n,
            "verify_fraction_at_default_rate": frac,
        }

    out["cheats"] = {}
    print(
        "\nstrategy   shards  caught  rate    z (median)  worst record z (median)  top-k (median)"
    )
    for strategy in [s for s in args.strategies.split(",") if s]:
        cheater = CheatingEngine(engine, strategy, seed=7)
        shards = make_shards(args.cheat, args.per_shard, prompts, 2 + STRATEGIES.index(strategy))
        verdicts, *_ = run_shards(cheater, engine, shards, sampling, vcfg, args.batch)
        caught = sum(1 for v in verdicts if v.status == "fail")
        czs = [v.stats.z for v in verdicts if v.stats and v.stats.z is not None]
        worst = [v.stats.min_record_z for v in verdicts if v.stats and v.stats.record_z]
        tks = [v.stats.topk_fraction for v in verdicts if v.stats]
        print(
            f"{strategy:9s}  {len(verdicts):6d}  {caught:6d}  {100 * caught / len(verdicts):5.1f} %"
            f"  {statistics.median(czs):+9.1f}  {statistics.median(worst):+22.1f}"
            f"  {statistics.median(tks):14.3f}"
        )
        out["cheats"][strategy] = {
            "shards": len(verdicts),
            "caught": caught,
            "z": czs,
            "worst_record_z": worst,
        }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
