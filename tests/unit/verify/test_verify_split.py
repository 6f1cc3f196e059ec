"""A check with untrusted workers (issue 17): the flow prepares it, the verifier scores plain
data, the flow finishes it; a malformed answer is refused before anything is written."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from synthgen.config import RunConfig
from synthgen.cost.leases import WorkerIdentity
from synthgen.cost.ledger import Ledger
from synthgen.io.layout import RunLayout
from synthgen.io.store import Store
from synthgen.verify.check import Prepared, VerifyTask, finish_check, prepare_check, verify_path
from synthgen.verify.wire import ForgedScores, score
from tests.support.cheats import committed_shard

VERIFIER = "tls://10.0.0.9:40000"


def _committed(tmp_path, cheat: str | None = None) -> tuple[RunConfig, Store, str]:
    return committed_shard(str(tmp_path / "out"), cheat, cost__worker_prices={"leased-v": 7.5})


def _wire(value: Any) -> Any:
    """What crosses the boundary: msgpack both ways (no pickle could pass)."""
    return msgpack.loads(msgpack.dumps(value, use_bin_type=True), raw=False)


def _prepare(cfg: RunConfig, store: Store, sid: str) -> Prepared:
    prep = prepare_check(VerifyTask(cfg.model_dump(mode="json"), sid, 1), store)
    assert isinstance(prep, Prepared)
    return prep


def _verify_rows(store: Store, cfg: RunConfig) -> list[dict[str, Any]]:
    rows = Ledger(RunLayout(store, cfg.run_id or "")).rows().to_pylist()
    return [r for r in rows if r["status"] == "verification"]


def test_prepare_score_finish_passes_plain_data_only_and_prices_from_the_config(tmp_path):
    cfg, store, sid = _committed(tmp_path)
    prep = _prepare(cfg, store, sid)
    payload = _wire(prep.payload())
    assert payload["unit"] == sid and payload["attempt"] == 1 and len(payload["requests"]) == 3
    text = json.dumps(payload)
    assert str(tmp_path) not in text and "storage_options" not in text  # no path, no keys
    answer = _wire(score(payload))  # what the verifier sends back
    assert len(answer["scores"]) == 3 and answer["seconds"] >= 0 and answer["device"]
    res = finish_check(prep, answer, VERIFIER, WorkerIdentity(name="leased-v"))
    assert res.status == "pass" and res.verifier == VERIFIER and res.sampled == 3
    assert res.price_per_hour == 7.5  # the operator's lease, looked up on the flow's side
    assert res.cost_usd == pytest.approx(7.5 * res.verify_seconds / 3600)
    record = store.read_json(verify_path(store, cfg.run_id or "", sid, 1))
    assert record["verifier"] == VERIFIER and record["sample_seed"] == 3
    assert len(record["scores"]) == 3
    (row,) = _verify_rows(store, cfg)
    assert row["worker"] == VERIFIER and row["price_per_hour"] == 7.5
    assert store.exists(RunLayout(store, cfg.run_id or "").stage().commit(sid))


def test_a_cheating_shard_fails_and_is_quarantined_by_the_flow(tmp_path):
    cfg, store, sid = _committed(tmp_path, cheat="pool")
    prep = _prepare(cfg, store, sid)
    res = finish_check(prep, _wire(score(_wire(prep.payload()))), VERIFIER)
    assert res.status == "fail" and res.reasons
    assert not store.exists(RunLayout(store, cfg.run_id or "").stage().commit(sid))
    assert store.ls(store.run_path(cfg.run_id or "", "quarantine"))


def test_nothing_to_score_is_settled_on_the_flows_side(tmp_path):
    cfg, store, sid = _committed(tmp_path)
    stale = prepare_check(VerifyTask(cfg.model_dump(mode="json"), sid, 2), store)
    assert not isinstance(stale, Prepared) and stale.status == "stale"


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(answer: dict[str, Any]) -> None:
        target = answer
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


FORGERIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "another attempt": _set(["attempt"], 2),
    "another unit": _set(["unit"], "shard-99999"),
    "a score short": lambda a: a["scores"].pop(),
    "scores not a list": _set(["scores"], "all fine"),
    "a score not a dict": _set(["scores", 0], [0.0, 1.0, 5]),
    "an extra key": _set(["scores", 0, "__reduce__"], "os.system"),
    "scores reordered": lambda a: a["scores"].reverse(),
    "NaN log-prob": _set(["scores", 0, "mean_logprob"], math.nan),
    "positive log-prob": _set(["scores", 0, "mean_logprob"], 3.0),
    "top-k fraction above 1": _set(["scores", 1, "topk_fraction"], 1.5),
    "tokens as text": _set(["scores", 1, "tokens"], "40"),
    "tokens as a bool": _set(["scores", 1, "tokens"], True),
    "negative std": _set(["scores", 2, "logprob_std"], -1.0),
    "negative seconds": _set(["seconds"], -1.0),
    "device not text": _set(["device"], {"gpu": "H100"}),
    "no time zone": _set(["started_at"], "2026-01-01T00:00:00"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_malformed_answer_is_forged_and_writes_nothing(tmp_path, name):
    cfg, store, sid = _committed(tmp_path)
    prep = _prepare(cfg, store, sid)
    answer = _wire(score(_wire(prep.payload())))
    if name == "scores reordered":  # make the reorder visible (distinct prompt ids)
        assert len({s["prompt_id"] for s in answer["scores"]}) > 1
    forged = copy.deepcopy(answer)
    FORGERIES[name](forged)
    with pytest.raises(ForgedScores, match="forged verification result") as err:
        finish_check(prep, forged, VERIFIER)
    assert err.value.worker == VERIFIER and err.value.retry_elsewhere
    run_id = cfg.run_id or ""
    assert not store.exists(verify_path(store, run_id, sid, 1))
    assert _verify_rows(store, cfg) == []
    assert store.exists(RunLayout(store, run_id).stage().commit(sid))  # nobody blamed the shard
    # the genuine answer to the same prepared check still counts
    assert finish_check(prep, answer, VERIFIER).status == "pass"


def test_not_a_dict_is_forged(tmp_path):
    cfg, store, sid = _committed(tmp_path)
    prep = _prepare(cfg, store, sid)
    with pytest.raises(ForgedScores, match="not a dict"):
        finish_check(prep, ["pass"], VERIFIER)


def test_the_scoring_time_priced_is_at_most_what_the_flow_saw(tmp_path):
    cfg, store, sid = _committed(tmp_path)
    prep = _prepare(cfg, store, sid)
    answer = {**_wire(score(_wire(prep.payload()))), "seconds": 3600.0}  # claims an hour
    res = finish_check(prep, answer, VERIFIER, WorkerIdentity(name="leased-v"), held_s=2.0)
    assert res.verify_seconds == 2.0 and res.cost_usd == pytest.approx(7.5 * 2.0 / 3600)
    (row,) = _verify_rows(store, cfg)
    assert row["wall_seconds"] == pytest.approx(2.0)
