"""The Dask task runner synthgen's flows use: prefect-dask's, with cheaper submission.

Per task, prefect-dask serialises the whole Prefect context, wraps the task in a closure that
cloudpickle pickles by value, and lets dask tokenise all of it for a key. Here the context's
constant parts are pickled once per flow (`_fast_context`), the task runs through a module
function (`run_prefect_task`, pickled by reference), keys are random (`pure=False`: every
shard attempt is a distinct computation), and a run config passed as `Opaque` is not walked
for futures. benchmarks/bench_orchestration.py measures the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import distributed
from distributed.client import FutureCancelledError
from prefect.context import FlowRunContext
from prefect.task_engine import run_task_async, run_task_sync
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from flows import _fast_context
from flows.units import (
    ENVELOPE,
    Retries,
    _completed,
    _plain,
    run_unit,
    run_unit_plain,
)

# Installed at import: the worker processes import this module when they unpickle a task
# (`run_prefect_task`), so the worker-side parts (the API client's TLS context, no log
# record per successful task) apply there too.
_fast_context.install()


def run_prefect_task(task: Any, **run_task_kwargs: Any) -> Any:
    """What a Dask worker runs for a Prefect task (prefect-dask's per-submit closure, as a
    module function: pickled by reference instead of by value with the task's attributes,
    which cost ~4 ms per task on 2 cores)."""
    run_task_kwargs["context"] = _fast_context.materialize(run_task_kwargs["context"])
    if task.isasync:
        return asyncio.run(run_task_async(task=task, **run_task_kwargs))
    return run_task_sync(task=task, **run_task_kwargs)


class ForgedResult(RuntimeError):
    """A task's worker sent back something that is not a plain result (on a TLS cluster: a
    pickle, replaced by the scheduler, or anything not in the envelope). `worker`: the
    worker that held it, when known."""

    retry_elsewhere = True  # the generate loop re-runs the unit away from that worker

    def __init__(self, message: str, worker: str | None = None) -> None:
        super().__init__(message)
        self.worker = worker


class TaskFailed(RuntimeError):
    """A task failed on its worker (after its retries); the message says why."""


def envelope(state: Any) -> dict[str, Any]:
    """A task run's final state as plain data (what a worker sends back on a TLS cluster)."""
    if state.is_completed():
        return _completed(state.result(raise_on_failure=False, _sync=True))
    message = state.message or ""
    try:
        exc = state.result(raise_on_failure=False, _sync=True)
    except Exception as err:  # no result to read: the state's message says it
        exc = err
    if isinstance(exc, BaseException):
        message = f"{type(exc).__name__}: {exc}"
    return {"envelope": ENVELOPE, "state": str(state.type.value), "message": message}


def run_prefect_task_plain(task: Any, **run_task_kwargs: Any) -> dict[str, Any]:
    """`run_prefect_task`, returning the final state as plain data (`envelope`): what the
    flow receives from a worker it does not trust is data it can read without unpickling.
    The worker's roles preload sends it as msgpack (synthgen.cluster.roles)."""
    return envelope(run_prefect_task(task, **run_task_kwargs))


def open_envelope(value: Any, what: str, worker: str | None = None) -> Any:
    """The result inside a task's envelope; TaskFailed for a failed task, ForgedResult for
    anything that is not an envelope (the scheduler's stand-in for a pickle it would not
    forward, or something a tampered worker made)."""
    if not (
        isinstance(value, dict)
        and value.get("envelope") == ENVELOPE
        and isinstance(value.get("state"), str)
    ):
        got = str(value)[:200] if isinstance(value, BaseException) else type(value).__name__
        raise ForgedResult(
            f"{what}: its worker{f' {worker}' if worker else ''} sent back something that is "
            f"not a plain result ({got}); not used",
            worker,
        )
    if value["state"] == "COMPLETED":
        return _plain(value.get("result"))
    raise TaskFailed(f"{what}: {value['state']}: {value.get('message', '')}")


