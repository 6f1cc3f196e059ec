"""The `synthgen` command SIGKILLed at a named checkpoint of its run (tests only).

    python -m tests.support.killpoint POINT[:N] run CONFIG ...

SIGKILLs the `synthgen run` process the N-th time (default 1) the run reaches checkpoint
POINT (`synthgen.checkpoints.POINTS`). Points reached in the process running the flow kill it
directly; points reached in a Dask worker (`generate.file_written`, `generate.committed`,
`dedup.parts_written`) are seen through this module as a worker preload (set in the dask
config before the run's LocalCluster starts, inherited by its worker processes): the worker
SIGKILLs the `synthgen run` process, then itself, so that nothing of the attempt goes on past
the point. N counts per process (a LocalCluster of one worker: per run).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click
import dask

from synthgen.checkpoints import POINTS, set_checkpoint_hook
from synthgen.cli import main as cli_main

MODULE = "tests.support.killpoint"  # as a preload (run with -m, this module is __main__)


def install(spec: str, target: int) -> None:
    """Kill `target` (then this process) the N-th time checkpoint POINT is reached here."""
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"killpoint: unknown checkpoint {name!r} (one of {', '.join(POINTS)})")
    want = int(nth or 1)
    seen = 0

    def hook(point: str) -> None:
        nonlocal seen
        if point != name:
            return
        seen += 1
        if seen < want:
            return
        sys.stdout.flush()
        if target != os.getpid():
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    set_checkpoint_hook(hook)


@click.command()
@click.option("--point", required=True, help="POINT[:N]")
@click.option("--target", type=int, required=True, help="pid of the `synthgen run` process")
def dask_setup(worker: Any, point: str, target: int) -> None:
    """Dask preload hook: this worker process kills the run at the point."""
    install(point, target)


def main(argv: list[str]) -> int:
    spec, rest = argv[0], argv[1:]
    me = os.getpid()
    install(spec, me)
    # the run's LocalCluster starts its workers with this module preloaded (the nanny passes
    # its dask config to the worker process it spawns)
    dask.config.set(
        {
            "distributed.worker.preload": [MODULE],
            "distributed.worker.preload-argv": [f"--point={spec}", f"--target={me}"],
        }
    )
    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
