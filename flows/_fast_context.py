"""Cheaper per-task submission for prefect-dask.

`prefect_dask.PrefectDaskClient.submit` serialises the whole Prefect context for every
task, and most of that cost (~0.2 s per task on 2 cores, measured in
benchmarks/bench_orchestration.py) is dumping the Settings model, which does not change
while a flow submits its tasks. This wraps the module-level `serialize_context` used by
prefect-dask so the settings part is dumped once per SettingsContext object and reused;
everything else (flow/task/tags/asset context) is still serialised per task.
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.Lock()
_CACHE: dict[int, tuple[Any, dict[str, Any]]] = {}
_INSTALLED = False


def install() -> None:
    global _INSTALLED
    if _INSTALLED:
        return
    import prefect.context as pctx
    import prefect_dask.client as pdc

    original = pctx.serialize_context

    def serialize_context(asset_ctx_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        settings_ctx = pctx.SettingsContext.get()
        if settings_ctx is None:
            return original(asset_ctx_kwargs)
        key = id(settings_ctx)
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is None or hit[0] is not settings_ctx:
                hit = (settings_ctx, settings_ctx.serialize())
                _CACHE.clear()
                _CACHE[key] = hit
        settings_dump = hit[1]
        flow_ctx = pctx.EngineContext.get()
        task_ctx = pctx.TaskRunContext.get()
        tags_ctx = pctx.TagsContext.get()
        deployment_id = pctx._deployment_id.get()
        return {
            "flow_run_context": flow_ctx.serialize() if flow_ctx else {},
            "task_run_context": task_ctx.serialize() if task_ctx else {},
            "tags_context": tags_ctx.serialize() if tags_ctx else {},
            "settings_context": settings_dump,
            "asset_context": pctx.AssetContext.from_task_and_inputs(**asset_ctx_kwargs).serialize()
            if asset_ctx_kwargs
            else {},
            "deployment_id": str(deployment_id) if deployment_id else None,
            "deployment_parameters": pctx._deployment_parameters.get(),
        }

    pdc.serialize_context = serialize_context
    _INSTALLED = True
