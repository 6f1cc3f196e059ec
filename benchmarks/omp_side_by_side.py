"""One bundled-model generation (8 built-in prompts x 48 tokens, twice) with its wall and CPU
time: run two copies side by side to see OpenMP's spin-waits (benchmarks/RESULTS.md, "CI
time"), e.g.

    PYTHONPATH=. python benchmarks/omp_side_by_side.py & PYTHONPATH=. python benchmarks/omp_side_by_side.py & wait
    # then with OMP_WAIT_POLICY=PASSIVE in front of each, or `taskset -c 0` / `taskset -c 1`
"""

from __future__ import annotations

import time

from synthgen.config import ModelConfig, RunConfig, SamplingConfig
from synthgen.engines.base import GenRequest, prompt_seed
from synthgen.engines.transformers import TransformersEngine
from synthgen.stages.prompts import load_prompts


def main() -> None:
    eng = TransformersEngine(ModelConfig(batch_size=8))
    prompts = load_prompts(RunConfig()).records[:8]
    reqs = [GenRequest(p.prompt_id, p.messages, prompt_seed(1, p.prompt_id)) for p in prompts]
    wall, cpu = time.time(), time.process_time()
    for _ in range(2):
        eng.generate(reqs, SamplingConfig(max_new_tokens=48))
    print(
        f"threads {eng.cpu_threads} gen wall {time.time() - wall:.1f} "
        f"cpu {time.process_time() - cpu:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
