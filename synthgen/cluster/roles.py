"""Certificate roles on a TLS cluster: what a rented worker's certificate lets it do.

Dask trusts every member of a cluster: any process holding a CA-signed certificate may
connect to the scheduler as a client, run functions there (`run_on_scheduler`) and on every
worker (`Client.run`), and any message it sends may carry a pickle (`__Pickled__`) that the
reader unpickles before looking at it. On rented GPUs a worker's host is a stranger, so
synthgen's certificates carry a role (`OU=synthgen-scheduler`, `synthgen-client`,
`synthgen-worker`, made by infra/make-certs.sh) and this module, preloaded into the
scheduler, the workers and their nannies (`--preload synthgen.cluster.roles`, as the infra/
scripts do) and installed in the flow's process, enforces them on every TLS connection:

- A peer presenting a worker certificate (or a certificate without a synthgen role) is
  *untrusted*. Nothing it sends is unpickled: reading from it, `pickle.loads` refuses (both
  the `__Pickled__` path, which Dask unpickles whatever the reader's `deserializers`, and
  pickled `Serialized` payloads on workers and clients).
- On the scheduler an untrusted peer may send only what a worker sends (`WORKER_MAY_CALL`,
  `WORKER_MAY_STREAM`): registering as a client, `run_function` (`run_on_scheduler`),
  `broadcast` (`Client.run`), submitting graphs, scattering data, plugins and the rest of
  the client API are refused. On a worker it may only fetch data (`get_data`, how workers
  exchange task inputs); on a nanny nothing.
- The scheduler never forwards an untrusted worker's pickled payloads (a task's result, a
  `Client.run` answer, a failed task's exception): each is replaced by a `RuntimeError` made
  on the scheduler, so a client unpickles nothing a worker made. Honest workers send plain
  data as msgpack (`PLAIN_FIRST`), and on TLS clusters the flow's tasks return their final
  state as plain data (`flows/task_runner.py`, `run_prefect_task_plain`): what the flow
  receives from a worker is data, and anything else is a forged result (the unit runs
  elsewhere, the worker is flagged).
- Every refusal closes the connection and is recorded; the scheduler answers
  `synthgen_refusals` with the list, which the flow names in its summary.

A refused connection of a worker's own stream removes that worker from the cluster (Dask
re-runs its tasks elsewhere). What this does not cover is in docs/infra.md (threat model).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from distributed.comm.core import CommClosedError
from distributed.comm.tcp import TLS
from distributed.core import Server
from distributed.protocol import pickle as dask_pickle
from distributed.protocol.serialize import Serialized, serialize

logger = logging.getLogger("synthgen.roles")

ROLE_PREFIX = "synthgen-"
ROLES = ("scheduler", "client", "worker")
TRUSTED_ROLES = frozenset({"scheduler", "client"})

# Requests a worker makes of the scheduler (distributed's Worker and Nanny), and the
# operations of its stream (the scheduler's `worker_handlers`). Everything else a scheduler
# answers is the client API, refused to a worker certificate.
WORKER_MAY_CALL: dict[str, frozenset[str]] = {
    # `unregister` (a nanny whose worker died) names any worker: a worker certificate can
    # make the scheduler drop another worker (its shards then run elsewhere), not run code
    "Scheduler": frozenset(
        {
            "register-worker",
            "register_nanny",
            "heartbeat_worker",
            "who_has",
            "log_event",
            "unregister",
        }
    ),
    "Worker": frozenset({"get_data"}),
    # what a worker process asks of its own nanny when it closes
    "Nanny": frozenset({"close_gracefully"}),
}
WORKER_MAY_STREAM: dict[str, frozenset[str]] = {
    "Scheduler": frozenset(
        {
            "task-finished",
            "task-erred",
            "release-worker-data",
            "add-keys",
            "long-running",
            "reschedule",
            "keep-alive",
            "log-event",
            "worker-status-change",
            "request-refresh-who-has",
            "steal-response",  # work stealing (distributed.stealing)
        }
    ),
    "Worker": frozenset(),
    "Nanny": frozenset(),
}
# Operations any peer may send (they carry no request: distributed handles them itself).
ALWAYS = frozenset({"close", "close-stream"})

MAX_REFUSALS = 1000  # recorded per process; more are counted, not kept


class Refused(Exception):
    """What an untrusted peer sent was not accepted (the connection is closed)."""


@dataclass(frozen=True)
class Peer:
    role: str | None  # one of ROLES, or None: a CA-signed certificate without a synthgen role
    certificate: str  # the certificate's CN
    address: str

    @property
    def trusted(self) -> bool:
        return self.role in TRUSTED_ROLES

    def label(self) -> str:
        role = self.role or "no role"
        return f"{self.address} (certificate {self.certificate!r}, {role})"


def _subject(cert: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            out.setdefault(key, []).append(value)
    return out


def role_of(cert: dict[str, Any] | None) -> tuple[str | None, str]:
    """(role, CN) of a peer certificate as `ssl.SSLSocket.getpeercert()` gives it: the role
    from `OU=synthgen-ROLE`, None when the certificate has none (or several)."""
    subject = _subject(cert or {})
    cn = ",".join(subject.get("commonName", [])) or "?"
    roles = {
        ou[len(ROLE_PREFIX) :]
        for ou in subject.get("organizationalUnitName", [])
        if ou.startswith(ROLE_PREFIX) and ou[len(ROLE_PREFIX) :] in ROLES
    }
    return (roles.pop() if len(roles) == 1 else None), cn


def peer_of(comm: Any) -> Peer | None:
    """The peer of a TLS comm (cached on the comm), None for other transports."""
    peer = getattr(comm, "_synthgen_peer", None)
    if peer is None and isinstance(comm, TLS):
        role, cn = role_of(comm.extra_info.get("peercert"))
        peer = Peer(role, cn, comm.peer_address)
        comm._synthgen_peer = peer
    return peer


# --- refusals -----------------------------------------------------------------------------

_lock = threading.Lock()
REFUSALS: list[dict[str, Any]] = []
_counted = 0


def _refuse(comm: Any, peer: Peer, what: str) -> Refused:
    global _counted
    server = getattr(comm, "_synthgen_server", None)
    record = {
        "time": time.time(),
        "peer": peer.address,
        "certificate": peer.certificate,
        "role": peer.role,
        "server": server or "outgoing connection",
        "what": what,
        "worker": getattr(comm, "_synthgen_worker", None),
    }
    with _lock:
        _counted += 1
        if len(REFUSALS) < MAX_REFUSALS:
            REFUSALS.append(record)
    logger.warning("refused %s from %s: connection closed", what, peer.label())
    comm.abort()
    return Refused(f"{what} from {peer.label()} refused")


def refusals() -> list[dict[str, Any]]:
    """This process's refusals so far (oldest first)."""
    with _lock:
        return [dict(r) for r in REFUSALS]


