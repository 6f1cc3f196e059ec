"""A tampered worker (tests only): the host of a rented GPU that starts the worker it was
given with this preload added (`dask worker ... --preload tests.support.tampered`), with the
worker certificate the operator issued it, and tries what issue 17 lists from inside its
own process:

- connect to the scheduler as a Dask client and run code there (`run_on_scheduler`);
- run code on the scheduler and on every worker through the scheduler (`run_function`,
  `broadcast` as `Client.run` sends them);
- send the scheduler and another worker a pickle that runs code where it is unpickled;
- run code on another worker directly (`run`);
- send back a pickle that runs code instead of each generate task's result.

Every payload, wherever it runs, creates $SYNTHGEN_TAMPER_MARKER. Each attempt's outcome is
a JSON line in $SYNTHGEN_TAMPER_LOG: `refused` (the peer closed the connection on the
request), `accepted` (an answer came back), `answered with an error` (the request was read
and failed: a pickle in it was unpickled first), or `error` (the attempt itself failed, e.g.
no connection). The marker file is what shows whether code ran. The other worker's address
is $SYNTHGEN_TAMPER_TARGET. Meanwhile the worker runs shards like any other.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
from pathlib import Path
from typing import Any

from distributed import Client
from distributed.comm import CommClosedError, connect
from distributed.protocol.pickle import dumps
from distributed.protocol.serialize import ToPickle
from distributed.security import Security


class Payload:
    """Unpickling it creates the marker file (in whatever process unpickles it)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _log(entry: dict[str, Any]) -> None:
    with open(os.environ["SYNTHGEN_TAMPER_LOG"], "a") as fh:
        fh.write(json.dumps(entry) + "\n")


async def _request(address: str, conn_args: dict[str, Any], msg: dict[str, Any]) -> str:
    try:
        comm = await connect(address, timeout=10, **conn_args)
    except Exception as exc:  # the attack itself failed: not a refusal
        return f"error: connect failed: {type(exc).__name__}: {exc}"
    try:
        await comm.write(msg)
        reply = await asyncio.wait_for(comm.read(), 10)
    except CommClosedError as exc:  # the peer closed the connection on the request
        return f"refused: {exc}"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    finally:
        comm.abort()
    if isinstance(reply, dict) and reply.get("status") not in (None, "OK"):
        return f"answered with an error (the payload was read): {reply.get('exception_text')}"
    return f"accepted: {str(reply)[:200]}"


async def _attacks(scheduler: str, security: Any) -> None:
    marker = os.environ["SYNTHGEN_TAMPER_MARKER"]
    target = os.environ.get("SYNTHGEN_TAMPER_TARGET", "")
    touch = functools.partial(Path.touch, Path(marker))
    conn_args = security.get_connection_args("client")
    try:
        async with Client(scheduler, security=security, asynchronous=True, timeout=10) as c:
            await c.run_on_scheduler(touch)
        outcome = "accepted: connected as a client and ran code on the scheduler"
    except (CommClosedError, OSError) as exc:  # the scheduler closed the connection
        outcome = f"refused: {type(exc).__name__}: {exc}"
    except Exception as exc:
        outcome = f"error: {type(exc).__name__}: {exc}"
    _log({"attack": "client", "outcome": outcome})
    attacks = [
        ("run_on_scheduler", scheduler, {"op": "run_function", "function": dumps(touch)}),
        (
            "client_run",
            scheduler,
            {"op": "broadcast", "msg": {"op": "run", "function": dumps(touch)}},
        ),
        (
            "pickle_to_scheduler",
            scheduler,
            {"op": "heartbeat_worker", "x": ToPickle(Payload(marker))},
        ),
    ]
    if target:
        attacks += [
            (
                "pickle_to_worker",
                target,
                {"op": "get_data", "keys": [], "x": ToPickle(Payload(marker))},
            ),
            ("run_on_worker", target, {"op": "run", "function": dumps(touch)}),
        ]
    for name, address, msg in attacks:
        _log({"attack": name, "outcome": await _request(address, conn_args, msg)})
    _log({"attack": "done", "outcome": "done"})


CREDENTIAL_NAMES = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key",
                    "aws_session_token", "credentials_block"}  # fmt: skip


def _secrets_in(node: Any, path: str = "") -> list[str]:
    """Where `node` (the run config a task received) holds something credential-like."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            where = f"{path}.{k}" if path else str(k)
            if str(k).lower() in CREDENTIAL_NAMES and isinstance(v, str) and v and "*" not in v:
                found.append(where)
            found += _secrets_in(v, where)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _secrets_in(v, f"{path}[{i}]")
    return found


def _credential_search(config: Any) -> str:
    """What a hostile host finds to reach the bucket with: its environment, the run config
    its tasks carry, the usual credential files, botocore's whole chain."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    found = [k for k in names if os.environ.get(k)]
    found += [f"config:{w}" for w in _secrets_in(getattr(config, "value", config))]
    for f in ("~/.aws/credentials", "~/.aws/config", "~/.s3cfg", "~/.config/rclone/rclone.conf"):
        if Path(os.path.expanduser(f)).exists():
            found.append(f)
    try:
        import botocore.session

        if botocore.session.get_session().get_credentials() is not None:
            found.append("botocore credential chain")
    except Exception:  # noqa: S110
        pass
    return f"found: {', '.join(found)}" if found else "none"


