"""Verification of a two-stage run on vLLM-CPU (issue 14): honest vs cheating second stage.

Stage 1 (`topic`, unguided) and stage 2 (`person`, a JSON-schema guided stage with n
samples) are generated and committed by the real shard function (`run_shard`) and checked by
the real check (`verify_shard`, every row scored: `verify.sample_rate 1`) with the bundled
model on vLLM's CPU build, in-process. Printed per unit: status, shard z, worst record z.
Then, for the honest guided unit, the same rows scored as a verifier that ignored the
stage's constraint, or the sampled token ids, would have scored them; then the second stage
generated again by a `hot` cheater (temperature 1.6 under the same constraint) and checked.

    /tmp/ci5/.venv/bin/python benchmarks/bench_verify_stages.py --prompts 4 --shards 2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthgen.config import RunConfig  # noqa: E402
from synthgen.engines.cache import get_engine  # noqa: E402
from synthgen.io.layout import RunLayout  # noqa: E402
from synthgen.io.store import Store  # noqa: E402
from synthgen.stages.generate import ShardTask, run_shard  # noqa: E402
from synthgen.stages.plan import write_plan  # noqa: E402
from synthgen.verify import judge  # noqa: E402
from synthgen.verify.baseline import score_requests, stage_baseline  # noqa: E402
from synthgen.verify.check import VerifyTask, verify_shard  # noqa: E402
from tests.support.cheats import install_cheat, remove_cheat  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _cfg(out: str, prompts: int, shard_size: int) -> RunConfig:
    return RunConfig.model_validate(
        {
            "prompts": {"type": "builtin", "limit": prompts},
            "shards": {"size": shard_size},
            "model": {"engine": "vllm", "device": "cpu", "vllm": {"multiprocessing": False}},
            "output": {"uri": out},
            "clean": {"enabled": False},
            "verify": {"enabled": True, "sample_rate": 1.0, "sample_seed": 1},
            "stages": [
                {
                    "name": "topic",
                    "prompt": "Name one subject related to: {{ prompt }}",
                    "sampling": {"max_new_tokens": 16},
                },
                {
                    "name": "person",
                    "prompt": "Invent an expert on {{ topic }}, as JSON.",
                    "guided": {"json_schema": SCHEMA},
                    "parse": "json",
                    "sampling": {"n": 2, "max_new_tokens": 32},
                },
            ],
        }
    )


def _line(label: str, res: object) -> None:
    d = dataclasses.asdict(res) if dataclasses.is_dataclass(res) else dict(res)  # type: ignore[arg-type]
    z = d.get("z")
    print(
        f"{label:<34} {d['status']:<6} z={z if z is None else round(z, 2)!s:<7} "
        f"records={d.get('records')} reasons={'; '.join(d.get('reasons') or []) or '-'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()
    out = tempfile.mkdtemp(prefix="bench-verify-stages-")
    cfg = _cfg(out, args.prompts, max(1, args.prompts // args.shards))
    data = cfg.model_dump(mode="json")
    store = Store(cfg.output)
    shards = [s.shard_id for s in write_plan(cfg, store).shards]
    engine = get_engine(cfg.model)
    print(f"engine: {engine.info.engine} {engine.info.model} on {engine.info.device}")
    for stage in ("topic", "person"):
        for sid in shards:
            run_shard(ShardTask(data, f"{stage}:{sid}"))
    print("honest run:")
    for stage in ("topic", "person"):
        for sid in shards:
            _line(f"  {stage}:{sid}", verify_shard(VerifyTask(data, f"{stage}:{sid}", 1)))
    print("the honest guided units, scored by a verifier that would ignore ...")
    layout = RunLayout(store, cfg.run_id or "").stage("person")
    for sid in shards:
        table = store.read_table(layout.shard(sid))
        base = stage_baseline(cfg, store, "person", sid, table)
        reqs = score_requests(table, base)
        no_ids = [dataclasses.replace(r, completion_ids=None) for r in reqs]
        for label, rs, guided in (
            ("the constraint", reqs, None),
            ("the sampled token ids", no_ids, base.guided),
        ):
            v = judge(engine.score(rs, base.sampling, top_k=10, guided=guided), cfg.verify)
            z = v.stats.z if v.stats else None
            rz = v.stats.min_record_z if v.stats else None
            print(f"  ... {label:<22} person:{sid} {v.status:<6} z={z:.2f} min record z={rz:.2f}")
    print("second stage generated again by a `hot` cheater, same constraint:")
    for sid in shards:
        store.rm(layout.commit(sid))
    install_cheat("hot")
    try:
        for sid in shards:
            run_shard(ShardTask(data, f"person:{sid}"))
    finally:
        remove_cheat()
    for sid in shards:
        _line(f"  person:{sid} (hot)", verify_shard(VerifyTask(data, f"person:{sid}", 2)))


if __name__ == "__main__":
    main()
