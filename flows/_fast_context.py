"""Cheaper per-task submission for Prefect tasks on Dask (used by `flows.task_runner`).

Measured with cProfile and py-spy on benchmarks/bench_orchestration.py (2 cores, zero-work
shards; numbers in benchmarks/RESULTS.md):

- Settings: prefect-dask dumped the whole Settings model into every task's context, and the
  worker re-validated it (reading the environment and dotenv files) per task. The Settings
  objects themselves are sent instead.
- Constant context: the flow run's part (flow, flow run, parameters) and the Settings are
  the same for every task of a flow, but were pickled per task by the client and again by
  the scheduler. `_Prepickled` pickles them once; the worker unpickles them (`materialize`).
- TLS: every task run's API client loaded the CA bundle again (`install_client_tls_cache`).
- Logging: one "Finished in state Completed()" record per successful task, formatted for the
  console and stored by the server (`quiet_task_success`).
"""

from __future__ import annotations

import functools
import logging
import pickle
import ssl
import threading
import types
from collections import OrderedDict
from typing import Any

import cloudpickle
import prefect.client.orchestration as pco
import prefect.context as pctx

_LOCK = threading.Lock()
_CACHES: dict[str, tuple[tuple[Any, ...], Any]] = {}
_INSTALLED = False
# unpickled `_Prepickled` values by their bytes: a worker serves a few flow runs at a time
_VALUES: OrderedDict[bytes, Any] = OrderedDict()
_KEEP_VALUES = 8
_MISSING = object()


def _once(name: str, marks: tuple[Any, ...], build: Any) -> Any:
    """`build()`, cached under `name` while every object in `marks` is the same object."""
    with _LOCK:
        hit = _CACHES.get(name)
        if hit is None or any(a is not b for a, b in zip(hit[0], marks, strict=True)):
            hit = (marks, build())
            _CACHES[name] = hit
    return hit[1]


class _Prepickled:
    """A value pickled once and sent as those bytes every time after.

    The flow run's part of the context (flow, flow run, parameters: ~25 KB) and the
    Settings (~10 KB) are the same for every task a flow submits, but were pickled again for
    every task, twice: by the client, and by the scheduler when it sends the task to a worker
    (~5 ms per task on 2 cores). This stays bytes through the client, the scheduler and any
    copies; the worker turns it back into the value (`materialize`) before Prefect reads the
    context.
    """

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    @classmethod
    def of(cls, value: Any) -> _Prepickled:
        return cls(cloudpickle.dumps(value))

    def value(self) -> Any:
        """The value, unpickled once per worker process for each distinct blob (every task
        of a flow run sends the same bytes; unpickling them cost ~1.3 ms of worker CPU per
        task). A dict comes back as a shallow copy, so a caller that sets or pops a key
        never changes what the next task gets."""
        with _LOCK:
            value = _VALUES.get(self.blob, _MISSING)
            if value is not _MISSING:
                _VALUES.move_to_end(self.blob)
        if value is _MISSING:
            value = pickle.loads(self.blob)
            with _LOCK:
                _VALUES[self.blob] = value
                while len(_VALUES) > _KEEP_VALUES:
                    _VALUES.popitem(last=False)
        return dict(value) if isinstance(value, dict) else value

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (_Prepickled, (self.blob,))

    def __copy__(self) -> _Prepickled:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Prepickled:
        return self


def materialize(context: dict[str, Any]) -> dict[str, Any]:
    """The serialized context as Prefect expects it: pre-pickled parts turned back into values."""
    return {k: v.value() if isinstance(v, _Prepickled) else v for k, v in context.items()}


def _flow_part(flow_ctx: Any) -> Any:
    """`flow_ctx.serialize()`, pickled once per flow run (and again if its state changes)."""
    if flow_ctx is None:
        return {}
    flow_run = getattr(flow_ctx, "flow_run", None)
    marks = (flow_ctx, flow_run, getattr(flow_run, "state", None), flow_ctx.parameters)
    return _once("flow", marks, lambda: _Prepickled.of(flow_ctx.serialize()))


def serialize_context(asset_ctx_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """`prefect.context.serialize_context` with the constant parts pre-pickled (see
    `_Prepickled`); whoever runs the task must `materialize` it first
    (`flows.task_runner.run_prefect_task` does)."""
    settings_ctx = pctx.SettingsContext.get()
    if settings_ctx is None:
        return pctx.serialize_context(asset_ctx_kwargs)
    # the models themselves, not their dump: unpickling a pydantic model does not re-run
    # validation, while SettingsContext(**dump) on the worker rebuilt the whole Settings
    # tree (reading the environment and dotenv files) per task
    settings = _once(
        "settings",
        (settings_ctx,),
        lambda: _Prepickled.of(
            {"profile": settings_ctx.profile, "settings": settings_ctx.settings}
        ),
    )
    flow_ctx = pctx.EngineContext.get()
    task_ctx = pctx.TaskRunContext.get()
    tags_ctx = pctx.TagsContext.get()
    deployment_id = pctx._deployment_id.get()
    return {
        "flow_run_context": _flow_part(flow_ctx),
        "task_run_context": task_ctx.serialize() if task_ctx else {},
        "tags_context": tags_ctx.serialize() if tags_ctx else {},
        "settings_context": settings,
        "asset_context": pctx.AssetContext.from_task_and_inputs(**asset_ctx_kwargs).serialize()
        if asset_ctx_kwargs
        else {},
        "deployment_id": str(deployment_id) if deployment_id else None,
        "deployment_parameters": pctx._deployment_parameters.get(),
    }


def install() -> None:
    """Worker-side fixes, applied in every process that imports `flows.task_runner`."""
    global _INSTALLED
    if _INSTALLED:
        return
    install_client_tls_cache()
    quiet_task_success()
    _INSTALLED = True


class _DropRoutineSuccess(logging.Filter):
    """Drops the task engine's INFO "Finished in state Completed()" line, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and isinstance(record.msg, str)
            and record.msg.startswith("Finished in state Completed(")
        )


def quiet_task_success() -> None:
    """No log record per successful task run: the flow prints a progress line per shard,
    and the UI shows each task run's state. Formatting that line for the console and
    shipping it to the API cost ~4 ms of a worker's time per task, and the server as much
    again to store it (py-spy, benchmarks/bench_orchestration.py). Failures, retries and
    the tasks' own log lines are kept."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _DropRoutineSuccess) for f in logger.filters):
        logger.addFilter(_DropRoutineSuccess())


def install_client_tls_cache() -> None:
    """Reuse one SSLContext per CA file for Prefect's API clients.

    The task engine builds a new API client for every task run in a Dask worker thread, and
    each builds `ssl.create_default_context(cafile=certifi)`, loading the CA bundle again
    (~45 % of a zero-work task's worker time after the settings fix, measured with py-spy).
    An SSLContext used only for client connections can be shared, so Prefect's client module
    gets a `ssl` namespace whose `create_default_context` is cached by its arguments.
    """
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
