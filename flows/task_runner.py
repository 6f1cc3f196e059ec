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
import uuid
from collections.abc import Iterable
from typing import Any

import distributed
from prefect.task_engine import run_task_async, run_task_sync
from prefect.utilities.engine import collect_task_run_inputs_sync
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from flows import _fast_context

# Installed at import: the worker processes import this module when they unpickle a task
# (`run_prefect_task`), so the worker-side parts (the API client's TLS context, no log
# record per successful task) apply there too.
_fast_context.install()


class Opaque:
    """A task parameter Prefect passes through as one value, without walking into it.

    Prefect walks every task parameter looking for futures and states: on the flow side
    (prefect-dask's submit, twice) and on the worker (the task run's inputs, then parameter
    resolution). A run config is a few hundred nested nodes and holds no futures; passing it
    as an `Opaque` skips those walks (measured with py-spy on
    benchmarks/bench_orchestration.py: the worker's walks of task inputs went from 246 to 32
    samples over 240 tasks). Tasks take `unwrap(param)`.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Opaque({type(self.value).__name__})"


def unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Opaque) else value


def run_prefect_task(task: Any, **run_task_kwargs: Any) -> Any:
    """What a Dask worker runs for a Prefect task (prefect-dask's per-submit closure, as a
    module function: pickled by reference instead of by value with the task's attributes,
    which cost ~4 ms per task on 2 cores)."""
    run_task_kwargs["context"] = _fast_context.materialize(run_task_kwargs["context"])
    if task.isasync:
        return asyncio.run(run_task_async(task=task, **run_task_kwargs))
    return run_task_sync(task=task, **run_task_kwargs)


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
        future = distributed.Client.submit(
            self.client,
            run_prefect_task,
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
        return PrefectDaskFuture(wrapped_future=future, task_run_id=task_run_id)
