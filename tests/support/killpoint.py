"""The `synthgen` command with a publish checkpoint that SIGKILLs its own process (tests only).

    python -m tests.support.killpoint POINT[:N] run CONFIG ...

kills the process the N-th time (default 1) the publish reaches checkpoint POINT
(`synthgen.stages.publish.checkpoint`: publish.shard_done, publish.before_switch,
publish.after_switch).
"""

from __future__ import annotations

import os
import signal
import sys

from synthgen.cli import main
from synthgen.stages.publish import set_checkpoint_hook


def install(spec: str) -> None:
    name, _, nth = spec.partition(":")
    want = int(nth or 1)
    seen = 0

    def hook(point: str) -> None:
        nonlocal seen
        if point == name:
            seen += 1
            if seen >= want:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    set_checkpoint_hook(hook)


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
