"""Exit codes, SIGTERM, and the watchdog that takes a killed `synthgen run`'s processes down.

A run starts processes of its own: the temporary Prefect server (Prefect's
`SubprocessASGIServer`, a `python -m uvicorn` child started with `subprocess.Popen`), the
LocalCluster's worker processes (spawned by its nannies, which live in this process), and
whatever those start (a vLLM engine core). On a normal exit, an error, Ctrl-C or SIGTERM they
are closed by the `finally` blocks that started them. SIGKILL runs no `finally`: for that,
`start_watchdog` starts one small process (`python -m synthgen.cli.lifecycle PID`) that
records this process's descendants twice a second and, once this process is gone, sends them
SIGTERM, then SIGKILL to whatever is left after a grace period, and exits. (Dask's worker
processes also exit on their own when their nanny's pipe closes; the Prefect server does
not, and Prefect offers no hook to start it with a parent-death signal.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

# exit codes of the `synthgen` command (docs/cli.md lists them)
EXIT_OK = 0  # complete
EXIT_ERROR = 1  # an unexpected error (a bug): Python's traceback
EXIT_INVALID = 2  # invalid input: config, overrides, prompts, preflight, arguments
EXIT_INCOMPLETE = 3  # shards failed or not started (budget), storage gave up: re-run resumes
EXIT_WAIT_TIMEOUT = 4  # `synthgen trigger --timeout`: stopped waiting, the run goes on
EXIT_BUSY = 5  # another live run holds the run's lease
EXIT_SIGINT = 130  # Ctrl-C (128 + SIGINT)
EXIT_SIGTERM = 143  # SIGTERM (128 + SIGTERM)

POLL_S = 0.5
GRACE_S = 5.0


class Terminated(BaseException):
    """SIGTERM arrived: unwinds the run like Ctrl-C (every `finally` runs), never caught by
    `except Exception`."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread. (Inside a flow run Prefect's own
    handler raises its TerminationSignal first, unwinds the flow, then re-sends the signal,
    which lands here.)"""
    signal.signal(signal.SIGTERM, _raise_terminated)


def start_watchdog() -> subprocess.Popen[bytes] | None:
    """The watchdog process for this process (None where /proc-style process listing is not
    available). It needs nothing from this process but its pid."""
    try:
        import psutil  # noqa: F401  (a dependency of distributed)
    except ImportError:  # pragma: no cover
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "synthgen.cli.lifecycle", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal is for the run, not for the watchdog
        close_fds=True,
    )


def watch(pid: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> int:
    """Record `pid`'s descendants until `pid` is gone; then stop the recorded ones that are
    still running. Returns how many were still running."""
    import psutil

    me = os.getpid()
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    while True:
        try:
            for child in parent.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        if not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(poll_s)
    alive = [p for p in known.values() if p.is_running()]  # is_running: same pid and start
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(alive)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the run's process group may be signalled
    sys.exit(0 if watch(int(sys.argv[1])) >= 0 else 1)
