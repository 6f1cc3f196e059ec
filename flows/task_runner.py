"""The Dask task runner synthgen's flows use: prefect-dask's, with cheaper submission.

Two costs dominate submitting a Prefect task through prefect-dask on small machines
(measured with cProfile; see benchmarks/RESULTS.md): dumping the Prefect Settings model into
the task's context for every task (fixed in `_fast_context`), and dask tokenising that
large context to derive a task key (avoided here with `pure=False`: every shard attempt is
a distinct computation anyway, so content-addressed keys buy nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from flows import _fast_context

# Installed at import: the worker processes import this module when they unpickle a task
# of flows.run, so the worker-side part (the API client's TLS context) applies there too.
_fast_context.install()


class SynthgenTaskRunner(DaskTaskRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _fast_context.install()

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
        future = self.client.submit(
            task,
            parameters=parameters,
            wait_for=wait_for,
            dependencies=dependencies,
            return_type="state",
            pure=False,
        )
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)