# --- no pickles from untrusted peers ------------------------------------------------------

_reading_untrusted: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "synthgen_reading_untrusted", default=None
)


class UntrustedPickle(Refused):
    pass


def _guard_loads(loads: Any) -> Any:
    @functools.wraps(loads)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        source = _reading_untrusted.get()
        if source is not None:
            raise UntrustedPickle("a pickled payload")
        return loads(*args, **kwargs)

    guarded._synthgen_guard = True  # type: ignore[attr-defined]
    return guarded


def _ops(msg: Any) -> list[tuple[str, Any]]:
    """(kind, op) of each operation in a message: ("call", op) for a request, ("stream", op)
    for each item of a batch."""
    if isinstance(msg, dict):
        return [("call", msg["op"])] if "op" in msg else []
    if isinstance(msg, (list, tuple)):
        return [("stream", m.get("op")) for m in msg if isinstance(m, dict)]
    return []


def _check_ops(server: str, msg: Any) -> str | None:
    for kind, op in _ops(msg):
        if op in ALWAYS:
            continue
        allowed = (WORKER_MAY_CALL if kind == "call" else WORKER_MAY_STREAM).get(
            server, frozenset()
        )
        if op not in allowed:
            return f"operation {op!r} ({server}, worker certificate)"
    return None


def _placeholder(what: str) -> Serialized:
    return Serialized(*serialize(RuntimeError(what), serializers=("pickle",)))


COLLECTIONS = frozenset({"dict", "list", "tuple", "set"})


def _plain_header(header: Any) -> bool:
    """Whether a serialized payload decodes without unpickling: msgpack, or a builtin
    collection (named, not pickled, in its header) of such payloads."""
    if not isinstance(header, dict):
        return False
    if "is-collection" in header:
        subs = header.get("sub-headers")
        return (
            header.get("type-serialized") in COLLECTIONS
            and isinstance(subs, (list, tuple))
            and all(_plain_header(h) for h in subs)
        )
    return header.get("serializer") == "msgpack"


def _scrub(value: Any, peer: Peer) -> Any:
    """`value` with every serialized payload that is not plain msgpack replaced by one made
    here (the scheduler keeps payloads serialized and forwards them to clients)."""
    if isinstance(value, Serialized):
        if _plain_header(value.header):
            return value
        return _placeholder(f"payload from untrusted worker {peer.label()} not forwarded")
    if isinstance(value, dict):
        return {k: _scrub(v, peer) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, peer) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v, peer) for v in value)
    return value


