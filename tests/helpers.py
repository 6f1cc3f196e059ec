"""Small builders shared by tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from distributed import Client, LocalCluster

from synthgen.config import OutputConfig
from synthgen.io.store import Store
from synthgen.stages.publish import read_manifest


def write_config(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def kept_fake_text(topics: int) -> dict[str, Any]:
    """Overrides for `fake_config` under which the fake engine's text is kept by the clean
    stage (it is no prose: the Gopher filters are off, one word is enough), with `topics`
    distinct template prompts; near-dedup stays on, so a publish writes its index."""
    return {
        "clean": {
            "enabled": True,
            "filters": {
                "word_count": {"min_words": 1},
                "gopher_quality": {"enabled": False},
                "gopher_repetition": {"enabled": False},
            },
        },
        "prompts": {
            "type": "template",
            "templates": ["Write about {topic}"],
            "topics": [f"topic number {i}" for i in range(topics)],
        },
    }


def fake_config(out: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "t",
        "prompts": {"type": "builtin"},
        "shards": {"size": 5},
        "model": {"engine": "fake"},
        "sampling": {"max_new_tokens": 16},
        "cluster": {"n_workers": 1},
        "output": {"uri": out},
        # the fake engine's word salad fails the quality filters by design; orchestration
        # tests keep every record (tests/e2e/test_clean_flow.py runs the clean stage)
        "clean": {"enabled": False},
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def verdict_of(scorer: Any, gen: Any, reqs: list[Any], sampling: Any) -> tuple[Any, list[Any]]:
    """Generate `reqs` with `gen`, score the completions with `scorer` (top-10) and judge them
    with the default verification settings: (verdict, scores)."""
    from synthgen.config import VerifyConfig
    from synthgen.engines.base import ScoreRequest
    from synthgen.verify import judge

    comps = gen.generate(reqs, sampling)
    scores = scorer.score(
        [ScoreRequest(r.prompt_id, r.messages, c.text) for r, c in zip(reqs, comps, strict=True)],
        sampling,
        top_k=10,
    )
    return judge(scores, VerifyConfig()), scores


def published_manifest(out: Any, storage_options: dict[str, Any] | None = None) -> Any:
    """The manifest of what OUTPUT/dataset shows now (the one its card names), or None."""
    return read_manifest(Store(OutputConfig(uri=str(out), storage_options=storage_options or {})))


@contextmanager
def local_cluster(n_workers: int) -> Iterator[tuple[LocalCluster, Client]]:
    """A LocalCluster of `n_workers` one-thread worker processes (no memory limit) and a
    client of it: the cluster the verification tests plant a cheating worker in."""
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            memory_limit=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


# clean on with no dedup and no quality filter: only what a test adds (e.g. decontamination)
CLEAN_ONLY: dict[str, Any] = {
    "enabled": True,
    "exact": {"enabled": False},
    "near": {"enabled": False},
    "filters": {
        n: {"enabled": False}
        for n in ("word_count", "gopher_quality", "gopher_repetition", "truncated", "refusal")
    },
}