def _status(method: str, url: str, data: bytes | None = None) -> str:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return f"accepted: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"refused: HTTP {exc.code}" if exc.code in (401, 403) else f"error: HTTP {exc.code}"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"


def _misuse(grant: dict[str, Any]) -> None:
    """What the host tries with the presigned URLs of its shard attempt."""
    from synthgen.io.grant import Grant, GrantRefused, GrantStore

    get_path, get = next(iter(grant["get"].items()))
    put_path, put = next(iter(grant["put"].items()))
    run_root = put_path.split("/staging/")[0]  # bucket/prefix/runs/RUN_ID (default stage)
    base, _, query = put.partition("?")
    endpoint = base[: base.index("/", len("http://"))]
    bucket_prefix = grant["root"]

    def at(url: str, old: str, new: str) -> str:
        u, _, q = url.partition("?")
        return u.replace(old, new) + "?" + q

    shard = put_path.rsplit("/", 1)[1].split(".")[0]
    other = "s00001" if shard == "s00000" else "s00000"
    tries = {
        "overwrite_committed_shard": (
            "PUT",
            at(put, put_path, f"{run_root}/shards/{shard}.parquet"),
            b"x",
        ),  # fmt: skip
        "write_commit_marker": (
            "PUT",
            at(put, put_path, f"{run_root}/_commits/{shard}.json"),
            b"{}",
        ),  # fmt: skip
        "write_into_dataset": (
            "PUT",
            at(put, put_path, f"{bucket_prefix}/dataset/data/evil.parquet"),
            b"x",
        ),  # fmt: skip
        "delete_with_put_url": ("DELETE", put, None),
        "delete_input": ("DELETE", get, None),
        "get_url_for_put": ("PUT", get, b"overwritten"),
        "put_url_for_get": ("GET", put, None),
        "read_other_run": ("GET", at(get, "/runs/", "/runs/other-run-"), None),
        "read_other_shard": ("GET", at(get, get_path, get_path.replace(shard, other)), None),
        "list_bucket": ("GET", f"{endpoint}/{bucket_prefix.split('/')[0]}?list-type=2", None),
        "list_with_signed_query": (
            "GET",
            f"{endpoint}/{bucket_prefix.split('/')[0]}?{query}",
            None,
        ),  # fmt: skip
        "extend_expiry": ("GET", get.replace("X-Amz-Expires=", "X-Amz-Expires=9"), None),
        "unsigned_put": ("PUT", f"{endpoint}/{put_path}", b"x"),
    }
    for name, (method, url, data) in tries.items():
        _log({"attack": f"s3:{name}", "outcome": _status(method, url, data)})
    gs = GrantStore(Grant.from_dict(grant))
    for name, op in (("grant_store_rm", lambda: gs.rm(get_path)),
                     ("grant_store_ls", lambda: gs.ls(bucket_prefix))):  # fmt: skip
        try:
            op()
            outcome = "accepted"
        except GrantRefused as exc:
            outcome = f"refused: {exc}"
        _log({"attack": f"s3:{name}", "outcome": outcome})


_misused = False


def _poison_results(marker: str) -> None:
    """Its generate tasks send back, instead of their result, a pickle that runs code where
    it is unpickled (the flow's process, if the scheduler passed it on)."""
    import flows.task_runner as runner
    import flows.units as units

    real = runner.run_prefect_task_plain

    def poisoned(task: Any, **kwargs: Any) -> Any:
        global _misused
        if getattr(task, "name", "") == "generate-shard":
            params = kwargs.get("parameters") or {}
            _log({"attack": "credentials", "outcome": _credential_search(params.get("config"))})
            if isinstance(params.get("grant"), dict) and not _misused:
                _misused = True
                _misuse(params["grant"])
            _log({"attack": "poisoned_result", "outcome": "sent"})
            return Payload(marker)
        return real(task, **kwargs)

    real_unit = units.run_unit_plain

    def poisoned_unit(fn: Any, args: Any, name: str, retries: Any) -> Any:
        global _misused
        if name.startswith("generate-"):  # a generate unit (a plain Dask task)
            _log({"attack": "credentials", "outcome": _credential_search(args[0])})
            grant = args[1] if len(args) > 1 else None
            if isinstance(grant, dict) and not _misused:  # an untrusted run's unit
                _misused = True
                _misuse(grant)
            _log({"attack": "poisoned_result", "outcome": "sent"})
            return Payload(marker)
        return real_unit(fn, args, name, retries)

    # the flow's tasks reach workers as a reference to these module attributes
    runner.run_prefect_task_plain = poisoned
    units.run_unit_plain = poisoned_unit


def dask_setup(worker: Any) -> None:
    _poison_results(os.environ["SYNTHGEN_TAMPER_MARKER"])
    scheduler = worker.scheduler.address
    # its own certificate, presented as a client's (what `Client(security=...)` dials with)
    security = Security(
        tls_ca_file=worker.security.tls_ca_file,
        tls_client_cert=worker.security.tls_worker_cert,
        tls_client_key=worker.security.tls_worker_key,
        require_encryption=True,
    )

    def run() -> None:
        asyncio.run(_attacks(scheduler, security))

    threading.Thread(target=run, name="tampered", daemon=True).start()
