"""A run lease: at most one live flow per output prefix and run id.

The lease is one small JSON object, `OUTPUT/runs/RUN_ID/_lease.json`, naming its holder
(a random id per flow invocation), host, pid and expiry. `acquire` creates it, or takes it
over when it has expired (or its holder was a process on this host that no longer exists),
and refuses a live lease held by someone else with a `RunLockedError` naming the holder. A
heartbeat thread renews the expiry while the flow runs; `release` deletes it.

Every change is a compare-and-swap, so two contenders can never both believe they hold it:
- S3: `PutObject` with `If-None-Match: *` (create) and `If-Match: ETAG` (renew/take over);
- local files: a read-modify-write under an exclusive `fcntl.flock` on a sidecar lock file;
- anything else fsspec offers: write, wait, read back and check the holder is still us.

Expiry uses the holder's wall clock: hosts sharing an output prefix need roughly synced clocks
(NTP); the TTL should be far larger than the skew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from synthgen.errors import RunLockedError, StorageError
from synthgen.io.layout import LEASE, RunLayout
from synthgen.io.store import Store

log = logging.getLogger(__name__)

LEASE_NAME = LEASE  # the object's name under the run (synthgen.io.layout)


class LeaseLostError(RunLockedError):
    """Our lease was taken over by another run (it expired while we could not renew it)."""


@dataclass
class LeaseInfo:
    run_id: str
    holder: str
    host: str
    pid: int
    acquired_at: str
    renewed_at: str
    expires_at: str
    expires_epoch: float
    ttl_s: float

    @classmethod
    def from_json(cls, data: bytes) -> LeaseInfo:
        obj = json.loads(data)
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__})

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def describe(self) -> str:
        return (
            f"holder {self.holder} on host {self.host} (pid {self.pid}), acquired "
            f"{self.acquired_at}, expires {self.expires_at}"
        )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _version(data: bytes) -> str:
    """The S3 ETag of a single-part PUT (and our local version token): md5 of the bytes."""
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _precondition_failed(exc: BaseException) -> bool:
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return err.get("Code") == "PreconditionFailed" or status == 412
    return False


# --------------------------------------------------------------------------- backends
class _Backend:
    """Compare-and-swap on one object. Versions are opaque tokens from `read`."""

    def __init__(self, store: Store, path: str) -> None:
        self.store = store
        self.path = path

    def read(self) -> tuple[bytes | None, str | None]:
        data = self.store.read_optional(self.path)
        return data, (_version(data) if data is not None else None)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield

    def create(self, data: bytes) -> bool:
        raise NotImplementedError

    def replace(self, data: bytes, version: str) -> bool:
        raise NotImplementedError

    def delete(self, version: str) -> bool:
        raise NotImplementedError


class _S3Backend(_Backend):
    def _bucket_key(self) -> tuple[str, str]:
        bucket, key, _ = self.store.fs.split_path(self.path)
        return bucket, key

    def create(self, data: bytes) -> bool:
        def _create() -> bool:
            try:
                self.store.fs.pipe_file(self.path, data, mode="create")
                return True
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise

        return self.store.retry(_create, f"creating lease {self.store.location(self.path)}")

    def _if_match(self, method: str, what: str, version: str, **params: Any) -> bool:
        """`method` on the lease object only if it is still at `version`; False when it is
        not (or is gone)."""
        bucket, key = self._bucket_key()

        def _call() -> bool:
            try:
                self.store.fs.call_s3(method, Bucket=bucket, Key=key, IfMatch=version, **params)
                return True
            except (OSError, FileNotFoundError) as exc:
                if isinstance(exc, FileNotFoundError) or _precondition_failed(exc):
                    return False
                raise

        ok = self.store.retry(_call, f"{what} lease {self.store.location(self.path)}")
        self.store.fs.invalidate_cache(self.path)
        return ok

    def replace(self, data: bytes, version: str) -> bool:
        return self._if_match("put_object", "renewing", version, Body=data)

    def delete(self, version: str) -> bool:
        return self._if_match("delete_object", "releasing", version)


class _LocalBackend(_Backend):
    """Read-modify-write under an exclusive flock held on `_lease.json.lock`."""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl  # POSIX only: imported where the local backend needs it, not at module top

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _current(self) -> str | None:
        return self.read()[1]

    def create(self, data: bytes) -> bool:
        if self._current() is not None:
            return False
        self.store.write_bytes(self.path, data)
        return True

    def replace(self, data: bytes, version: str) -> bool:
        if self._current() != version:
            return False
        self.store.write_bytes(self.path, data)
        return True

    def delete(self, version: str) -> bool:
        if self._current() != version:
            return False
        self.store.rm(self.path)
        return True


class _ReadBackBackend(_Backend):
    """No conditional writes: write, let other writers land, read back and compare."""

    settle_s = 0.5

    def _write_verified(self, data: bytes) -> bool:
        self.store.write_bytes(self.path, data)
        time.sleep(self.settle_s)
        return self.read()[0] == data

    def create(self, data: bytes) -> bool:
        if self.read()[0] is not None:
            return False
        return self._write_verified(data)

    def replace(self, data: bytes, version: str) -> bool:
        if self.read()[1] != version:
            return False
        return self._write_verified(data)

    def delete(self, version: str) -> bool:
        if self.read()[1] != version:
            return False
        self.store.rm(self.path)
        return True


def _backend(store: Store, path: str) -> _Backend:
    if store.local:
        return _LocalBackend(store, path)
    protocol = store.fs.protocol if isinstance(store.fs.protocol, tuple) else (store.fs.protocol,)
    if "s3" in protocol or "s3a" in protocol:
        return _S3Backend(store, path)
    return _ReadBackBackend(store, path)


# --------------------------------------------------------------------------- the lease
class RunLease:
    """The lease of one run. Use as a context manager: acquire, heartbeat, release."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        ttl_s: float = 60.0,
        heartbeat_s: float | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_s}")
        self.store = store
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl_s / 3
        self.layout = RunLayout(store, run_id)
        self.path = self.layout.lease
        self.holder = uuid.uuid4().hex[:16]
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.acquired_at = ""
        self.lost = threading.Event()
        self.took_over: LeaseInfo | None = None
        self._backend = _backend(store, self.path)
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- helpers
    def _payload(self) -> bytes:
        now = time.time()
        info = LeaseInfo(
            run_id=self.run_id,
            holder=self.holder,
            host=self.host,
            pid=self.pid,
            acquired_at=self.acquired_at or _iso(now),
            renewed_at=_iso(now),
            expires_at=_iso(now + self.ttl_s),
            expires_epoch=now + self.ttl_s,
            ttl_s=self.ttl_s,
        )
        return info.to_json()

    def _parse(self, data: bytes) -> LeaseInfo | None:
        try:
            return LeaseInfo.from_json(data)
        except (ValueError, KeyError, TypeError):
            log.warning(
                "lease %s is unreadable; treating it as stale", self.store.location(self.path)
            )
            return None

    def _is_stale(self, info: LeaseInfo | None) -> bool:
        if info is None or info.expires_epoch <= time.time():
            return True
        # a holder on this host whose process is gone cannot renew: no need to wait for expiry
        return info.host == self.host and info.pid != self.pid and not _pid_alive(info.pid)

    def where(self) -> str:
        return self.layout.url()

    def _refusal(self, info: LeaseInfo) -> RunLockedError:
        return RunLockedError(
            f"run {self.run_id!r} at {self.where()} is being run by another live "
            f"process: {info.describe()}. Two runs must not write the same run id "
            "at once; wait for it to finish (or, if it is gone, until the lease "
            f"expires), or choose another run_id. Lease object: "
            f"{self.layout.url(self.path)}"
        )

    # ---------------------------------------------------------------- API
    def ensure_free(self) -> None:
        """Raise RunLockedError if another live run holds the lease (takes nothing): lets the
        CLI refuse before it starts a Prefect server or a cluster."""
        data, _ = self._backend.read()
        info = self._parse(data) if data is not None else None
        if info is not None and info.holder != self.holder and not self._is_stale(info):
            raise self._refusal(info)

    def acquire(self) -> RunLease:
        """Take the lease, or raise RunLockedError naming the live holder."""
        for _ in range(5):
            with self._backend.locked():
                data, version = self._backend.read()
                if data is None:
                    self.acquired_at = _iso(time.time())
                    payload = self._payload()
                    if self._backend.create(payload):
                        self._version = _version(payload)
                        log.info("lease on %s acquired by %s", self.where(), self.holder)
                        return self
                    continue
                info = self._parse(data)
                if info is not None and info.holder == self.holder:
                    payload = self._payload()
                    if self._backend.replace(payload, version or ""):
                        self._version = _version(payload)
                        return self
                    continue
                if info is not None and not self._is_stale(info):
                    raise self._refusal(info)
                self.acquired_at = _iso(time.time())
                payload = self._payload()
                if self._backend.replace(payload, version or ""):
                    self._version = _version(payload)
                    self.took_over = info
                    log.warning(
                        "took over the stale lease on %s (%s)",
                        self.where(),
                        info.describe() if info else "unreadable",
                    )
                    return self
        raise RunLockedError(
            f"run {self.run_id!r} at {self.where()}: could not acquire the lease "
            "(other processes keep changing it); try again"
        )

    def renew(self) -> None:
        """Push the expiry forward; raise LeaseLostError if someone else holds it now."""
        with self._backend.locked():
            payload = self._payload()
            if self._version and self._backend.replace(payload, self._version):
                self._version = _version(payload)
                return
            data, _ = self._backend.read()
        info = self._parse(data) if data is not None else None
        self.lost.set()
        raise LeaseLostError(
            f"run {self.run_id!r} at {self.where()}: lost the lease "
            + (f"to {info.describe()}" if info else "(it was deleted)")
        )

    def release(self) -> None:
        """Delete the lease if we still hold it (never someone else's)."""
        self.stop_heartbeat()
        if self._version is None:
            return
        with self._backend.locked():
            try:
                if not self._backend.delete(self._version):
                    log.warning("lease on %s was no longer ours at release", self.where())
            except StorageError as exc:
                log.warning("could not release the lease on %s (%s); it expires", self.where(), exc)
        self._version = None

    # ---------------------------------------------------------------- heartbeat
    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-heartbeat-{self.run_id}", daemon=True
        )
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.renew()
            except LeaseLostError as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # storage hiccup: keep trying until the lease expires
                log.warning("lease heartbeat for %s failed: %s", self.run_id, exc)

    def check(self) -> None:
        """Raise LeaseLostError if the heartbeat found the lease taken over."""
        if self.lost.is_set():
            raise LeaseLostError(f"run {self.run_id!r} at {self.where()}: the lease was lost")

    def __enter__(self) -> RunLease:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_lease(store: Store, run_id: str) -> LeaseInfo | None:
    """The current lease of a run, or None."""
    path = RunLayout(store, run_id).lease
    data, _ = _backend(store, path).read()
    if data is None:
        return None
    try:
        return LeaseInfo.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{store.location(path)}: unreadable lease ({exc})") from exc


__all__ = ["LEASE_NAME", "LeaseInfo", "LeaseLostError", "RunLease", "read_lease"]