def _guard_read(read: Any) -> Any:
    @functools.wraps(read)
    async def guarded(self: Any, deserializers: Any = None) -> Any:
        peer = peer_of(self)
        if peer is None or peer.trusted:
            return await read(self, deserializers)
        token = _reading_untrusted.set(peer.label())
        try:
            msg = await read(self, deserializers)
        except UntrustedPickle as exc:
            raise CommClosedError(str(_refuse(self, peer, str(exc.args[0])))) from None
        finally:
            _reading_untrusted.reset(token)
        server = getattr(self, "_synthgen_server", None)
        if server is not None:  # a request to this process's server, not a reply
            problem = _check_ops(server, msg)
            if problem is not None:
                raise CommClosedError(str(_refuse(self, peer, problem)))
            if isinstance(msg, dict) and msg.get("op") == "register-worker":
                self._synthgen_worker = msg.get("name")
        if server == "Scheduler" or (server is None and _forwarding):
            # the scheduler keeps payloads serialized and passes them on to clients (task
            # results, `Client.run` answers, errors): only plain data goes on
            msg = _scrub(msg, peer)
        return msg

    guarded._synthgen_guard = True  # type: ignore[attr-defined]
    return guarded


def _guard_handle_comm(handle: Any) -> Any:
    @functools.wraps(handle)
    async def guarded(self: Any, comm: Any) -> None:
        comm._synthgen_server = _server_kind(self)
        await handle(self, comm)

    guarded._synthgen_guard = True  # type: ignore[attr-defined]
    return guarded


def _server_kind(server: Any) -> str:
    for cls in type(server).__mro__:
        if cls.__name__ in WORKER_MAY_CALL:
            return cls.__name__
    return type(server).__name__


_installed = False
_forwarding = False  # this process is a scheduler: scrub replies from untrusted peers too

# What an honest worker sends first: plain data as msgpack, which every reader may decode
# (a pickle from a worker certificate is refused or replaced); Dask's own families after.
PLAIN_FIRST = ("msgpack", "dask", "pickle")


def _plain_first(write: Any) -> Any:
    @functools.wraps(write)
    async def guarded(
        self: Any, msg: Any, serializers: Any = None, on_error: str = "message"
    ) -> Any:
        # msgpack first even when the reader named its families (the scheduler's gather
        # asks for Dask's defaults); what msgpack cannot encode falls back to those
        families = [f for f in (serializers or PLAIN_FIRST) if f != "msgpack"]
        return await write(self, msg, serializers=["msgpack", *families], on_error=on_error)

    guarded._synthgen_guard = True  # type: ignore[attr-defined]
    return guarded


def install() -> None:
    """Enforce certificate roles on this process's TLS connections (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        dask_pickle.loads = _guard_loads(dask_pickle.loads)
        TLS.read = _guard_read(TLS.read)
        Server._handle_comm = _guard_handle_comm(Server._handle_comm)
        _installed = True


def installed() -> bool:
    return _installed


def dask_setup(server: Any) -> None:
    """Dask preload hook (`dask scheduler|worker --preload synthgen.cluster.roles`, and
    `--preload-nanny` for a worker's nanny)."""
    global _forwarding
    install()
    kind = _server_kind(server)
    if kind == "Scheduler":
        server.handlers["synthgen_refusals"] = refusals
        server.handlers["synthgen_worker_certificates"] = lambda: worker_certificates(server)
        _forwarding = True
    elif kind == "Worker" and not getattr(TLS.write, "_synthgen_guard", False):
        # task results and `Client.run` answers as msgpack when they are plain data (the
        # flow's tasks on TLS clusters return plain data: flows/task_runner.py)
        TLS.write = _plain_first(TLS.write)
    logger.info("certificate roles enforced on %s", type(server).__name__)


def worker_certificates(scheduler: Any) -> dict[str, str]:
    """Worker address -> the CN of the certificate its connection to `scheduler` presented
    in the TLS handshake (what the operator issued it, not what the worker says), for the
    workers connected now over TLS."""
    out: dict[str, str] = {}
    for address, stream in list(getattr(scheduler, "stream_comms", {}).items()):
        peer = peer_of(getattr(stream, "comm", None))
        if peer is not None and peer.certificate != "?":
            out[address] = peer.certificate
    return out


def by_certificate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refusals grouped by the certificate that made them, for a run's summary: each
    `{"certificate", "role", "count", "peers", "workers", "what"}` (most refusals first)."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(
            r.get("certificate") or "?",
            {
                "certificate": r.get("certificate") or "?",
                "role": r.get("role"),
                "count": 0,
                "peers": [],
                "workers": [],
                "what": [],
            },
        )
        g["count"] += 1
        host = str(r.get("peer", "")).rsplit(":", 1)[0]
        for key, value in (("peers", host), ("workers", r.get("worker")), ("what", r.get("what"))):
            if value and value not in g[key]:
                g[key].append(value)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["certificate"]))