class PlainResultFuture(PrefectDaskFuture):
    """A Prefect future over a task run by `run_prefect_task_plain`: `result()` opens the
    envelope (no Prefect state travels from the worker)."""

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._wrapped_future.result(timeout=timeout)
        except Exception:
            return

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        try:
            value = self._wrapped_future.result(timeout=timeout)
        except distributed.TimeoutError as exc:
            raise TimeoutError(
                f"Task run {self.task_run_id} did not complete within {timeout} seconds"
            ) from exc
        worker = None
        if not (isinstance(value, dict) and value.get("envelope") == ENVELOPE):
            worker = self._holder()
        return open_envelope(value, f"task run {self.task_run_id}", worker)

    def _holder(self) -> str | None:
        """The worker that holds this task's result (the one that ran it)."""
        return _holder_of(self._wrapped_future)


def _holder_of(fut: distributed.Future) -> str | None:
    """The worker that holds a Dask future's result, as the scheduler says (a scheduler
    call: it does not wait on the worker); None when unknown."""
    try:
        holders = fut.client.who_has([fut]).get(fut.key) or []
    except Exception:
        return None
    return holders[0] if holders else None


class SynthgenTaskRunner(DaskTaskRunner):
    def submit(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> PrefectDaskFuture[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        parameters = self._optimize_futures(parameters)
        wait_for = self._optimize_futures(wait_for) if wait_for else None
        # prefect_dask.client.PrefectDaskClient.submit, minus its per-task closure
        task_run_id = uuid.uuid4()
        inputs = {
            k: collect_task_run_inputs_sync(v, future_cls=distributed.Future)
            for k, v in parameters.items()
        }
        if dependencies:
            inputs = {k: v.union(dependencies.get(k, set())) for k, v in inputs.items()}
        context = _fast_context.serialize_context(
            asset_ctx_kwargs={
                "task": task,
                "task_run_id": task_run_id,
                "task_inputs": inputs,
                "copy_to_child_ctx": True,
            }
        )
        # a TLS cluster's workers are not trusted with pickles: their tasks send back data
        plain = "security" in (self.client_kwargs or {})
        future = distributed.Client.submit(
            self.client,
            run_prefect_task_plain if plain else run_prefect_task,
            # the key prefix names the task in the Dask dashboard, as prefect-dask's did
            key=f"{getattr(task.fn, '__name__', task.name)}-{task_run_id.hex}",
            pure=False,
            task=task,
            task_run_id=task_run_id,
            parameters=parameters,
            wait_for=wait_for,
            return_type="state",
            dependencies=inputs,
            context=context,
        )
        if plain:
            return PlainResultFuture(wrapped_future=future, task_run_id=task_run_id)
        return PrefectDaskFuture(wrapped_future=future, task_run_id=task_run_id)


# -- units without a Prefect task run ----------------------------------------------------
# A generate unit (a shard of a stage) is a plain Dask task: one Prefect task run per shard
# cost the worker ~20 ms and the Prefect server ~25 ms of CPU per shard (its task-run
# recorder writing every state), more than the shard itself at GPU speed, and the server
# dropped task runs at 10,000 shards (benchmarks/RESULTS.md, "Orchestration overhead").
# What the Prefect UI shows of the generate phase is the run's progress artifact (units
# done, tokens/s, $ so far) and the flow's log lines; retries are the worker's own, as the
# Prefect task's were.


class ResultUnreachable(RuntimeError):
    """A finished unit's result could not be fetched from the worker that holds it within
    `UnitFuture.FETCH_S` (a frozen host: its connections stay open and nothing answers).
    The generate loop runs the unit again (its output is committed if it got that far, and
    the re-run finds it so)."""

    unreachable = True

    def __init__(self, message: str, worker: str | None = None) -> None:
        super().__init__(message)
        self.worker = worker


_FETCH_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_FETCH_LOCK = threading.Lock()


def _fetch_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _FETCH_POOL
    with _FETCH_LOCK:
        if _FETCH_POOL is None:
            _FETCH_POOL = concurrent.futures.ThreadPoolExecutor(8, "synthgen-fetch")
        return _FETCH_POOL


class UnitFuture:
    """A submitted unit: what the generate loop needs of a future (`add_done_callback`,
    `result`), over a Dask future; on a TLS cluster `result()` opens the envelope.

    The result is fetched from its worker in a thread of its own, with a time limit
    (`FETCH_S`), before the callbacks hear of it: a result held by a worker frozen just
    after it finished would otherwise block whoever asks for it (the generate loop's one
    thread, deadlines included) until the scheduler drops the worker (minutes)."""

    FETCH_S = 30.0

    __slots__ = ("_error", "_fetched", "_lock", "_value", "future", "name", "plain")

    def __init__(self, future: distributed.Future, name: str, plain: bool) -> None:
        self.future = future
        self.name = name
        self.plain = plain
        self._lock = threading.Lock()
        self._fetched = False
        self._value: Any = None
        self._error: BaseException | None = None

    def add_done_callback(self, fn: Any) -> None:
        def then(_f: Any) -> None:
            self._fetch()
            fn(self)

        self.future.add_done_callback(lambda _f: _fetch_pool().submit(then, _f))

    def done(self) -> bool:
        return bool(self.future.done())

    def cancel(self) -> None:
        self.future.cancel()

    def _fetch(self) -> None:
        with self._lock:
            if self._fetched:
                return
            if self.future.cancelled():
                # no round trip to the client's loop: a client that is closing (SIGTERM, the
                # end of a run) cancels every unit, then stops its loop, and a fetch sent
                # there waits FETCH_S for nothing, holding up the process's exit
                self._error = FutureCancelledError(
                    self.future.key, "cancelled (its client closed, or the loop cancelled it)"
                )
                self._fetched = True
                return
            try:
                self._value = self.future.result(timeout=self.FETCH_S)
            except (TimeoutError, distributed.TimeoutError):
                worker = self._holder()
                self._error = ResultUnreachable(
                    f"{self.name}: its result was not fetched from "
                    f"{worker or 'its worker'} within {self.FETCH_S:g} s",
                    worker,
                )
            except BaseException as exc:  # the unit's own error, raised to the loop
                self._error = exc
            self._fetched = True

    def result(self) -> Any:
        self._fetch()
        if self._error is not None:
            raise self._error
        value = self._value
        if not self.plain:
            return value
        worker = None
        if not (isinstance(value, dict) and value.get("envelope") == ENVELOPE):
            worker = self._holder()
        return open_envelope(value, self.name, worker)

    def _holder(self) -> str | None:
        """The worker that holds this unit's result (the one that ran it)."""
        return _holder_of(self.future)


def submit_task(
    runner: SynthgenTaskRunner, fn: Any, args: tuple[Any, ...], name: str, retries: Retries
) -> distributed.Future:
    """`fn(*args)` as one Dask task on the runner's (trusted) cluster, no Prefect task run:
    the run's finish (dedup, publish batches), whose tasks would otherwise each start a
    Prefect task run on a worker. Its `result()` waits for it (no fetch limit: the finish
    runs under `ShardTimeouts.watching`, which removes a silent worker)."""
    return runner.client.submit(
        run_unit, fn, args, name, retries, key=f"{name}-{uuid.uuid4().hex}", pure=False
    )


def current_runner() -> SynthgenTaskRunner:
    """The running flow's task runner (its Dask client submits units, checks and publish
    tasks)."""
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None) if ctx is not None else None
    if getattr(runner, "client", None) is None:
        raise RuntimeError("this needs a flow running on synthgen's Dask task runner")
    return runner  # type: ignore[return-value]


def submit_unit(
    runner: SynthgenTaskRunner, fn: Any, args: tuple[Any, ...], name: str, retries: Retries
) -> UnitFuture:
    """`fn(*args)` on the runner's cluster as one Dask task (no Prefect task run), under the
    caller's `dask.annotate` (worker restrictions, priority, resources)."""
    plain = "security" in (runner.client_kwargs or {})
    future = runner.client.submit(
        run_unit_plain if plain else run_unit,
        fn,
        args,
        name,
        retries,
        key=f"{name}-{uuid.uuid4().hex}",
        pure=False,
    )
    return UnitFuture(future, name, plain)
