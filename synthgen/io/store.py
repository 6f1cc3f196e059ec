"""Object storage through fsspec: local paths, s3:// (AWS, MinIO, any S3 endpoint), memory://.

Every write of a table or JSON document is atomic as seen by readers: locally a temporary
file is renamed into place; on S3 one PUT (or a completed multipart upload) makes the object
appear whole. Transient errors are retried with capped exponential backoff in one helper
(`retrying`); errors that retrying cannot fix become builtin exceptions with context.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractFileSystem

from synthgen.config import OutputConfig
from synthgen.config.secret_rule import unwrap_credentials
from synthgen.errors import StorageError
from synthgen.io.layout import RUNS_DIR

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors worth retrying: connection-level problems, throttling, 5xx. botocore's
# EndpointConnectionError is not an OSError (FIELD-NOTES), so it is named explicitly.
_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ClientOSError",
    "IncompleteReadError",
    "ResponseStreamingError",
}
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return False
    for cls in type(exc).__mro__:
        if cls.__name__ in _TRANSIENT_NAMES:
            return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        # s3fs raises OSError for throttling / 5xx after its own short retries
        text = str(exc)
        return any(s in text for s in ("SlowDown", "ServiceUnavailable", "InternalError", "503"))
    return False


class RetryPolicy:
    def __init__(self, attempts: int = 8, base: float = 0.25, cap: float = 8.0) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2**attempt) * (0.5 + random.random() / 2)


DEFAULT_RETRY = RetryPolicy()


def retrying(fn: Callable[[], T], what: str, policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """Run `fn`, retrying transient storage errors with capped exponential backoff."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if isinstance(exc, _PERMANENT):
                raise
            if not is_transient(exc):
                raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc
            if attempt == policy.attempts - 1:
                raise StorageError(
                    f"{what}: still failing after {policy.attempts} attempts "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            wait = policy.delay(attempt)
            log.warning("%s: %s; retrying in %.1fs", what, type(exc).__name__, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


# Resolves `output.credentials_block` to storage options (set by flows/credentials.py, which
# may talk to Prefect; the library itself never does).
_credentials_resolver: Callable[[OutputConfig], dict[str, Any]] | None = None


def read_many(
    fn: Callable[[Any], T], items: list[Any], threads: int, local: bool = False
) -> list[T]:
    """`fn` over `items` in order, `threads` at a time once there are enough of them to be
    worth a pool: many small reads (ledger rows, commit markers) are one round trip each,
    one after another on object stores otherwise. `local`: a local disk, where a read is
    tens of microseconds and a pool only adds its own locking (10,000 commit markers:
    0.26 s one after another, 0.45 s in 16 threads)."""
    if len(items) < 8 or local:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def set_credentials_resolver(resolver: Callable[[OutputConfig], dict[str, Any]] | None) -> None:
    global _credentials_resolver
    _credentials_resolver = resolver


def _storage_options(output: OutputConfig) -> dict[str, Any]:
    opts = dict(output.storage_options)
    if output.credentials_block:
        if _credentials_resolver is None:
            raise StorageError(
                f"output.credentials_block {output.credentials_block!r}: credentials blocks are "
                "resolved through Prefect (flows.credentials); set AWS_* variables instead here"
            )
        opts = dict(_credentials_resolver(output))
    opts = unwrap_credentials(opts)  # the fsspec boundary: SecretStr values in clear
    if output.uri.startswith("s3://"):
        # accept endpoint_url at top level (as users write it) and fail fast on dead endpoints
        endpoint = opts.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
        if endpoint:
            client_kwargs.setdefault("endpoint_url", endpoint)
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        config_kwargs = dict(opts.pop("config_kwargs", {}) or {})
        config_kwargs.setdefault("connect_timeout", 5)
        config_kwargs.setdefault("read_timeout", 60)
        config_kwargs.setdefault("retries", {"max_attempts": 2})
        opts["config_kwargs"] = config_kwargs
        # one filesystem per (options, process, thread), fsspec's instance cache: a new one
        # is a new S3 client (its set-up and first connection: 0.1-0.25 s against a
        # loopback server), which a unit used to pay for each Store it opened
        # (benchmarks/RESULTS-speed.md); listings are not cached across calls either way
        opts.setdefault("use_listings_cache", False)
    return opts


def _synced_temp(path: str, data: bytes) -> str:
    """A complete, fsynced temporary file beside local `path`, to be moved/linked into place
    (removed again when writing it fails). Its name starts with "." (`.NAME.tmp-XXXX`):
    directory readers (pyarrow, pandas) skip it and `*.parquet` globs do not match it, even
    when a killed write leaves it behind."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def atomic_write(
    fs: AbstractFileSystem,
    path: str,
    data: bytes,
    policy: RetryPolicy = DEFAULT_RETRY,
    what: str | None = None,
) -> None:
    """Write `data` to `path` whole, retrying transient errors: locally an fsynced temporary
    file renamed into place; on object stores one PUT (which appears whole or not at all).
    `Store.write_bytes` is this with the store's own retry policy."""
    local = _is_local(fs)

    def _write() -> None:
        if local:
            tmp = _synced_temp(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:  # no temporary file outlives a failed write
                _unlink_quietly(tmp)
                raise
        else:
            fs.pipe_file(path, data)

    retrying(_write, what or f"writing {path if local else fs.unstrip_protocol(path)}", policy)


class Store:
    """The output location of a run: `ROOT/runs/RUN_ID/...` and `ROOT/dataset/`."""

    def __init__(self, output: OutputConfig, fresh: bool = False) -> None:
        """`fresh`: a filesystem of its own, not the one fsspec keeps for these options in
        this thread (the preflight: it checks the credentials as they are now, not as a
        client this process opened earlier found them)."""
        self.output = output
        self.policy = RetryPolicy(
            attempts=output.retry_attempts,
            base=output.retry_base_delay_s,
            cap=output.retry_max_delay_s,
        )
        self.uri = output.uri.rstrip("/") or output.uri
        opts = _storage_options(output)
        if fresh:
            opts["skip_instance_cache"] = True
        self.fs, root = fsspec.core.url_to_fs(self.uri, **opts)
        self.root = root.rstrip("/") if root != "/" else root
        self.local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        if self.local:
            self.root = os.path.abspath(self.root)

    @classmethod
    def over(cls, fs: AbstractFileSystem, root: str, policy: RetryPolicy = DEFAULT_RETRY) -> Store:
        """A store rooted at `root` of an already open filesystem, with `policy` (for
        callers that hold an `(fs, path)` pair rather than an output config)."""
        store = cls.__new__(cls)
        store.fs = fs
        store.local = _is_local(fs)
        store.root = root.rstrip("/") or root
        store.uri = store.root if store.local else fs.unstrip_protocol(store.root)
        store.output = OutputConfig(uri=store.uri)
        store.policy = policy
        return store

    # ---------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """User-facing location (with protocol) of a path under the root."""
        return self.location(self.path(*parts))

    def location(self, path: str) -> str:
        """User-facing location (with protocol) of a store path, for messages and summaries."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def run_path(self, run_id: str, *parts: str) -> str:
        """`ROOT/runs/RUN_ID/...`; `synthgen.io.layout.RunLayout` names the parts."""
        return self.path(RUNS_DIR, run_id, *parts)

    # ---------------------------------------------------------------- primitives
    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomically write `data` to `path` (readers see all of it or nothing)."""
        atomic_write(self.fs, path, data, self.policy, f"writing {self.location(path)}")

    def create_bytes(self, path: str, data: bytes) -> bool:
        """Atomically create `path` with `data` unless it exists; False if it already did.

        Local files: a complete temporary file hard-linked into place (link fails if the name
        exists). S3: one PUT with `If-None-Match: *`. Other stores: check, then write."""

        def _create() -> bool:
            if self.local:
                tmp = _synced_temp(path, data)
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
            if self.output.uri.startswith("s3://"):
                try:
                    self.fs.pipe_file(path, data, mode="create")
                    return True
                except FileExistsError:
                    return False
            self.fs.invalidate_cache(path)
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True

        return retrying(_create, f"creating {self.location(path)}", self.policy)

    def read_bytes(self, path: str) -> bytes:
        def _read() -> bytes:
            # an earlier listing (ls) of the parent must not hide an object written since
            self.fs.invalidate_cache(path)
            return bytes(self.fs.cat_file(path))

        return retrying(_read, f"reading {self.location(path)}", self.policy)

    def read_optional(self, path: str) -> bytes | None:
        """The bytes at `path`, or None when there is no such object."""

        def _read() -> bytes | None:
            self.fs.invalidate_cache(path)
            try:
                return bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                return None

        return self.retry(_read, f"reading {self.location(path)}")

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """Run `fn` under this store's retry policy (`retrying`)."""
        return retrying(fn, what, self.policy)

    def exists(self, path: str) -> bool:
        def _exists() -> bool:
            self.fs.invalidate_cache(path)
            return bool(self.fs.exists(path))

        return retrying(_exists, f"checking {self.location(path)}", self.policy)

    def ls(self, path: str) -> list[str]:
        """Names (not paths) of the files directly under `path`; [] if it does not exist."""

        def _ls() -> list[str]:
            self.fs.invalidate_cache(path)
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
            return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

        return retrying(_ls, f"listing {self.location(path)}", self.policy)

    def rm(self, path: str) -> None:
        def _rm() -> None:
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                pass

        retrying(_rm, f"removing {self.location(path)}", self.policy)

    def move_many(self, moves: list[tuple[str, str]]) -> None:
        """Move each (source, destination) within this store, replacing the destination
        atomically: a rename on a local disk; on an object store one server-side copy per
        file (concurrent, fsspec's batches), then one bulk delete of the sources."""
        if not moves:
            return
        if self.local:
            for src, dst in moves:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
            return
        srcs, dsts = [m[0] for m in moves], [m[1] for m in moves]
        what = f"{len(moves)} file(s) to {self.location(posixpath.dirname(dsts[0]))}"
        retrying(lambda: self.fs.copy(srcs, dsts), f"copying {what}", self.policy)
        retrying(lambda: self.fs.rm(srcs), f"removing the sources of {what}", self.policy)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def write_table(self, path: str, table: pa.Table) -> tuple[int, str]:
        """Write Parquet atomically; returns (bytes, sha256) of the file."""
        buf = io.BytesIO()
        compression = None if self.output.compression == "none" else self.output.compression
        pq.write_table(table, buf, compression=compression)
        data = buf.getvalue()
        self.write_bytes(path, data)
        return len(data), hashlib.sha256(data).hexdigest()

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        data = self.read_bytes(path)
        return pq.read_table(pa.BufferReader(data), columns=columns)

    def check_writable(self) -> None:
        """Fail fast (before any GPU time) if the output cannot be written."""
        probe = self.path(".synthgen-write-probe", uuid.uuid4().hex)
        try:
            if not self.local and self.output.uri.startswith("s3://"):
                bucket = self.root.split("/", 1)[0]
                if not retrying(
                    lambda: self.fs.exists(bucket), f"checking bucket {bucket}", self.policy
                ):
                    raise StorageError(f"output.uri: bucket {bucket!r} does not exist")
            self.write_bytes(probe, b"ok")
            self.rm(probe)
        except StorageError:
            self._remove_probe(probe)
            raise
        except Exception as exc:
            self._remove_probe(probe)
            raise StorageError(
                f"output.uri {self.uri!r} is not writable: {type(exc).__name__}: {exc}"
            ) from exc

    def _remove_probe(self, probe: str) -> None:
        try:  # a half-done probe must not stay behind (best effort: the store may be down)
            self.fs.rm(probe)
        except Exception:  # noqa: S110
            pass
