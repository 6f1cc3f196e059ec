"""Verification of a multi-stage run's units (issue 14): each unit is checked against its
stage's own baseline (model, sampling, guided constraint, the prompt rendered from the
committed upstream rows), in-process with the fake engine (no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from synthgen.config import RunConfig
from synthgen.engines.base import ScoreRequest
from synthgen.engines.fake import FakeEngine
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.stages.generate import ShardTask, run_shard
from synthgen.stages.plan import write_plan
from synthgen.verify import judge
from synthgen.verify.baseline import stage_baseline
from synthgen.verify.check import VerifyTask, verify_path, verify_shard
from tests.helpers import fake_config
from tests.support.cheats import install_cheat, remove_cheat

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
}
STAGES = [
    {"name": "instruction", "prompt": "Write one question about: {{ prompt }}"},
    {
        "name": "response",
        "model": {"engine": "fake", "path": "fake-response"},
        "system": "You are a teacher.",
        "prompt": "{{ instruction }}",
        "sampling": {"n": 2, "seed": 11},
    },
    {
        "name": "judge",
        "prompt": "Q: {{ instruction }}\nA: {{ response }}\nRate it as JSON.",
        "guided": {"json_schema": JUDGE_SCHEMA},
        "parse": "json",
    },
]
SHARD = "shard-00000"


def _run(tmp_path, cheat: dict[str, Any] | None = None) -> tuple[RunConfig, dict, Store]:
    """Every stage of the first shard generated and committed, in order."""
    cfg = RunConfig.model_validate(
        fake_config(
            str(tmp_path / "out"),
            shards__size=4,
            prompts__limit=8,
            stages=STAGES,
            verify__sample_seed=5,
            verify__min_tokens=4,
        )
    )
    data = cfg.model_dump(mode="json")
    store = Store(cfg.output)
    write_plan(cfg, store)
    for stage in ("instruction", "response", "judge"):
        try:
            if cheat and cheat["stage"] == stage:
                install_cheat(cheat["strategy"])
            run_shard(ShardTask(data, f"{stage}:{SHARD}"))
        finally:
            remove_cheat()
    return cfg, data, store


def _layout(store: Store, cfg: RunConfig, stage: str) -> Any:
    return RunLayout(store, cfg.run_id or "").stage(stage)


def _rewrite(store: Store, cfg: RunConfig, stage: str, table: pa.Table) -> None:
    """Replace a committed shard's rows, its marker updated to match (a worker that
    commits what it likes)."""
    layout = _layout(store, cfg, stage)
    size, sha = store.write_table(layout.shard(SHARD), table)
    marker = store.read_json(layout.commit(SHARD))
    marker.update(bytes=size, sha256=sha, rows=table.num_rows)
    store.write_json(layout.commit(SHARD), marker)


def test_every_stage_of_an_honest_shard_passes_against_its_own_baseline(tmp_path):
    cfg, data, store = _run(tmp_path)
    for stage in ("instruction", "response", "judge"):
        unit = f"{stage}:{SHARD}"
        res = verify_shard(VerifyTask(data, unit, 1))
        assert res.status == "pass", (unit, res.reasons)
        record = store.read_json(verify_path(store, cfg.run_id or "", unit, 1))
        # under the stage's folder, with the baseline it was scored against
        assert record["stage"] == stage
        assert verify_path(store, cfg.run_id or "", unit, 1).startswith(
            _layout(store, cfg, stage).verify_dir
        )
        assert record["baseline"]["prompts"] == "rendered from upstream"
    response = store.read_json(verify_path(store, cfg.run_id or "", f"response:{SHARD}", 1))
    assert response["baseline"]["model"]["path"] == "fake-response"
    assert response["baseline"]["sampling"]["n"] == 2 and response["baseline"]["sampling"]["seed"]
    assert response["records"] == 8  # 4 prompts x n=2
    judged = store.read_json(verify_path(store, cfg.run_id or "", f"judge:{SHARD}", 1))
    assert judged["baseline"]["guided"]["json_schema"] == JUDGE_SCHEMA
    assert judged["tokens"] >= 4 and judged["status"] == "pass"


def test_a_guided_stage_scored_without_its_constraint_would_flag_the_honest_worker(tmp_path):
    cfg, _, store = _run(tmp_path)
    table = store.read_table(_layout(store, cfg, "judge").shard(SHARD))
    base = stage_baseline(cfg, store, "judge", SHARD, table)
    assert base.guided is not None and not base.problems
    requests = [
        ScoreRequest(pid, chat, text)
        for pid, chat, text in zip(
            table.column("prompt_id").to_pylist(),
            base.chats or [],
            table.column("completion").to_pylist(),
            strict=True,
        )
    ]
    engine = FakeEngine(base.model)
    with_constraint = judge(engine.score(requests, base.sampling, guided=base.guided), cfg.verify)
    without = judge(engine.score(requests, base.sampling), cfg.verify)
    assert with_constraint.status == "pass"
    assert without.status == "fail" and any("top-10" in r for r in without.reasons)


def test_a_cheating_second_stage_is_caught_and_quarantined_in_its_stage(tmp_path):
    cfg, data, store = _run(tmp_path, cheat={"stage": "response", "strategy": "pool"})
    assert verify_shard(VerifyTask(data, f"instruction:{SHARD}", 1)).status == "pass"
    res = verify_shard(VerifyTask(data, f"response:{SHARD}", 1))
    assert res.status == "fail" and res.reasons
    layout = _layout(store, cfg, "response")
    assert not store.exists(layout.commit(SHARD))
    assert sorted(store.ls(layout.quarantine_dir)) == [f"{SHARD}.a1.json", f"{SHARD}.a1.parquet"]
    # the first stage is untouched
    assert store.exists(_layout(store, cfg, "instruction").commit(SHARD))


def test_rows_whose_prompt_or_seed_is_not_the_stages_are_flagged(tmp_path):
    cfg, data, store = _run(tmp_path)
    table = store.read_table(_layout(store, cfg, "response").shard(SHARD))
    chats = [json.loads(m) for m in table.column("messages").to_pylist()]
    chats[1][-1]["content"] = "Write an essay about anything you like."
    seeds = table.column("seed").to_pylist()
    seeds[2] += 1
    i = table.schema.get_field_index("messages")
    table = table.set_column(i, "messages", pa.array([json.dumps(c) for c in chats]))
    table = table.set_column(table.schema.get_field_index("seed"), "seed", pa.array(seeds))
    _rewrite(store, cfg, "response", table)
    res = verify_shard(VerifyTask(data, f"response:{SHARD}", 1))
    assert res.status == "fail"
    reasons = " ".join(res.reasons or [])
    assert "1 row(s) record a prompt other than the one stage 'response' renders" in reasons
    assert "1 row(s) record a seed other than the stage's request seed" in reasons


def test_missing_samples_are_flagged(tmp_path):
    cfg, data, store = _run(tmp_path)
    table = store.read_table(_layout(store, cfg, "response").shard(SHARD))
    _rewrite(store, cfg, "response", table.slice(0, table.num_rows - 1))  # one sample short
    res = verify_shard(VerifyTask(data, f"response:{SHARD}", 1))
    assert res.status == "fail"
    assert any("do not have their n=2 rows" in r for r in res.reasons or [])


def test_a_unit_whose_upstream_was_replaced_is_retracted_not_blamed(tmp_path):
    cfg, data, store = _run(tmp_path)
    up = _layout(store, cfg, "instruction")
    marker = store.read_json(up.commit(SHARD))
    marker["sha256"] = "0" * 64  # another attempt of the first stage committed since
    store.write_json(up.commit(SHARD), marker)
    res = verify_shard(VerifyTask(data, f"response:{SHARD}", 1))
    assert res.status == "withdrawn"
    assert "since replaced" in " ".join(res.reasons or [])
    layout = _layout(store, cfg, "response")
    assert not store.exists(layout.commit(SHARD))
    audit = store.read_json(store.path(layout.quarantine_dir, f"{SHARD}.a1.json"))
    assert audit["verdict"]["status"] == "retracted"


def test_a_committed_unit_on_a_replaced_upstream_is_generated_again(tmp_path):
    cfg, data, store = _run(tmp_path)
    up = _layout(store, cfg, "instruction")
    store.rm(up.commit(SHARD))  # the first stage quarantined: generated again

    run_shard(ShardTask(data, f"instruction:{SHARD}"))
    res = run_shard(ShardTask(data, f"response:{SHARD}"))
    assert res.status == "done" and res.attempt == 2  # not "skipped": its input changed
    now = store.read_json(_layout(store, cfg, "response").commit(SHARD))
    assert now["upstream"]["attempt"] == 2


@pytest.mark.parametrize("stage", ["instruction", "response", "judge"])
def test_commit_markers_record_the_upstream_commit_they_read(tmp_path, stage):
    cfg, _, store = _run(tmp_path)
    marker = store.read_json(_layout(store, cfg, stage).commit(SHARD))
    if stage == "instruction":
        assert "upstream" not in marker
    else:
        prev = "instruction" if stage == "response" else "response"
        up = store.read_json(_layout(store, cfg, prev).commit(SHARD))
        assert marker["upstream"] == {"stage": prev, "attempt": 1, "sha256": up["sha256"]}


class _Loop:
    """What VerifyGate calls on the generate loop, recorded."""

    def __init__(self) -> None:
        self.shard_ids: list[str] = []
        self.calls: list[tuple[str, str]] = []

    def requeue(self, unit: str) -> None:
        self.calls.append(("requeue", unit))

    def cancel(self, unit: str) -> None:
        self.calls.append(("cancel", unit))

    def advance(self, unit: str) -> None:
        self.calls.append(("advance", unit))

    def track(self, unit: str, fut: Any) -> None:
        self.calls.append(("track", unit))


def test_a_unit_quarantined_after_its_later_stages_ran_retracts_them(tmp_path):
    from flows.verify import VerifyGate

    cfg, data, store = _run(tmp_path)
    gate = VerifyGate(cfg, data, lambda res, workers: None, lambda: ["w1", "w2"], store)
    loop = _Loop()
    gate.bind(loop)  # type: ignore[arg-type]
    first = f"instruction:{SHARD}"
    gate.accepted[first] = store.read_json(_layout(store, cfg, "instruction").commit(SHARD))[
        "result"
    ]
    # its worker is flagged after the shard's later stages committed from it
    gate._distrust(first, {**gate.accepted[first], "shard_id": first})
    for stage in ("response", "judge"):
        layout = _layout(store, cfg, stage)
        assert not store.exists(layout.commit(SHARD)), stage
        audit = store.read_json(store.path(layout.quarantine_dir, f"{SHARD}.a1.json"))
        assert audit["verdict"]["status"] == "retracted"
        assert first in audit["verdict"]["reasons"][0]
        assert ("cancel", f"{stage}:{SHARD}") in loop.calls
    assert gate.out.retracted == [f"response:{SHARD}", f"judge:{SHARD}"]
    assert ("requeue", first) in loop.calls  # the first stage is generated again
    # the later stages wait for it: they are not queued until it passes its check
    assert ("requeue", f"response:{SHARD}") not in loop.calls
    assert gate.holds(first)
