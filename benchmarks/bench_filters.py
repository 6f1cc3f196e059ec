"""Filter throughput: documents/second/core of synthgen's default filter set, and of its two
Gopher filters next to datatrove's GopherQualityFilter + GopherRepetitionFilter on the same
documents in the same invocation (when datatrove and spacy import).

    python benchmarks/bench_filters.py --docs 20000

Documents: LLM-answer-like texts of 20-300 words (paragraphs, some bullet lists), plus
planted bad ones (repeated lines, refusals, symbol soup, truncated) so every rule runs.
CPU time (time.process_time) of this process, one core.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

from synthgen.config import FiltersConfig
from synthgen.stages.quality import Doc, FilterSet, build_filters
from synthgen.stages.quality.gopher import GopherQualityFilter, GopherRepetitionFilter

_WORDS = (
    "river mountain engine garden window market letter silver yellow planet ocean bridge "
    "forest candle doctor island morning pencil rocket summer teacher violin winter travel "
    "number kitchen monkey orange puzzle rabbit school theory valley wonder answer basket "
    "camera desert energy flower guitar harbor jacket ladder memory nature people quartz "
    "system process result method example important different however because through"
).split()
_STOP = ["the", "of", "and", "to", "with", "that", "a", "in", "is", "for", "it", "on"]


def sentence(rng: random.Random) -> str:
    n = rng.randint(6, 18)
    words = [rng.choice(_STOP) if rng.random() < 0.4 else rng.choice(_WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"])


def document(rng: random.Random) -> tuple[str, str]:
    kind = rng.random()
    if kind < 0.05:
        return "As an AI language model, I cannot help with that. " + sentence(rng), "stop"
    if kind < 0.10:
        line = sentence(rng)
        return "\n".join([line] * rng.randint(3, 8)), "stop"
    if kind < 0.13:
        return " ".join("#" + rng.choice(_WORDS) for _ in range(30)), "stop"
    paras = []
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.2:
            paras.append("\n".join("- " + sentence(rng) for _ in range(rng.randint(2, 5))))
        else:
            paras.append(" ".join(sentence(rng) for _ in range(rng.randint(1, 5))))
    return "\n\n".join(paras), ("length" if kind > 0.95 else "stop")


def run(fs: FilterSet, docs: list[tuple[str, str]]) -> tuple[float, Counter]:
    t0 = time.process_time()
    for text, finish in docs:
        fs.reason(Doc(text, finish))
    return time.process_time() - t0, fs.counts


def run_datatrove(docs: list[tuple[str, str]]) -> tuple[float, Counter] | None:
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter as DQ
        from datatrove.pipeline.filters import GopherRepetitionFilter as DR
    except ImportError as exc:
        print(f"datatrove: not importable here ({exc}); skipped")
        return None
    q, r = DQ(), DR()
    ddocs = [Document(text=t, id=str(i)) for i, (t, _) in enumerate(docs)]
    q.filter(ddocs[0])  # load the spacy tokenizer outside the timing
    counts: Counter = Counter()
    t0 = time.process_time()
    for d in ddocs:
        for f in (r, q):
            v = f.filter(d)
            ok, why = (v, f.name) if isinstance(v, bool) else v
            if not ok:
                counts[why] += 1
                break
    return time.process_time() - t0, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    docs = [document(rng) for _ in range(a.docs)]
    words = sum(len(t.split()) for t, _ in docs) / len(docs)
    print(f"{len(docs)} documents, mean {words:.0f} words")
    default = build_filters(FiltersConfig())
    dt, counts = run(default, docs)
    print(f"synthgen default set {default.names}: {len(docs) / dt:,.0f} docs/s/core ({dt:.2f}s)")
    print(f"  drops: {dict(counts)}")
    cfg = FiltersConfig()
    gopher = FilterSet(
        [GopherRepetitionFilter(cfg.gopher_repetition), GopherQualityFilter(cfg.gopher_quality)]
    )
    gt, gcounts = run(gopher, docs)
    print(f"synthgen gopher repetition+quality: {len(docs) / gt:,.0f} docs/s/core ({gt:.2f}s)")
    print(f"  drops: {dict(gcounts)}")
    res = run_datatrove(docs)
    if res is not None:
        d_t, d_counts = res
        print(
            f"datatrove gopher repetition+quality: {len(docs) / d_t:,.0f} docs/s/core "
            f"({d_t:.2f}s); synthgen/datatrove = {d_t / gt:.1f}x"
        )
        print(f"  drops: {dict(d_counts)}")


if __name__ == "__main__":
    main()
