"""Process-level settings for talking to Prefect (kept out of flows/ so the CLI can use them
before importing Prefect). The library proper never imports prefect."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator

# Prefect is imported inside the functions below, never at the top: this module sets the
# environment Prefect reads when it is first imported (the CLI calls it before any Prefect
# import), and the temporary server's module (`prefect.server`, several seconds to import)
# is needed only when no PREFECT_API_URL is set.


def quiet_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # the temporary server's 20 s default start-up timeout was missed on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # distributed's INFO chatter (worker start/stop) drowns the progress lines
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Use PREFECT_API_URL when set; otherwise start one temporary local Prefect server for
    this process and its Dask workers (a plain flow call would start one per process)."""
    quiet_defaults()
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    with socket.socket() as sock:  # a free loopback port, chosen before prefect reads settings
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_server(port):
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def temporary_server(port: int) -> Iterator[str]:
    """A temporary local Prefect server on `port` (loopback) for as long as the block runs.
    Set PREFECT_API_URL to its URL *before* prefect is first imported in this process: the
    settings Prefect reads at import (and ships to Dask workers with each task) keep the
    value they saw then, and a process without one starts a temporary server of its own."""
    from prefect.server.api.server import SubprocessASGIServer  # only without an API URL

    server = SubprocessASGIServer(port=port)
    server.start()
    threading.Thread(target=_warm_server, args=(port,), name="prefect-warm", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        _flush_logs()
        # its "Stopping temporary server" line can outlive the console (pytest, pipes)
        logging.getLogger("prefect").disabled = True
        try:
            server.stop()
        finally:
            logging.getLogger("prefect").disabled = False


def _warm_server(port: int) -> None:
    """Send a fresh server its first requests now. The first request a new server answers
    takes seconds (2-3 s here, against 0.02-0.2 s for the next ones: the server sets itself
    up lazily), and without this it is the flow run's first call, made after the preflight,
    the plan and the cluster's start, which this overlaps instead. Best effort."""
    base = f"http://127.0.0.1:{port}/api"
    requests = [
        urllib.request.Request(f"{base}/hello"),
        urllib.request.Request(  # and its database
            f"{base}/flows/filter",
            data=json.dumps({"limit": 1}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        ),
    ]
    for req in requests:
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
        except Exception as exc:  # the flow's own calls report a server that is not there
            logging.getLogger(__name__).debug("warming the Prefect server: %s", exc)
            return


def _flush_logs() -> None:
    """Send buffered run logs to the API before the temporary server goes away."""
    try:  # prefect is loaded by now (a run used it); imported here for the reason above
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        EventsWorker.drain_all(timeout=5)
    except Exception:  # logging must never fail the run
        pass
