"""Cheaper per-task submission for prefect-dask.

`prefect_dask.PrefectDaskClient.submit` serialises the whole Prefect context for every
task, and most of that cost (~0.2 s per task on 2 cores, measured in
benchmarks/bench_orchestration.py) is dumping the Settings model, which does not change
while a flow submits its tasks. This wraps the module-level `serialize_context` used by
prefect-dask so the settings part is passed as the (picklable) Settings objects themselves:
no per-task dump on the flow side and no per-task re-validation of the whole Settings tree
on the worker (which read the environment and dotenv files for every task: ~40 % of a
zero-work task's time, measured with py-spy). Everything else (flow/task/tags/asset
context) is still serialised per task.
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
                # the models themselves, not their dump: unpickling a pydantic model does not
                # re-run validation, while SettingsContext(**dump) on the worker rebuilt the
                # whole Settings tree (reading the environment and dotenv files) per task
                hit = (
                    settings_ctx,
                    {"profile": settings_ctx.profile, "settings": settings_ctx.settings},
                )
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
    install_client_tls_cache()
    _INSTALLED = True


def install_client_tls_cache() -> None:
    """Reuse one SSLContext per CA file for Prefect's API clients.

    The task engine builds a new API client for every task run in a Dask worker thread, and
    each builds `ssl.create_default_context(cafile=certifi)`, loading the CA bundle again
    (~45 % of a zero-work task's worker time after the settings fix, measured with py-spy).
    An SSLContext used only for client connections can be shared, so Prefect's client module
    gets a `ssl` namespace whose `create_default_context` is cached by its arguments.
    """
    import functools
    import ssl
    import types

    import prefect.client.orchestration as pco

    if getattr(pco.ssl, "_synthgen_cached", False):
        return

    @functools.lru_cache(maxsize=8)
    def create_default_context(
        purpose: Any = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: Any = None,
    ) -> ssl.SSLContext:
        return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)

    proxy = types.ModuleType("ssl")
    proxy.__dict__.update(vars(ssl))
    proxy.create_default_context = create_default_context  # type: ignore[attr-defined]
    proxy._synthgen_cached = True  # type: ignore[attr-defined]
    pco.ssl = proxy  # type: ignore[attr-defined]
