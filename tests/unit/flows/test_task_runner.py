"""synthgen's Dask task runner: a real Prefect flow on a real LocalCluster gets its context
(flow run, tags, settings) and its parameters through the cheaper submission path."""

from __future__ import annotations

import copy
import logging
import pickle

from distributed import LocalCluster
from prefect import flow, tags, task
from prefect.runtime import flow_run, task_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows._fast_context import _DropRoutineSuccess, _Prepickled, materialize
from flows.task_runner import SynthgenTaskRunner
from flows.units import Opaque, unwrap


@task
def where_am_i(config: dict | Opaque, n: int) -> dict:
    from prefect.context import TagsContext, get_settings_context

    cfg = unwrap(config)
    return {
        "flow_run_id": flow_run.id,
        "task_run_id": task_run.id,
        "tags": sorted(TagsContext.get().current_tags),
        "api_url": get_settings_context().settings.api.url,
        "config_type": type(cfg).__name__,
        "value": cfg["nested"]["value"] * n,
    }


def test_flow_context_and_opaque_parameters_reach_the_worker(prefect_api) -> None:
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    )
    try:

        @flow(task_runner=SynthgenTaskRunner(address=cluster.scheduler_address))
        def probe() -> tuple[str, str | None, list[dict]]:
            from prefect.context import get_settings_context

            cfg = Opaque({"nested": {"value": 7}})
            with tags("probe-tag"):
                futs = [where_am_i.submit(cfg, n) for n in range(4)]
            api = get_settings_context().settings.api.url
            return str(flow_run.id), api, [f.result() for f in futs]

        # this module imports prefect before the fixture sets PREFECT_API_URL: without this,
        # the flow would start (and leave behind) a temporary server of its own
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            flow_id, flow_api, results = probe()
    finally:
        cluster.close()
    assert [r["value"] for r in results] == [0, 7, 14, 21]
    assert all(r["config_type"] == "dict" for r in results)
    assert {r["flow_run_id"] for r in results} == {flow_id}
    assert len({r["task_run_id"] for r in results}) == 4  # one task run each
    assert all(r["tags"] == ["probe-tag"] for r in results)
    assert flow_api == prefect_api
    assert {r["api_url"] for r in results} == {prefect_api}  # the flow's settings reached them


def test_prepickled_stays_bytes_through_pickling_and_copies() -> None:
    value = {"flow_run": {"id": "x", "parameters": list(range(100))}}
    pre = _Prepickled.of(value)
    again = pickle.loads(pickle.dumps(pre))
    assert isinstance(again, _Prepickled) and again.blob == pre.blob
    assert copy.copy(pre) is pre and copy.deepcopy({"a": pre})["a"] is pre
    ctx = materialize({"flow_run_context": again, "tags_context": {"current_tags": []}})
    assert ctx == {"flow_run_context": value, "tags_context": {"current_tags": []}}


def test_prepickled_unpickles_once_per_blob_and_hands_out_copies(monkeypatch) -> None:
    import flows._fast_context as fc

    loads, real_loads = [], pickle.loads
    monkeypatch.setattr(fc.pickle, "loads", lambda b: loads.append(b) or real_loads(b))
    value = {"flow_run": {"id": "y"}, "parameters": {"n": 1}}
    blob = _Prepickled.of(value).blob
    first = _Prepickled(blob).value()  # a fresh object per task, as a worker unpickles it
    first["extra"] = 1  # a caller changing its copy
    second = _Prepickled(bytes(blob)).value()
    assert second == value and "extra" not in second
    assert len(loads) == 1  # the same bytes: unpickled once
    other = _Prepickled.of({"flow_run": {"id": "z"}}).value()
    assert other == {"flow_run": {"id": "z"}} and len(loads) == 2


def test_only_the_routine_success_line_is_dropped() -> None:
    f = _DropRoutineSuccess()

    def rec(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None, None)

    assert not f.filter(rec(logging.INFO, "Finished in state Completed()"))
    assert f.filter(rec(logging.ERROR, "Finished in state Failed('boom')"))
    assert f.filter(rec(logging.INFO, "Finished in state Cached(type=COMPLETED)"))
    assert f.filter(rec(logging.INFO, "loaded the model in 3.1 s"))
